"""The differentiable ESS search (``python -m ess.search``; the loop): bilevel optimisation of the supernet.

Each iteration takes one architecture step on a validation batch (Adam, first or second order, see
:mod:`ess.search.architect`) and then one weight step on a training batch (SGD, learning rate scaled by
``seq_len / bptt``, clipping), as DARTS does (reference.md section 3). After each epoch: valid
perplexity, the derived genotype (JSON and picture) with its derivation (every choice and its margin:
``derivations/``), the architecture-weight tables, the collapse and decision diagnostics per part
(:mod:`ess.space.diagnostics`), tokens/s, and an atomic checkpoint holding both optimisers, RNG states and
the data position; ``--resume`` continues exactly. At the end the search's genotype is chosen by ``select``
(the last epoch's, or that of the lowest supernet valid perplexity) or derived by perturbation (DARTS-PT,
:mod:`ess.search.perturbation`), and written with its reason to ``genotype.json`` / ``selection.json``.

:func:`search` is a plain callable reporting each epoch through ``on_epoch``, so an orchestrator (Ray
Tune) can wrap it without this module knowing about it.
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
from ess.config import config_to_dict
from ess.data import BPTTIterator, batchify, get_batch, load_corpus, valid_part
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
from ess.search.config import RESUME_FIXED, SearchConfig
from ess.search.evidence import Stability, stability
from ess.space.derive import Derivation, DeriveRule, identity_share
from ess.space.genotype import ESSGenotype, save_genotype
from ess.space.refs import load_genotype
from ess.supernet.model import SearchModel, SupernetConfig

#: the row keys that measure time: everything else in a row is the same on a rerun or an exact resume
TIMING_KEYS = ("train/seconds", "train/tokens_per_s", "epoch/seconds", "rank/seconds")
EPOCH_DIRS = ("genotypes", "derivations", "arch_weights", "rankings")   # per-epoch files: epoch_NNN.*
_CHECKPOINT_FIELDS = ("config", "model", "optimizer", "architect", "epoch", "best_valid", "rows", "rng",
                      "lengths_rng")


def build_model(cfg: SearchConfig, ntoken: int) -> SearchModel:
    return SearchModel(SupernetConfig.of(cfg, ntoken))


def derive_rule(cfg: SearchConfig) -> DeriveRule:
    return DeriveRule(drop_ratio=cfg.drop_ratio, decision_ratio=cfg.decision_ratio)


def _slice(data: torch.Tensor, limit: int) -> torch.Tensor:
    return data[:limit] if limit > 0 else data


@dataclass
class SearchResult:
    genotype: ESSGenotype
    rows: list[dict[str, Any]]
    run_dir: Path
    selection: dict[str, Any] = field(default_factory=dict)   # how the genotype was chosen (selection.json)


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
        valid = _slice(valid_part(corpus.valid, cfg.valid_part), cfg.max_eval_tokens)
        self.train_data = batchify(_slice(corpus.train, cfg.max_train_tokens), cfg.batch_size, self.device)
        self.search_data = batchify(valid, cfg.batch_size, self.device)  # architecture batches (DARTS)
        self.valid_data = batchify(valid, cfg.eval_batch_size, self.device)
        if self.search_data.size(0) < 2:
            raise CheckpointError(f"max_eval_tokens: {valid.numel()} validation tokens are too few for "
                                  f"batch_size {cfg.batch_size}")
        seed_everything(cfg.seed)
        self.model = build_model(cfg, self.ntoken).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=cfg.lr, weight_decay=cfg.wdecay)
        reg = (cfg.alpha, cfg.beta) if cfg.arch_reg else (0.0, 0.0)
        penalty = (lambda: self.beta_decay_weight * self.model.log_partition()) if cfg.beta_decay > 0 else None
        self.architect = Architect(self.model, cfg.arch_lr, cfg.arch_wdecay, unrolled=cfg.order == 2,
                                   alpha=reg[0], beta=reg[1], second_order=cfg.second_order,
                                   freeze_buffers=cfg.arch_bn_stats == "frozen", penalty=penalty)
        self.rule = derive_rule(cfg)
        self.lengths = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.best_valid, self.rows, self.rollbacks = 0, math.inf, [], 0
        self.guard = DivergenceGuard("search", cfg.max_rollbacks, cfg.rollback_lr_factor,
                                     ppl_bound(cfg.max_ppl, self.ntoken))
        self._initial: dict[str, Any] | None = None   # the state to roll back to before any checkpoint
        self.params = sum(p.numel() for p in self.model.weight_parameters())   # the supernet's weights

    @property
    def beta_decay_weight(self) -> float:
        """beta-DARTS's schedule: the weight grows linearly from 0, ``beta_decay * epoch / epochs`` (0-based)."""
        return self.cfg.beta_decay * self.epoch / self.cfg.epochs

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
        check_resumable(state["config"], self.cfg, RESUME_FIXED, self.checkpoint_path)
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
    def _valid_batch(self, pos: int, seq_len: int, state, train_pos: int):
        """The next architecture batch.

        ``contiguous``: at its own position, as long as the training batch, following the last one so its
        state carries over. ``darts``: the public code's ``get_batch(search_data, i % (rows - 1))``, at the
        training batch's position ``i`` and ``bptt`` long, its state carried over whatever the gap.
        """
        if self.cfg.valid_batches == "darts":
            data, targets = get_batch(self.search_data, train_pos % (self.search_data.size(0) - 1), self.cfg.bptt)
            return (data, targets), pos, state
        if pos >= self.search_data.size(0) - 1:
            pos, state = 0, self.model.init_state(self.cfg.batch_size)
        data, targets = get_batch(self.search_data, pos, seq_len)
        return (data, targets), pos + data.size(0), state

    # -- what the method does (DARTS here; ess.search.rsws.RSWSSearcher overrides these) -----------------
    def architecture_step(self, batch: tuple[torch.Tensor, torch.Tensor], state, valid_pos: int, valid_state,
                          train_pos: int, lr: float) -> tuple[int, Any]:
        """DARTS: one Adam step of the architecture logits on the next architecture batch (before the weights')."""
        cfg = self.cfg
        valid_batch, valid_pos, valid_state = self._valid_batch(valid_pos, batch[0].size(0), valid_state, train_pos)
        valid_state = self.architect.step(batch, valid_batch, state, valid_state, network_lr=lr,
                                          network_weight_decay=cfg.wdecay, network_clip=cfg.clip)
        return valid_pos, valid_state

    def forward(self, data: torch.Tensor, state):
        """The weight step's forward pass: DARTS trains the whole mixture."""
        return self.model(data, state)

    def validate(self) -> float:
        """The epoch's validation loss: the supernet's, on the search's validation tokens."""
        return evaluate(self.model, self.valid_data, self.cfg.bptt)

    def readout(self) -> tuple[Derivation, dict[str, float], dict[str, Any]]:
        """The epoch's derivation, its diagnostics and the tables written beside it (``<dir>/epoch_NNN.json``
        and the latest ``<name>.json``): DARTS's argmax of the architecture weights, the weight tables."""
        found, diagnostics = self.model.diagnostics(self.rule)
        return found, diagnostics, {"arch_weights": self.model.arch_weights()}

    def train_epoch(self) -> dict[str, float]:
        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        model.train()
        state = model.init_state(cfg.batch_size)
        valid_state, valid_pos = model.init_state(cfg.batch_size), 0
        weights, arch = model.weight_parameters(), model.arch_parameters()
        batches = BPTTIterator(self.train_data, cfg.bptt, random_length=True, generator=self.lengths,
                               max_seq_len_delta=cfg.max_seq_len_delta, length_noise=cfg.lengths == "normal")
        total_loss, total_tokens, start = 0.0, 0, time.perf_counter()
        bar = tqdm(total=self.train_data.size(0) - 1, disable=not cfg.progress, leave=False, file=sys.stderr,
                   desc=f"search epoch {self.epoch + 1}")
        epoch, guard = self.epoch + 1, self.guard
        try:
            for step, (data, targets, seq_len) in enumerate(batches, 1):
                lr = self.lr * seq_len / cfg.bptt
                state = detach_state(state)
                valid_pos, valid_state = self.architecture_step((data, targets), state, valid_pos, valid_state,
                                                                batches.i - seq_len, lr)
                guard.check_finite(arch, "architecture weights", epoch, step)
                optimizer.param_groups[0]["lr"] = lr
                with requires_grad(arch, False):  # the weight step computes no architecture gradient
                    out = self.forward(data, state)
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

    def write_artifacts(self, found: Derivation, tables: dict[str, Any]) -> dict[str, Path]:
        """Genotype JSON (and picture), its derivation and the method's tables of this epoch (``tables``: the
        softmax weights, a ranking), plus the latest copies."""
        genotype, tag = found.genotype, f"epoch_{self.epoch:03d}"
        reasons = json.dumps(found.to_dict(), indent=1) + "\n"
        paths = {
            "genotype": save_genotype(genotype, self.run_dir / "genotypes" / f"{tag}.json"),
            "derivation": atomic_write_text(self.run_dir / "derivations" / f"{tag}.json", reasons),
        }
        for name, table in tables.items():
            text = json.dumps(table, indent=1) + "\n"
            paths[name] = atomic_write_text(self.run_dir / name / f"{tag}.json", text)
            atomic_write_text(self.run_dir / f"{name}.json", text)
        save_genotype(genotype, self.run_dir / "genotype.json")
        atomic_write_text(self.run_dir / "derivation.json", reasons)
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
        for stale in [p for d in EPOCH_DIRS for p in self.run_dir.glob(f"{d}/epoch_*")]:
            if int(stale.stem.split("_")[1]) > self.epoch:
                stale.unlink()
        tag = f"epoch_{self.epoch:03d}.json"
        if self.epoch > 0 and not all((self.run_dir / d / tag).exists() for d in ("genotypes", "derivations")):
            found, _, tables = self.readout()
            self.write_artifacts(found, tables)
        while self.epoch < self.cfg.epochs:
            start = time.perf_counter()
            try:
                row = self.train_epoch()
                valid = self.validate()
                # checked before anything is derived or saved: no genotype comes from a diverged state
                self.guard.check_ppl(perplexity(valid), self.epoch + 1)
                self.guard.check_finite(self.model.arch_parameters(), "architecture weights", self.epoch + 1)
            except Diverged as err:
                self.rollback(str(err))
                continue
            self.epoch += 1
            self.best_valid = min(self.best_valid, valid)
            found, diagnostics, tables = self.readout()
            row = {"epoch": self.epoch, **row, "valid/loss": valid, "valid/ppl": perplexity(valid),
                   "valid/best_ppl": perplexity(self.best_valid), **diagnostics, "params": self.params,
                   "rollbacks": self.rollbacks, "lr_scale": self.guard.lr_scale(self.rollbacks),
                   "epoch/seconds": time.perf_counter() - start}   # all of it: training, validation, read-out
            if self.cfg.beta_decay > 0:
                row["arch/beta_decay_weight"] = self.cfg.beta_decay * (self.epoch - 1) / self.cfg.epochs
            self.rows.append(row)
            save_checkpoint(self.checkpoint_path, self.state_dict())
            artifacts = self.write_artifacts(found, tables)   # after its checkpoint: never beside an older one
            write_metrics(self.run_dir, self.rows)
            on_epoch(EpochReport(self.epoch, row, self.run_dir, self.checkpoint_path, found.genotype, artifacts))
        start = time.perf_counter()
        found, selection = self.select()
        selection["seconds"] = time.perf_counter() - start   # a search's cost: its epochs' seconds and these
        moved = self.stability()
        if moved is not None:
            selection["stability"] = moved.to_dict()
        save_genotype(found.genotype, self.run_dir / "genotype.json")
        atomic_write_text(self.run_dir / "derivation.json", json.dumps(found.to_dict(), indent=1) + "\n")
        atomic_write_text(self.run_dir / "selection.json", json.dumps(selection, indent=1) + "\n")
        if self.cfg.draw:
            from ess.space.draw import draw_genotype

            draw_genotype(found.genotype, self.run_dir / "genotype", title=f"{self.cfg.mode} search")
        return SearchResult(found.genotype, self.rows, self.run_dir, selection)

    def select(self) -> tuple[Derivation, dict[str, Any]]:
        """The search's genotype and how it was chosen (``derive``, ``select``; written to selection.json)."""
        cfg = self.cfg
        if cfg.derive == "perturbation":
            from ess.search.perturbation import perturbation_derivation

            found = perturbation_derivation(self.model, self.valid_source(cfg.pt_tokens), cfg.bptt, self.rule)
            return found, {"criterion": "perturbation", "epoch": self.epoch, "pt_tokens": cfg.pt_tokens,
                           "reason": "DARTS-PT: each choice is the candidate whose removal raises the final "
                                     "supernet's valid loss most", "decided": found.decided,
                           **self.shares(found)}
        if cfg.derive == "rank":
            argmax = self.model.derivation(self.rule).genotype
            return self.ranked([("argmax", argmax)], argmax)
        epoch = self.epoch
        if cfg.select == "best_valid" and self.rows:
            epoch = int(min(self.rows, key=lambda r: (r["valid/ppl"], r["epoch"]))["epoch"])
        reasons = json.loads((self.run_dir / "derivations" / f"epoch_{epoch:03d}.json").read_text())
        found = _derivation_from_dict(reasons, self.rule) if epoch != self.epoch else self.model.derivation(self.rule)
        why = ("the last epoch's" if cfg.select == "last" else
               f"the epoch of the lowest supernet valid perplexity ({self.rows[epoch - 1]['valid/ppl']:.2f})")
        return found, {"criterion": cfg.select, "epoch": epoch, "reason": f"{why} argmax derivation",
                       "decided": found.decided, **self.shares(found)}

    def ranked(self, first: list[tuple[str, ESSGenotype]], centre: ESSGenotype | None) -> tuple[Derivation,
                                                                                                dict[str, Any]]:
        """The best of ``first``, the one-edit neighbours of ``centre`` and ``rank_samples`` random genotypes by
        shared-weight ranking (:mod:`ess.search.ranking`) on the first ``rank_tokens`` search tokens; the
        ranking is written to ``ranking.json``."""
        from ess.search.ranking import neighbours, rank, samples, space_of

        cfg, space = self.cfg, space_of(self.model)
        candidates = list(first) + [("neighbour", g) for g in (neighbours(centre, space) if centre else ())]
        candidates += [("sample", g) for g in samples(f"rank-{cfg.seed}", cfg.rank_samples, space)]
        ranking = rank(self.model, candidates, self.valid_source(cfg.rank_tokens), cfg.bptt, screen=cfg.rank_screen,
                       keep=cfg.rank_keep)
        atomic_write_text(self.run_dir / "ranking.json", json.dumps(ranking.to_dict(), indent=1) + "\n")
        best = ranking.best
        screen = ranking.extra.get("screen_tokens")
        how = (f"on {screen} validation tokens, the best {cfg.rank_keep} of them on {ranking.tokens}" if screen
               else f"on {ranking.tokens} validation tokens")
        found = Derivation(best.genotype, notes=(f"ranked {len(ranking.entries)} candidates {how}: best is a "
                                                 f"{best.origin}",), rule=self.rule)
        return found, {"criterion": "rank", "epoch": self.epoch, "rank_tokens": ranking.tokens,
                       "candidates": len(ranking.entries), "origin": best.origin, "loss": best.loss,
                       "rank_of_argmax": ranking.rank_of("argmax"), "rank_seconds": ranking.seconds,
                       "rank_screen_tokens": ranking.extra.get("screen_tokens", ranking.tokens),
                       "reason": "the lowest validation loss on its path through the final supernet (shared-weight "
                                 "ranking)", **self.shares(found)}

    def stability(self) -> Stability | None:
        """How much the epochs' genotypes moved over the search's last half (:func:`ess.search.evidence.stability`;
        None before two epochs)."""
        paths = [self.run_dir / "genotypes" / f"epoch_{e:03d}.json" for e in range(1, self.epoch + 1)]
        if len(paths) < 2 or not all(path.is_file() for path in paths):
            return None
        return stability([load_genotype(path) for path in paths], list(self.model.searched_parts()), self.cfg.n_inter)

    def shares(self, found: Derivation) -> dict[str, Any]:
        """Identity and decided shares per searched part of the genotype the search returns (the epoch rows'
        ``genotype/*`` follow each epoch's argmax derivation, which perturbation selection does not return); a
        ranked genotype has no weights to be decided by, so no decided share."""
        parts = list(self.model.searched_parts())
        out: dict[str, Any] = {"identity_share": {p: identity_share(found.genotype, (p,)) for p in parts}}
        if found.choices:
            out["decided_share"] = {p: found.decided_share(p) for p in parts}
        return out

    def valid_source(self, tokens: int) -> torch.Tensor:
        """The first ``tokens`` of the search's validation tokens, batchified at the search batch size
        (perturbation and ranking scores)."""
        corpus = load_corpus(self.cfg.dataset, self.cfg.data_dir)
        valid = _slice(_slice(valid_part(corpus.valid, self.cfg.valid_part), self.cfg.max_eval_tokens), tokens)
        return batchify(valid, min(self.cfg.batch_size, max(1, valid.numel() // 40)), self.device)


def _derivation_from_dict(data: dict[str, Any], rule: DeriveRule) -> Derivation:
    """A derivation read back from ``derivations/epoch_NNN.json`` (its choices as recorded)."""
    from ess.space.derive import Choice

    choices = tuple(Choice(c["part"], c["where"], c["op"], c["pred"], c["weight"], c["runner_up"], c["uniform"],
                           c["decided"], c.get("source", "")) for c in data["choices"])
    return Derivation(ESSGenotype.from_dict(data["genotype"]), choices, tuple(data["notes"]), rule)
