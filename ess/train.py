"""Retraining of a language model from a genotype (or an LSTM): the evaluation half of ESS/DARTS.

``python -m ess.train --genotype DARTS_V2`` trains with the DARTS final-training recipe (reference.md
section 3): SGD with the learning rate scaled by ``seq_len / bptt``, gradient clipping, a switch to
ASGD on the non-monotone trigger, AR/TAR, valid perplexity (batch 10) every epoch and test perplexity
(batch 1) of the best model at the end. Each epoch ends with an atomic checkpoint holding everything
needed to continue exactly (weights, optimiser and ASGD state, RNG states, data position, metrics);
``--resume`` continues from it. A non-finite loss rolls back to the last checkpoint.

The loop is a plain function, :func:`train`, reporting each epoch through ``on_epoch``.
"""

from __future__ import annotations

import dataclasses
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
    previous_path,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from ess.config import (
    check,
    check_genotype,
    config_to_dict,
    save_config,
)
from ess.data import BPTTIterator, batchify, load_corpus, valid_part
from ess.errors import CheckpointError
from ess.evaluation import evaluate
from ess.guard import HELP_LR_FACTOR, HELP_MAX_PPL, HELP_MAX_ROLLBACKS, Diverged, DivergenceGuard, ppl_bound
from ess.models.cells import build_cell, detach_state
from ess.models.lm import RNNModel, lm_loss, regularisation
from ess.runs import EpochReport, OnEpoch, check_resumable, ignore_report, loop_command, write_metrics
from ess.runtime import perplexity, pick_device, set_threads
from ess.space.genotype import save_genotype
from ess.space.refs import load_genotype


