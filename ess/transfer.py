"""Transfer of a cell to sequence tagging: a BiRNN-CRF tagger on CoNLL-2003, WNUT-2017 or CoNLL-2000.

``python -m ess.transfer --task conll2003 --cell DARTS_V2`` trains the tagger of :mod:`ess.tagging.model`
with the given cell (a built-in genotype, a genotype JSON file, or ``lstm``) under settings that do not
depend on the cell, so cells can be compared one for one. Each epoch: training loss, dev precision,
recall and F1 (conlleval's span F1, overall and per type), an atomic checkpoint holding everything
needed to continue exactly (weights, optimiser, RNG states, epoch, rows, best dev F1); ``--resume``
continues from it. At the end the best-dev model is scored on test: ``final.json`` and conlleval-format
predictions (``predictions/{dev,test}.txt``: word, gold, predicted, in the files' own tag scheme).

:func:`transfer` is a plain callable reporting each epoch through ``on_epoch``, so an orchestrator
(Ray Tune) can wrap it as it wraps :func:`ess.train.train` and :func:`ess.search.search`.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ess.checkpoint import (
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from ess.config import check, check_genotype, config_to_dict, save_config
from ess.errors import CheckpointError
from ess.guard import HELP_LR_FACTOR, HELP_MAX_ROLLBACKS, Diverged, DivergenceGuard, last_good_state
from ess.runs import EpochReport, OnEpoch, check_resumable, ignore_report, loop_command, write_metrics
from ess.runtime import pick_device, set_threads
from ess.space.genotype import save_genotype
from ess.space.refs import load_genotype
from ess.tagging.conll import TASKS, Sentence, load_task, write_conll
from ess.tagging.embeddings import init_embeddings, lookup, read_glove
from ess.tagging.metrics import SpanScores, span_f1
from ess.tagging.model import Tagger
from ess.tagging.schemes import allowed_transitions, convert_tags, normalise_scheme
from ess.tagging.vocab import Encoded, build_vocab, encode, eval_batches, normalise_word, train_batches


@dataclass(frozen=True)
class TransferConfig:
    """Tagger config; defaults follow the BiLSTM-CNN-CRF of Ma & Hovy (2016) except the cell."""

    task: str = field(default="conll2003", metadata={"help": f"{', '.join(TASKS)}"})
    cell: str = field(default="lstm", metadata={"help": "lstm, a built-in genotype (DARTS_V2 ...) or a genotype "
                                                       "JSON file"})
    data_dir: str | None = field(default=None, metadata={"help": "else $ESS_DATA_DIR, else ./data"})
    scheme: str = field(default="bioes", metadata={"help": "training tag scheme: bioes or bio (scored in the "
                                                          "files' own scheme)"})
    constrain: bool = field(default=True, metadata={"help": "CRF forbids ill-formed tag sequences"})
    word_dim: int = field(default=100, metadata={"help": "word embedding size (the vectors' size if given)"})
    embeddings: str | None = field(default=None, metadata={"help": "GloVe-format text file of word vectors"})
    lower: bool = field(default=True, metadata={"help": "look words up lower-cased"})
    zero_digits: bool = field(default=True, metadata={"help": "look words up with digits replaced by 0"})
    min_count: int = field(default=1, metadata={"help": "train words seen fewer times map to <unk>"})
    singleton_unk: float = field(default=0.5, metadata={"help": "replace train singletons by <unk> with this "
                                                               "probability"})
    char_dim: int = field(default=30, metadata={"help": "character embedding size"})
    char_filters: int = field(default=50, metadata={"help": "character CNN filters (0: no character features)"})
    char_width: int = field(default=3, metadata={"help": "character CNN window"})
    nhid: int = field(default=200, metadata={"help": "hidden size of each direction's cell"})
    dropout: float = field(default=0.5, metadata={"help": "dropout on the token features and the BiRNN output"})
    dropoutx: float = field(default=0.0, metadata={"help": "variational dropout on the cell input"})
    dropouth: float = field(default=0.0, metadata={"help": "variational dropout on h (ESS cells only)"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd (with momentum) or adam"})
    lr: float = field(default=0.015, metadata={"help": "learning rate"})
    lr_decay: float = field(default=0.05, metadata={"help": "epoch e uses lr / (1 + lr_decay * (e - 1))"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    wdecay: float = field(default=0.0, metadata={"help": "weight decay"})
    clip: float = field(default=5.0, metadata={"help": "gradient norm clipping (0: none)"})
    epochs: int = field(default=50, metadata={"help": "number of epochs"})
    batch_size: int = field(default=10, metadata={"help": "training sentences per batch"})
    eval_batch_size: int = field(default=128, metadata={"help": "sentences per evaluation batch"})
    max_train_sentences: int = field(default=0, metadata={"help": "use only the first N train sentences (0: all)"})
    max_eval_sentences: int = field(default=0, metadata={"help": "use only the first N dev/test sentences (0: all)"})
    dev_sentences: int = field(default=1000, metadata={"help": "held out from train when a task has no dev file"})
    seed: int = field(default=1, metadata={"help": "fixes initialisation, data order and dropout"})
    max_rollbacks: int = field(default=3, metadata={"help": HELP_MAX_ROLLBACKS})
    rollback_lr_factor: float = field(default=0.5, metadata={"help": HELP_LR_FACTOR})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: torch default)"})
    run_dir: str = field(default="runs/transfer", metadata={"help": "checkpoints, metrics and predictions go here"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        for name in ("word_dim", "nhid", "epochs", "batch_size", "eval_batch_size", "min_count", "char_width",
                     "dev_sentences"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        for name in ("char_dim", "char_filters", "lr", "lr_decay", "momentum", "wdecay", "clip",
                     "max_train_sentences", "max_eval_sentences", "threads", "max_rollbacks"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(0.0 < self.rollback_lr_factor <= 1.0, "rollback_lr_factor",
              f"must be in (0, 1], got {self.rollback_lr_factor}")
        for name in ("dropout", "dropoutx", "dropouth", "singleton_unk"):
            check(0.0 <= getattr(self, name) < 1.0, name, f"must be in [0, 1), got {getattr(self, name)}")
        check(self.task in TASKS, "task", f"unknown task {self.task!r} (known: {', '.join(TASKS)})")
        check(self.scheme.lower() in ("bioes", "iobes", "bio", "iob2"), "scheme",
              f"unknown training scheme {self.scheme!r} (known: bioes, bio)")
        check(self.optimizer in ("sgd", "adam"), "optimizer", f"unknown optimizer {self.optimizer!r} (sgd or adam)")
        check(self.char_filters == 0 or self.char_dim > 0, "char_dim", "must be positive when char_filters > 0")
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        if self.cell.lower() != "lstm":
            check_genotype(self.cell, "cell")


PRESETS: dict[str, dict[str, Any]] = {
    # Under a minute on 2 CPU cores: small sizes on the first sentences of each split. One thread: these
    # matrices are too small to gain from two, and a busy machine makes the second one cost 10x.
    "smoke": dict(word_dim=32, char_dim=16, char_filters=16, nhid=32, optimizer="adam", lr=0.02, lr_decay=0.0,
                  batch_size=16, epochs=4, max_train_sentences=1000, max_eval_sentences=300, threads=1,
                  progress=False, run_dir="runs/transfer-smoke"),
    # The fixed short CPU budget used to compare cells: all train sentences, 4 epochs, small sizes
    # (a few minutes per run on one core).
    "short": dict(word_dim=50, char_dim=16, char_filters=30, nhid=100, optimizer="adam", lr=0.005, lr_decay=0.0,
                  batch_size=16, epochs=4, threads=1, run_dir="runs/transfer-short"),
    # Ma & Hovy (2016) sizes and optimiser (add --embeddings glove.6B.100d.txt for their setting).
    "full": dict(word_dim=100, char_dim=30, char_filters=30, nhid=200, optimizer="sgd", lr=0.015, lr_decay=0.05,
                 batch_size=10, epochs=50, run_dir="runs/transfer"),
}

# Fields that define the model and the data: they must match when resuming.
_RESUME_FIXED = ("task", "cell", "scheme", "constrain", "word_dim", "embeddings", "lower", "zero_digits", "min_count",
                 "char_dim", "char_filters", "char_width", "nhid", "optimizer", "batch_size", "max_train_sentences",
                 "max_eval_sentences", "dev_sentences", "seed")
_CHECKPOINT_FIELDS = ("config", "vocab", "model", "optimizer", "epoch", "best_dev", "best_epoch", "rows", "rng")
TIMING_KEYS = ("train/seconds", "train/sentences_per_s", "eval/seconds")


def _slice(sentences: list[Sentence], limit: int) -> list[Sentence]:
    return sentences[:limit] if limit > 0 else sentences


def cell_kind(cfg: TransferConfig) -> str:
    return "lstm" if cfg.cell.lower() == "lstm" else "ess"


class Transfer:
    """One tagging run: data, vocabulary, tagger, optimiser, checkpoints and the epoch loop."""

    def __init__(self, cfg: TransferConfig):
        self.cfg = cfg
        set_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        self.run_dir = Path(cfg.run_dir)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.best_path = self.run_dir / "best.pt"
        self.genotype = None if cell_kind(cfg) == "lstm" else load_genotype(cfg.cell)
        data = load_task(cfg.task, cfg.data_dir, dev_sentences=cfg.dev_sentences)
        self.file_scheme = data.spec.format.scheme
        self.train_sents = _slice(data.train, cfg.max_train_sentences)
        self.dev_sents = _slice(data.dev, cfg.max_eval_sentences)
        self.test_sents = _slice(data.test, cfg.max_eval_sentences)
        self.paths = data.paths
        vectors = None
        if cfg.embeddings:
            norm = {self._norm(w) for split in (self.train_sents, self.dev_sents, self.test_sents)
                    for s in split for w in s.words}
            vectors = read_glove(cfg.embeddings, cfg.word_dim, keep=norm | {w.lower() for w in norm})
            pretrained = {w for w in norm if lookup(vectors, w) is not None}
        else:
            pretrained = set()
        self.vocab = build_vocab(self.train_sents, normalise_scheme(cfg.scheme), lower=cfg.lower,
                                 zero_digits=cfg.zero_digits, min_count=cfg.min_count, pretrained=pretrained)
        self.train_data = [encode(s, self.vocab) for s in self.train_sents]
        self.dev_data = [encode(s, self.vocab, with_labels=False) for s in self.dev_sents]
        self.test_data = [encode(s, self.vocab, with_labels=False) for s in self.test_sents]
        singleton = torch.zeros(len(self.vocab.words), dtype=torch.bool)
        singleton[list(self.vocab.singletons)] = True
        self.is_singleton = singleton.to(self.device)
        seed_everything(cfg.seed)
        init = init_embeddings(self.vocab.words, cfg.word_dim, vectors)
        self.embeddings_found = init.found
        self.model = self.build_model(init.weight).to(self.device)
        self.optimizer = self._make_optimizer()
        self.epoch, self.best_dev, self.best_epoch, self.rows, self.rollbacks = 0, -1.0, 0, [], 0
        self.guard = DivergenceGuard("tagger training", cfg.max_rollbacks, cfg.rollback_lr_factor)
        self._initial: dict[str, Any] | None = None   # the state to roll back to before any checkpoint

    def _norm(self, word: str) -> str:
        return normalise_word(word, self.cfg.lower, self.cfg.zero_digits)

    def build_model(self, word_init: torch.Tensor | None = None) -> Tagger:
        cfg, vocab = self.cfg, self.vocab
        allowed = allowed_transitions(vocab.labels, vocab.scheme) if cfg.constrain else None
        return Tagger(len(vocab.words), len(vocab.chars), len(vocab.labels), cell=cell_kind(cfg),
                      genotype=self.genotype, word_dim=cfg.word_dim, char_dim=cfg.char_dim,
                      char_filters=cfg.char_filters, char_width=cfg.char_width, nhid=cfg.nhid, dropout=cfg.dropout,
                      dropoutx=cfg.dropoutx, dropouth=cfg.dropouth, allowed=allowed, word_init=word_init)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.wdecay)
        return torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wdecay)

    def lr_at(self, epoch: int) -> float:
        """The schedule's learning rate, lowered after each rollback."""
        return self.cfg.lr / (1.0 + self.cfg.lr_decay * (epoch - 1)) * self.guard.lr_scale(self.rollbacks)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "ess.transfer/1",
            "config": config_to_dict(self.cfg),
            "vocab": self.vocab.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "position": {"epoch": self.epoch + 1, "batch": 0},
            "best_dev": self.best_dev,
            "best_epoch": self.best_epoch,
            "rows": self.rows,
            "rollbacks": self.rollbacks,
            "rng": capture_rng_state(),
        }

    def resume(self) -> None:
        state = load_checkpoint(self.checkpoint_path, required=_CHECKPOINT_FIELDS, map_location=self.device,
                                fallback=True)
        self.load_state_dict(state)

    def load_state_dict(self, state: dict[str, Any], restore_rng: bool = True) -> None:
        check_resumable(state["config"], self.cfg, _RESUME_FIXED, self.checkpoint_path)
        if state["vocab"] != self.vocab.to_dict():
            raise CheckpointError(f"{self.checkpoint_path}: field 'vocab' differs from the vocabulary of the data "
                                  "now (the data files changed); start a new run")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{self.checkpoint_path}: does not fit this tagger "
                                  f"({str(err).splitlines()[0][:160]})") from None
        self.epoch, self.rows = int(state["epoch"]), list(state["rows"])
        self.best_dev, self.best_epoch = float(state["best_dev"]), int(state["best_epoch"])
        self.rollbacks = int(state.get("rollbacks", 0))
        if restore_rng:
            restore_rng_state(state["rng"])

    def rollback(self, reason: str) -> None:
        """Back to the last good checkpoint (or the initial state) with the learning rate lowered."""
        rollbacks = self.guard.next_attempt(reason, self.rollbacks)
        state = last_good_state(self.checkpoint_path, _CHECKPOINT_FIELDS, self._initial, self.device)
        self.load_state_dict(state, restore_rng=False)   # the RNG moves on: other dropout masks this time
        self.rollbacks = rollbacks
        self.guard.announce(reason, rollbacks, self.epoch)

    # -- one epoch -----------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        epoch = self.epoch + 1
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # data order: a function of the epoch
        batches = train_batches(self.train_data, cfg.batch_size, order)
        total_loss, sentences, start = 0.0, 0, time.perf_counter()
        bar = tqdm(batches, disable=not cfg.progress, leave=False, file=sys.stderr, desc=f"{cfg.task} epoch {epoch}")
        try:
            for step, batch in enumerate(bar, 1):
                batch = batch.to(self.device)
                if cfg.singleton_unk > 0:
                    drop = self.is_singleton[batch.words] & (torch.rand(batch.words.shape, device=self.device)
                                                             < cfg.singleton_unk)
                    batch.words = batch.words.masked_fill(drop, 1)
                loss = model.loss(batch)
                self.guard.check_loss(loss, epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip if cfg.clip > 0 else math.inf)
                self.guard.check_grad_norm(norm, epoch, step)   # before the step: no NaN reaches the weights
                optimizer.step()
                total_loss += loss.item() * batch.size
                sentences += batch.size
                bar.set_postfix(loss=f"{total_loss / sentences:.3f}")
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        return {"train/loss": total_loss / max(sentences, 1), "train/seconds": elapsed,
                "train/sentences_per_s": sentences / max(elapsed, 1e-9), "lr": lr}

    def predict(self, data: list[Encoded]) -> list[list[str]]:
        """Predicted tags in the files' scheme, in the order of ``data``."""
        self.model.eval()
        out: list[list[str]] = [[] for _ in data]
        labels = self.vocab.labels
        for batch in eval_batches(data, self.cfg.eval_batch_size):
            paths = self.model.decode(batch.to(self.device))
            for i, path in zip(batch.index, paths):
                out[i] = convert_tags([labels[k] for k in path], self.file_scheme)
        return out

    def evaluate(self, sentences: list[Sentence], data: list[Encoded]) -> tuple[SpanScores, list[list[str]]]:
        predicted = self.predict(data)
        return span_f1([s.tags for s in sentences], predicted), predicted

    def fit(self, on_epoch: OnEpoch = ignore_report) -> dict[str, Any]:
        cfg = self.cfg
        if self.epoch == 0:
            self._initial = copy.deepcopy(self.state_dict())
        while self.epoch < cfg.epochs:
            try:
                row = self.train_epoch()
            except Diverged as err:
                self.rollback(str(err))
                continue
            start = time.perf_counter()
            dev, _ = self.evaluate(self.dev_sents, self.dev_data)
            self.epoch += 1
            if dev.f1 > self.best_dev:
                self.best_dev, self.best_epoch = dev.f1, self.epoch
                save_checkpoint(self.best_path, {"format": "ess.transfer.best/1", "config": config_to_dict(cfg),
                                                 "vocab": self.vocab.to_dict(), "model": self.model.state_dict(),
                                                 "epoch": self.epoch, "dev_f1": dev.f1}, keep_previous=False)
            row = {"epoch": self.epoch, **row, **dev.as_row("dev"), "dev/best_f1": self.best_dev,
                   "dev/best_epoch": self.best_epoch, "eval/seconds": time.perf_counter() - start,
                   "rollbacks": self.rollbacks}
            self.rows.append(row)
            save_checkpoint(self.checkpoint_path, self.state_dict())
            write_metrics(self.run_dir, self.rows)
            on_epoch(EpochReport(self.epoch, row, self.run_dir, self.checkpoint_path, self.genotype,
                                 {"best": self.best_path}))
        return self.test()

    def test(self) -> dict[str, Any]:
        """Dev and test scores of the best-dev model: ``final.json`` and ``predictions/{dev,test}.txt``."""
        if self.best_path.exists():
            best = load_checkpoint(self.best_path, required=("model",), map_location=self.device)
            self.model.load_state_dict(best["model"])
        dev, dev_pred = self.evaluate(self.dev_sents, self.dev_data)
        test, test_pred = self.evaluate(self.test_sents, self.test_data)
        write_conll(self.run_dir / "predictions" / "dev.txt", self.dev_sents, dev_pred)
        write_conll(self.run_dir / "predictions" / "test.txt", self.test_sents, test_pred)
        final = {"task": self.cfg.task, "cell": self.cfg.cell, "seed": self.cfg.seed, "epoch": self.epoch,
                 "best_epoch": self.best_epoch, **dev.as_row("dev"), **test.as_row("test"),
                 "params": sum(p.numel() for p in self.model.parameters()),
                 "rnn_params": sum(p.numel() for p in self.model.rnn.parameters()),
                 "train_sentences": len(self.train_sents), "dev_sentences": len(self.dev_sents),
                 "test_sentences": len(self.test_sents), "vocab_words": len(self.vocab.words),
                 "embeddings_found": self.embeddings_found, "files": self.paths}
        atomic_write_text(self.run_dir / "final.json", json.dumps(final, indent=2) + "\n")
        atomic_write_text(self.run_dir / "test_report.txt", test.report() + "\n")
        return final


def transfer(cfg: TransferConfig, *, resume: bool = False, on_epoch: OnEpoch = ignore_report) -> dict[str, Any]:
    """Train (or continue training) a tagger; returns the best-dev model's dev and test scores."""
    runner = Transfer(cfg)
    runner.run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        runner.resume()
    save_config(cfg, runner.run_dir / "config.yaml")
    if runner.genotype is not None:
        save_genotype(runner.genotype, runner.run_dir / "genotype.json")
    return runner.fit(on_epoch)


def _closing(final: dict[str, Any]) -> dict[str, Any]:
    return {"final": {k: final[k] for k in ("task", "cell", "seed", "best_epoch", "dev/f1", "test/f1", "params")}}


main = loop_command(TransferConfig, transfer, prog="python -m ess.transfer", description=__doc__.split("\n\n")[0],
                    presets=PRESETS, closing=_closing, corpus=False)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["PRESETS", "TIMING_KEYS", "Transfer", "TransferConfig", "cell_kind", "transfer"]
