"""The differentiable ESS search (``python -m ess.search``; the loop): bilevel optimisation of the supernet.

Each iteration takes one architecture step on a validation batch (Adam, first or second order, see
:mod:`ess.search.architect`) and then one weight step on a training batch (SGD, learning rate scaled by
``seq_len / bptt``, clipping), as DARTS does (reference.md section 3). After each epoch: valid
perplexity, the derived genotype (JSON and picture), the architecture-weight tables, their entropy,
the share of parameter-free ops in the genotype (the collapse signal), tokens/s, and an atomic
checkpoint holding both optimisers, RNG states and the data position; ``--resume`` continues exactly.

:func:`search` is a plain callable reporting each epoch through ``on_epoch``, so an orchestrator (Ray
Tune) can wrap it without this module knowing about it.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass
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
from ess.config import config_to_dict, save_config
from ess.data import BPTTIterator, batchify, get_batch, load_corpus
from ess.errors import CheckpointError
from ess.evaluation import evaluate
from ess.guard import (
    Diverged,
    DivergenceGuard,
    last_good_state,
    ppl_bound,
)
from ess.models.cells import detach_state
from ess.models.lm import lm_loss, regularisation
from ess.runs import (
    EpochReport,
    OnEpoch,
    check_resumable,
    ignore_report,
    write_metrics,
)
from ess.runtime import perplexity, pick_device, set_threads
from ess.search.architect import Architect, requires_grad
from ess.search.config import SearchConfig
from ess.space.derive import parameter_free_share
from ess.space.genotype import ESSGenotype, load_genotype, save_genotype
from ess.supernet.model import SearchModel, build_search_model

# Fields that define the supernet and the data: they must match when resuming.
_RESUME_FIXED = ("mode", "dataset", "emsize", "nhid", "steps", "n_inter", "m", "combination", "residual",
                 "softmax_scope", "intra_genotype", "batchnorm", "batch_size", "seed", "max_train_tokens",
                 "max_eval_tokens")
_CHECKPOINT_FIELDS = ("config", "model", "optimizer", "architect", "epoch", "best_valid", "rows", "rng",
                      "lengths_rng")


def build_model(cfg: SearchConfig, ntoken: int) -> SearchModel:
    return build_search_model(
        ntoken, mode=cfg.mode, ninp=cfg.emsize, nhid=cfg.nhid, steps=cfg.steps, n_inter=cfg.n_inter, m=cfg.m,
        combination=cfg.combination, residual=cfg.residual, softmax_scope=cfg.softmax_scope,
        intra_genotype=load_genotype(cfg.intra_genotype), dropout=cfg.dropout, dropouth=cfg.dropouth,
        dropoutx=cfg.dropoutx, dropouti=cfg.dropouti, dropoute=cfg.dropoute, batchnorm=cfg.batchnorm,
        implementation=cfg.implementation)


def _slice(data: torch.Tensor, limit: int) -> torch.Tensor:
    return data[:limit] if limit > 0 else data


@dataclass
class SearchResult:
    genotype: ESSGenotype
    rows: list[dict[str, Any]]
    run_dir: Path


class Searcher:
    """One search run: data, supernet, both optimisers, checkpoints and the epoch loop."""

    def __init__(self, cfg: SearchConfig):
        self.cfg = cfg
        set_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        self.run_dir = Path(cfg.run_dir)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        corpus = load_corpus(cfg.dataset, cfg.data_dir)
        self.ntoken = len(corpus.vocab)
        valid = _slice(corpus.valid, cfg.max_eval_tokens)
        self.train_data = batchify(_slice(corpus.train, cfg.max_train_tokens), cfg.batch_size, self.device)
        self.search_data = batchify(valid, cfg.batch_size, self.device)  # architecture batches (DARTS)
        self.valid_data = batchify(valid, cfg.eval_batch_size, self.device)
        if self.search_data.size(0) < 2:
            raise CheckpointError(f"max_eval_tokens: {valid.numel()} validation tokens are too few for "
                                  f"batch_size {cfg.batch_size}")
        seed_everything(cfg.seed)
        self.model = build_model(cfg, self.ntoken).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=cfg.lr, weight_decay=cfg.wdecay)
        self.architect = Architect(self.model, cfg.arch_lr, cfg.arch_wdecay, unrolled=cfg.order == 2,
                                   alpha=cfg.alpha, beta=cfg.beta)
        self.lengths = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.best_valid, self.rows, self.rollbacks = 0, math.inf, [], 0
        self.guard = DivergenceGuard("search", cfg.max_rollbacks, cfg.rollback_lr_factor,
                                     ppl_bound(cfg.max_ppl, self.ntoken))
        self._initial: dict[str, Any] | None = None   # the state to roll back to before any checkpoint
        self.params = sum(p.numel() for p in self.model.weight_parameters())   # the supernet's weights

    @property
    def lr(self) -> float:
        """The weight learning rate, lowered after each rollback."""
        return self.cfg.lr * self.guard.lr_scale(self.rollbacks)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "ess.search/1",
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "architect": self.architect.state_dict(),
            "epoch": self.epoch,
            "position": {"epoch": self.epoch + 1, "batch": 0},
            "best_valid": self.best_valid,
            "rows": self.rows,
            "rollbacks": self.rollbacks,
            "rng": capture_rng_state(),
            "lengths_rng": self.lengths.get_state(),
        }

    def resume(self) -> None:
        state = load_checkpoint(self.checkpoint_path, required=_CHECKPOINT_FIELDS, map_location=self.device,
                                fallback=True)
        self.load_state_dict(state)

    def load_state_dict(self, state: dict[str, Any], restore_rng: bool = True) -> None:
        check_resumable(state["config"], self.cfg, _RESUME_FIXED, self.checkpoint_path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.architect.load_state_dict(state["architect"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{self.checkpoint_path}: does not fit this search "
                                  f"({str(err).splitlines()[0][:160]})") from None
        self.epoch, self.best_valid, self.rows = int(state["epoch"]), float(state["best_valid"]), list(state["rows"])
        self.rollbacks = int(state.get("rollbacks", 0))
        if restore_rng:
            restore_rng_state(state["rng"])
            self.lengths.set_state(state["lengths_rng"])

    def rollback(self, reason: str) -> None:
        """Back to the last good checkpoint (or the initial state) with the learning rate lowered.

        The RNG is left moving: replaying the same dropout masks and lengths would diverge again.
        """
        rollbacks = self.guard.next_attempt(reason, self.rollbacks)
        state = last_good_state(self.checkpoint_path, _CHECKPOINT_FIELDS, self._initial, self.device)
        self.load_state_dict(state, restore_rng=False)
        self.rollbacks = rollbacks
        self.guard.announce(reason, rollbacks, self.epoch)

    # -- one epoch -----------------------------------------------------------------------------------
    def _valid_batch(self, pos: int, seq_len: int, state):
        """The next architecture batch, contiguous with the last one so its state carries over."""
        if pos >= self.search_data.size(0) - 1:
            pos, state = 0, self.model.init_state(self.cfg.batch_size)
        data, targets = get_batch(self.search_data, pos, seq_len)
        return (data, targets), pos + data.size(0), state

    def train_epoch(self) -> dict[str, float]:
        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        model.train()
        state = model.init_state(cfg.batch_size)
        valid_state, valid_pos = model.init_state(cfg.batch_size), 0
        weights, arch = model.weight_parameters(), model.arch_parameters()
        batches = BPTTIterator(self.train_data, cfg.bptt, random_length=True, generator=self.lengths,
                               max_seq_len_delta=cfg.max_seq_len_delta)
        total_loss, total_tokens, start = 0.0, 0, time.perf_counter()
        bar = tqdm(total=self.train_data.size(0) - 1, disable=not cfg.progress, leave=False, file=sys.stderr,
                   desc=f"search epoch {self.epoch + 1}")
        epoch, guard = self.epoch + 1, self.guard
        try:
            for step, (data, targets, seq_len) in enumerate(batches, 1):
                lr = self.lr * seq_len / cfg.bptt
                state = detach_state(state)
                valid_batch, valid_pos, valid_state = self._valid_batch(valid_pos, seq_len, valid_state)
                valid_state = self.architect.step((data, targets), valid_batch, state, valid_state, network_lr=lr,
                                                  network_weight_decay=cfg.wdecay, network_clip=cfg.clip)
                guard.check_finite(arch, "architecture weights", epoch, step)
                optimizer.param_groups[0]["lr"] = lr
                with requires_grad(arch, False):  # the weight step computes no architecture gradient
                    out = model(data, state)
                    raw_loss = lm_loss(out, targets)
                    guard.check_loss(raw_loss, epoch, step)
                    loss = raw_loss + regularisation(out, cfg.alpha, cfg.beta)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                norm = nn.utils.clip_grad_norm_(weights, cfg.clip)
                guard.check_grad_norm(norm, epoch, step)    # before the step: no NaN reaches the weights
                optimizer.step()
                state = out.state
                n = targets.numel()
                total_loss += raw_loss.item() * n
                total_tokens += n
                bar.update(seq_len)
                bar.set_postfix(loss=f"{total_loss / total_tokens:.3f}",
                                tok_s=f"{total_tokens / max(time.perf_counter() - start, 1e-9):.0f}")
        finally:
            optimizer.param_groups[0]["lr"] = self.lr
            bar.close()
        elapsed = time.perf_counter() - start
        mean = total_loss / max(total_tokens, 1)
        return {"train/loss": mean, "train/ppl": perplexity(mean), "train/tokens_per_s": total_tokens / elapsed,
                "train/seconds": elapsed}

    def write_artifacts(self, genotype: ESSGenotype) -> dict[str, Path]:
        """Genotype JSON (and picture) and the full softmax tables of this epoch, plus the latest copies."""
        tag = f"epoch_{self.epoch:03d}"
        weights = json.dumps(self.model.arch_weights(), indent=1) + "\n"
        paths = {
            "genotype": save_genotype(genotype, self.run_dir / "genotypes" / f"{tag}.json"),
            "arch_weights": atomic_write_text(self.run_dir / "arch_weights" / f"{tag}.json", weights),
        }
        save_genotype(genotype, self.run_dir / "genotype.json")
        atomic_write_text(self.run_dir / "arch_weights.json", weights)
        if self.cfg.draw:
            from ess.space.draw import draw_genotype

            paths["picture"] = draw_genotype(genotype, self.run_dir / "genotypes" / f"{tag}.png",
                                             title=f"{self.cfg.mode} search, epoch {self.epoch}")[0]
        return paths

    def fit(self, on_epoch: OnEpoch = ignore_report) -> SearchResult:
        if self.epoch == 0:
            self._initial = copy.deepcopy(self.state_dict())
        # The epoch files on disk are those of the checkpoint's epochs: later ones (of a checkpoint that was
        # lost) go, and the checkpoint's own are written again if a crash came before they were.
        for stale in [*self.run_dir.glob("genotypes/epoch_*"), *self.run_dir.glob("arch_weights/epoch_*")]:
            if int(stale.stem.split("_")[1]) > self.epoch:
                stale.unlink()
        if self.epoch > 0 and not (self.run_dir / "genotypes" / f"epoch_{self.epoch:03d}.json").exists():
            self.write_artifacts(self.model.genotype())
        while self.epoch < self.cfg.epochs:
            try:
                row = self.train_epoch()
                valid = evaluate(self.model, self.valid_data, self.cfg.bptt)
                # checked before anything is derived or saved: no genotype comes from a diverged state
                self.guard.check_ppl(perplexity(valid), self.epoch + 1)
                self.guard.check_finite(self.model.arch_parameters(), "architecture weights", self.epoch + 1)
            except Diverged as err:
                self.rollback(str(err))
                continue
            self.epoch += 1
            self.best_valid = min(self.best_valid, valid)
            genotype = self.model.genotype()
            row = {"epoch": self.epoch, **row, "valid/loss": valid, "valid/ppl": perplexity(valid),
                   "valid/best_ppl": perplexity(self.best_valid), "arch/entropy": self.model.arch_entropy(),
                   "genotype/param_free_share": parameter_free_share(genotype), "params": self.params,
                   "rollbacks": self.rollbacks,
                   "lr_scale": self.guard.lr_scale(self.rollbacks)}
            self.rows.append(row)
            save_checkpoint(self.checkpoint_path, self.state_dict())
            artifacts = self.write_artifacts(genotype)   # after its checkpoint: never beside an older one
            write_metrics(self.run_dir, self.rows)
            on_epoch(EpochReport(self.epoch, row, self.run_dir, self.checkpoint_path, genotype, artifacts))
        genotype = self.model.genotype()
        if self.cfg.draw:
            from ess.space.draw import draw_genotype

            draw_genotype(genotype, self.run_dir / "genotype", title=f"{self.cfg.mode} search")
        return SearchResult(genotype, self.rows, self.run_dir)


def search(cfg: SearchConfig, *, resume: bool = False, on_epoch: OnEpoch = ignore_report) -> SearchResult:
    """Run (or continue) a search; returns the derived genotype and the per-epoch rows."""
    searcher = Searcher(cfg)
    searcher.run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        searcher.resume()
    save_config(cfg, searcher.run_dir / "config.yaml")
    return searcher.fit(on_epoch)