def _help(text: str) -> Any:
    return field(metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    """Retraining config; defaults are the DARTS final-training values for PTB."""

    genotype: str = field(default="DARTS_V2", metadata={"help": "built-in name or genotype JSON file"})
    cell: str = field(default="ess", metadata={"help": "ess (the genotype's cell) or lstm"})
    dataset: str = field(default="ptb", metadata={"help": "registered corpus: ptb or wikitext-2"})
    data_dir: str | None = field(default=None, metadata={"help": "else $ESS_DATA_DIR, else ./data"})
    emsize: int = field(default=850, metadata={"help": "embedding size (tied: equals nhid)"})
    nhid: int = field(default=850, metadata={"help": "hidden size"})
    match_params: str = field(default="", metadata={
        "help": "set nhid (= emsize) so the model has the parameter count of NAME@SIZE, e.g. DARTS_V2@850 or "
                "lstm@850, within 1% (empty: off)"})
    lr: float = field(default=20.0, metadata={"help": "SGD learning rate (scaled by seq_len / bptt)"})
    clip: float = field(default=0.25, metadata={"help": "gradient norm clipping"})
    epochs: int = field(default=8000, metadata={"help": "number of epochs"})
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    eval_batch_size: int = field(default=10, metadata={"help": "validation batch size"})
    test_batch_size: int = field(default=1, metadata={"help": "test batch size"})
    bptt: int = field(default=35, metadata={"help": "mean sequence length"})
    max_seq_len_delta: int = field(default=20, metadata={"help": "longest sequence is bptt + this"})
    dropout: float = field(default=0.75, metadata={"help": "locked dropout on the cell output"})
    dropouth: float = field(default=0.25, metadata={"help": "variational dropout on h and node inputs"})
    dropoutx: float = field(default=0.75, metadata={"help": "variational dropout on x"})
    dropouti: float = field(default=0.2, metadata={"help": "locked dropout on the embeddings"})
    dropoute: float = field(default=0.1, metadata={"help": "word (embedding row) dropout"})
    wdecay: float = field(default=8e-7, metadata={"help": "weight decay"})
    alpha: float = field(default=0.0, metadata={"help": "AR coefficient"})
    beta: float = field(default=1e-3, metadata={"help": "TAR coefficient"})
    nonmono: int = field(default=5, metadata={"help": "ASGD non-monotone trigger window"})
    asgd: bool = field(default=True, metadata={"help": "switch to ASGD on the non-monotone trigger"})
    seed: int = field(default=1267, metadata={"help": "fixes initialisation, data order and dropout"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: torch default)"})
    max_train_tokens: int = field(default=0, metadata={"help": "use only the first N training tokens (0: all)"})
    max_eval_tokens: int = field(default=0, metadata={"help": "use only the first N valid/test tokens (0: all)"})
    valid_part: str = field(default="all", metadata={
        "help": "the validation tokens that validate: all, or select (the second half, when the genotype came from a "
                "search that fitted and ranked on the first; ess.data.roles)"})
    max_rollbacks: int = field(default=3, metadata={"help": HELP_MAX_ROLLBACKS})
    rollback_lr_factor: float = field(default=0.5, metadata={"help": HELP_LR_FACTOR})
    max_ppl: float = field(default=0.0, metadata={"help": HELP_MAX_PPL})
    run_dir: str = field(default="runs/train", metadata={"help": "checkpoints, metrics and config go here"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        for name in ("emsize", "nhid", "epochs", "batch_size", "eval_batch_size", "test_batch_size", "bptt"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        for name in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
            check(0.0 <= getattr(self, name) < 1.0, name, f"must be in [0, 1), got {getattr(self, name)}")
        for name in ("lr", "clip", "wdecay", "alpha", "beta", "max_seq_len_delta", "max_train_tokens",
                     "max_eval_tokens", "max_rollbacks", "threads", "nonmono", "max_ppl"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(0.0 < self.rollback_lr_factor <= 1.0, "rollback_lr_factor",
              f"must be in (0, 1], got {self.rollback_lr_factor}")
        check(self.emsize == self.nhid, "emsize", f"tied weights need emsize == nhid ({self.emsize} != {self.nhid})")
        check(self.cell in ("ess", "lstm"), "cell", f"unknown cell {self.cell!r} (known: ess, lstm)")
        check(self.valid_part in ("all", "select"), "valid_part",
              f"unknown {self.valid_part!r} (known: all, select; the search half belongs to searches)")
        if self.cell == "ess":
            check_genotype(self.genotype, "genotype")


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on 2 CPU cores: tiny sizes on a slice of PTB (--smoke-test, the tests, the jobs' smoke runs).
    "smoke": dict(emsize=16, nhid=16, batch_size=8, epochs=2, max_train_tokens=4_000, max_eval_tokens=1_200,
                  lr=20.0, progress=False, run_dir="runs/train-smoke"),
    # A short retrain on a 2-core laptop (minutes).
    "cpu-small": dict(emsize=128, nhid=128, batch_size=32, epochs=3, max_train_tokens=200_000,
                      max_eval_tokens=20_000),
    # One epoch of the whole PTB training set at the cpu-small size (the study's retrain on 2 cores; its ranking of
    # genotypes against a 4x longer retrain is the study's stage tau).
    "cpu-full": dict(emsize=128, nhid=128, batch_size=32, epochs=1, max_eval_tokens=20_000),
    # The DARTS sizes (850 units, batch 64) for a 300-epoch budget; the DARTS recipe (the defaults) runs 8000.
    "paper": dict(emsize=850, nhid=850, batch_size=64, epochs=300),
}

# Fields that define the model and the data: they must match when resuming.
_RESUME_FIXED = ("genotype", "cell", "dataset", "emsize", "nhid", "batch_size", "max_train_tokens", "seed",
                 "valid_part")


def matched(cfg: TrainConfig, ntoken: int) -> TrainConfig:
    """``cfg`` with the hidden size ``match_params`` asks for (:mod:`ess.models.sizing`); as is without it."""
    if not cfg.match_params:
        return cfg
    from ess.models.sizing import match

    genotype = None if cfg.cell == "lstm" else load_genotype(cfg.genotype)
    nhid, _, _ = match(cfg.match_params, cfg.cell, genotype, ntoken)
    return dataclasses.replace(cfg, nhid=nhid, emsize=nhid)


def build_model(cfg: TrainConfig, ntoken: int) -> RNNModel:
    genotype = None if cfg.cell == "lstm" else load_genotype(cfg.genotype)
    cell = build_cell(cfg.cell, cfg.emsize, cfg.nhid, genotype, dropoutx=cfg.dropoutx, dropouth=cfg.dropouth)
    return RNNModel(ntoken, cfg.emsize, cfg.nhid, cell, dropout=cfg.dropout, dropouti=cfg.dropouti,
                    dropoute=cfg.dropoute)


def _make_optimizer(model: nn.Module, cfg: TrainConfig, asgd: bool, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    lr = cfg.lr * lr_scale
    if asgd:
        return torch.optim.ASGD(model.parameters(), lr=lr, t0=0, lambd=0.0, weight_decay=cfg.wdecay)
    return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=cfg.wdecay)


def _slice(data: torch.Tensor, limit: int) -> torch.Tensor:
    return data[:limit] if limit > 0 else data


@dataclass
class _Progress:
    """Everything that changes from epoch to epoch and must survive a resume."""

    epoch: int = 0                     # last finished epoch
    best_valid: float = math.inf       # best validation loss so far
    valid_history: list[float] = dataclasses.field(default_factory=list)  # for the non-monotone trigger
    asgd: bool = False
    rollbacks: int = 0
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class _Averaged:
    """Swap in ASGD's averaged weights (``ax``) for evaluation and saving, then restore."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, active: bool):
        self.model, self.optimizer, self.active, self.saved = model, optimizer, active, {}

    def __enter__(self) -> None:
        if not self.active:
            return
        for p in self.model.parameters():
            ax = self.optimizer.state.get(p, {}).get("ax")
            if ax is not None:
                self.saved[p] = p.data.clone()
                p.data.copy_(ax)

    def __exit__(self, *exc: object) -> None:
        for p, data in self.saved.items():
            p.data.copy_(data)
        self.saved = {}


class Trainer:
    """One retraining run: data, model, optimiser, checkpoints and the epoch loop."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        set_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        self.run_dir = Path(cfg.run_dir)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.best_path = self.run_dir / "best.pt"
        corpus = load_corpus(cfg.dataset, cfg.data_dir)
        self.ntoken = len(corpus.vocab)
        self.cfg = cfg = matched(cfg, self.ntoken)
        self.train_data = batchify(_slice(corpus.train, cfg.max_train_tokens), cfg.batch_size, self.device)
        valid = valid_part(corpus.valid, cfg.valid_part)
        self.valid_data = batchify(_slice(valid, cfg.max_eval_tokens), cfg.eval_batch_size, self.device)
        self.test_data = batchify(_slice(corpus.test, cfg.max_eval_tokens), cfg.test_batch_size, self.device)
        seed_everything(cfg.seed)
        self.model = build_model(cfg, self.ntoken).to(self.device)
        self.params = sum(p.numel() for p in self.model.parameters())   # logged in every row
        self.optimizer = _make_optimizer(self.model, cfg, asgd=False)
        self.lengths = torch.Generator().manual_seed(cfg.seed)  # BPTT length draws only
        self.progress = _Progress()
        self.guard = DivergenceGuard("training", cfg.max_rollbacks, cfg.rollback_lr_factor,
                                     ppl_bound(cfg.max_ppl, self.ntoken))

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "format": "ess.train/1",
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "asgd": p.asgd,
            "epoch": p.epoch,
            "position": {"epoch": p.epoch + 1, "batch": 0},
            "best_valid": p.best_valid,
            "valid_history": list(p.valid_history),
            "rollbacks": p.rollbacks,
            "rows": p.rows,
            "rng": capture_rng_state(),
            "lengths_rng": self.lengths.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any], restore_rng: bool = True) -> None:
        check_resumable(state["config"], self.cfg, _RESUME_FIXED, self.checkpoint_path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{self.checkpoint_path}: field 'model' does not fit this model "
                                  f"({str(err).splitlines()[0][:160]})") from None
        p = self.progress
        p.asgd = bool(state["asgd"])
        self.optimizer = _make_optimizer(self.model, self.cfg, asgd=p.asgd)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{self.checkpoint_path}: field 'optimizer' does not fit this model "
                                  f"({str(err).splitlines()[0][:160]})") from None
        p.epoch, p.best_valid = int(state["epoch"]), float(state["best_valid"])
        p.valid_history, p.rollbacks = list(state["valid_history"]), int(state["rollbacks"])
        p.rows = list(state["rows"])
        if restore_rng:
            restore_rng_state(state["rng"])
            self.lengths.set_state(state["lengths_rng"])

    def save(self) -> None:
        save_checkpoint(self.checkpoint_path, self.state_dict())
        write_metrics(self.run_dir, self.progress.rows)

    def resume(self) -> None:
        state = load_checkpoint(self.checkpoint_path, required=_CHECKPOINT_FIELDS, map_location=self.device,
                                fallback=True)
        self.load_state_dict(state)

    # -- one epoch -----------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        model.train()
        state = model.init_state(cfg.batch_size)
        batches = BPTTIterator(self.train_data, cfg.bptt, random_length=True, generator=self.lengths,
                               max_seq_len_delta=cfg.max_seq_len_delta)
        total_loss, total_tokens, start = 0.0, 0, time.perf_counter()
        bar = tqdm(total=self.train_data.size(0) - 1, unit="tok/B", disable=not cfg.progress, leave=False,
                   desc=f"epoch {self.progress.epoch + 1}", file=sys.stderr)
        epoch = self.progress.epoch + 1
        base_lr = optimizer.param_groups[0]["lr"]
        try:
            for step, (data, targets, seq_len) in enumerate(batches, 1):
                optimizer.param_groups[0]["lr"] = base_lr * seq_len / cfg.bptt
                state = detach_state(state)
                out = model(data, state)
                state = out.state
                raw_loss = lm_loss(out, targets)
                self.guard.check_loss(raw_loss, epoch, step)
                loss = raw_loss + regularisation(out, cfg.alpha, cfg.beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                self.guard.check_grad_norm(norm, epoch, step)   # before the step: no NaN reaches the weights
                optimizer.step()
                optimizer.param_groups[0]["lr"] = base_lr
                n = targets.numel()
                total_loss += raw_loss.item() * n
                total_tokens += n
                bar.update(seq_len)
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{total_loss / total_tokens:.3f}",
                                ppl=f"{perplexity(total_loss / total_tokens):.1f}",
                                tok_s=f"{total_tokens / max(elapsed, 1e-9):.0f}")
        finally:
            optimizer.param_groups[0]["lr"] = base_lr
            bar.close()
        elapsed = time.perf_counter() - start
        mean = total_loss / max(total_tokens, 1)
        return {"train/loss": mean, "train/ppl": perplexity(mean), "train/tokens_per_s": total_tokens / elapsed,
                "train/seconds": elapsed}

    def validate_and_switch(self) -> dict[str, float]:
        """Valid loss (of the averaged weights under ASGD), best-model saving, the ASGD trigger.

        The perplexity check comes first: a diverged state is never saved as the best model.
        """
        cfg, p = self.cfg, self.progress
        with _Averaged(self.model, self.optimizer, p.asgd):
            valid = evaluate(self.model, self.valid_data, cfg.bptt)
            self.guard.check_ppl(perplexity(valid), p.epoch + 1)
            if valid < p.best_valid:
                p.best_valid = valid
                save_checkpoint(self.best_path, {"format": "ess.train.best/1", "config": config_to_dict(cfg),
                                                 "model": self.model.state_dict(), "epoch": p.epoch + 1},
                                keep_previous=False)
        if (cfg.asgd and not p.asgd and len(p.valid_history) > cfg.nonmono
                and valid > min(p.valid_history[:-cfg.nonmono])):
            p.asgd = True  # DARTS/AWD-LSTM non-monotone trigger
            self.optimizer = _make_optimizer(self.model, cfg, asgd=True, lr_scale=self.guard.lr_scale(p.rollbacks))
        p.valid_history.append(valid)
        return {"valid/loss": valid, "valid/ppl": perplexity(valid), "valid/best_ppl": perplexity(p.best_valid)}

    def rollback(self, reason: str) -> None:
        """Back to the last good checkpoint (or the initial state) with the learning rate lowered."""
        rollbacks = self.guard.next_attempt(reason, self.progress.rollbacks)
        if self.checkpoint_path.exists() or previous_path(self.checkpoint_path).exists():
            # Keep the RNG moving: replaying the same masks and lengths would diverge again.
            state = load_checkpoint(self.checkpoint_path, required=_CHECKPOINT_FIELDS, map_location=self.device,
                                    fallback=True)
            self.load_state_dict(state, restore_rng=False)
        else:
            seed_everything(self.cfg.seed)
            self.model = build_model(self.cfg, self.ntoken).to(self.device)
            self.optimizer = _make_optimizer(self.model, self.cfg, asgd=False)
            self.progress = _Progress()
            seed_everything(self.cfg.seed + rollbacks)
        self.progress.rollbacks = rollbacks
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * self.guard.lr_scale(rollbacks)
        self.guard.announce(reason, rollbacks, self.progress.epoch)

    # -- the run -------------------------------------------------------------------------------------
    def fit(self, on_epoch: OnEpoch = ignore_report) -> dict[str, Any]:
        cfg = self.cfg
        while self.progress.epoch < cfg.epochs:
            try:
                row = self.train_epoch()
                row.update(self.validate_and_switch())
            except Diverged as err:
                self.rollback(str(err))
                continue
            p = self.progress
            p.epoch += 1
            row = {"epoch": p.epoch, **row, "lr": self.optimizer.param_groups[0]["lr"],
                   "asgd": int(p.asgd), "rollbacks": p.rollbacks, "lr_scale": self.guard.lr_scale(p.rollbacks),
                   "params": self.params, "nhid": self.cfg.nhid}
            p.rows.append(row)
            self.save()
            on_epoch(EpochReport(p.epoch, row, self.run_dir, self.checkpoint_path))
        return self.test()

    def test(self) -> dict[str, Any]:
        """Test perplexity (batch ``test_batch_size``) of the best model, written to ``final.json``."""
        if self.best_path.exists():
            best = load_checkpoint(self.best_path, required=("model",), map_location=self.device)  # no .prev
            self.model.load_state_dict(best["model"])
        test = evaluate(self.model, self.test_data, self.cfg.bptt)
        final = {"epoch": self.progress.epoch, "valid/best_ppl": perplexity(self.progress.best_valid),
                 "test/loss": test, "test/ppl": perplexity(test),
                 "params": sum(p.numel() for p in self.model.parameters())}
        atomic_write_text(self.run_dir / "final.json", json.dumps(final, indent=2) + "\n")
        return final


_CHECKPOINT_FIELDS = ("config", "model", "optimizer", "asgd", "epoch", "best_valid", "valid_history", "rollbacks",
                      "rows", "rng", "lengths_rng")


def train(cfg: TrainConfig, *, resume: bool = False,
          on_epoch: OnEpoch = ignore_report) -> dict[str, Any]:
    """Train (or continue training) and return the final test metrics."""
    trainer = Trainer(cfg)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        trainer.resume()
    cfg = trainer.cfg                  # the hidden size match_params resolved
    save_config(cfg, trainer.run_dir / "config.yaml")
    if cfg.cell == "ess":
        save_genotype(load_genotype(cfg.genotype), trainer.run_dir / "genotype.json")
    return trainer.fit(on_epoch)


main = loop_command(TrainConfig, train, prog="python -m ess.train", description=__doc__.split("\n\n")[0],
                    presets=PRESETS, closing=lambda final: {"final": final})


if __name__ == "__main__":
    sys.exit(main())
