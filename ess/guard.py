"""The divergence guard shared by search, retraining and transfer.

A loop asks the guard after each risky quantity (the loss of a batch, the gradient norm before the
optimiser step, the architecture logits after their step, the validation perplexity of an epoch)
whether training is still sane. If not, :class:`Diverged` is raised inside the epoch; the loop
catches it, restores the last good checkpoint (or its initial state when no epoch has finished yet),
multiplies the learning rate by ``rollback_lr_factor`` and tries again. After ``max_rollbacks``
attempts :meth:`DivergenceGuard.give_up` raises :class:`ess.errors.DivergenceError` with the reason,
which the orchestrator turns into a failed trial. Nothing is derived, saved or reported from a state
that failed a check: the checks run before the genotype is derived and before any checkpoint is
written.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ess.checkpoint import load_checkpoint, previous_path
from ess.errors import DivergenceError


class Diverged(DivergenceError):
    """Raised inside an epoch when a check fails; the epoch loop rolls back (internal to the loops)."""


@dataclass(frozen=True)
class DivergenceGuard:
    """Sanity checks plus the rollback budget of one run.

    ``max_ppl`` bounds the validation perplexity (``inf``: no bound). ``what`` names the run kind in
    messages ("search", "training" ...).
    """

    what: str
    max_rollbacks: int = 3
    lr_factor: float = 0.5
    max_ppl: float = math.inf

    def check_loss(self, loss: torch.Tensor | float, epoch: int, step: int) -> None:
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise Diverged(f"non-finite {self.what} loss ({value}) at epoch {epoch}, batch {step}")

    def check_grad_norm(self, norm: torch.Tensor | float, epoch: int, step: int) -> None:
        value = float(norm)
        if not math.isfinite(value):
            raise Diverged(f"non-finite gradient norm ({value}) at epoch {epoch}, batch {step}")

    def check_finite(self, tensors: Iterable[torch.Tensor], name: str, epoch: int, step: int | None = None) -> None:
        for t in tensors:
            if not bool(torch.isfinite(t).all()):
                where = f"epoch {epoch}" + (f", batch {step}" if step is not None else "")
                raise Diverged(f"non-finite {name} at {where}")

    def check_ppl(self, ppl: float, epoch: int, split: str = "valid") -> None:
        if not math.isfinite(ppl):
            raise Diverged(f"non-finite {split} perplexity at epoch {epoch}")
        if ppl > self.max_ppl:
            raise Diverged(f"{split} perplexity {ppl:.4g} above the bound max_ppl={self.max_ppl:g} at epoch {epoch}")

    def lr_scale(self, rollbacks: int) -> float:
        """The learning-rate multiplier after ``rollbacks`` rollbacks."""
        return self.lr_factor ** rollbacks

    def next_attempt(self, reason: str, rollbacks: int) -> int:
        """The rollback count for the next attempt, or :class:`DivergenceError` when the budget is spent."""
        if rollbacks >= self.max_rollbacks:
            raise DivergenceError(f"{self.what} diverged: {reason}; gave up after {rollbacks} rollback"
                                  f"{'' if rollbacks == 1 else 's'} (learning rate x{self.lr_scale(rollbacks):g})")
        return rollbacks + 1

    def announce(self, reason: str, rollbacks: int, epoch: int) -> None:
        print(f"warning: {self.what}: {reason}; rolled back to epoch {epoch}, learning rate x"
              f"{self.lr_scale(rollbacks):g} (rollback {rollbacks}/{self.max_rollbacks})", file=sys.stderr, flush=True)


def last_good_state(checkpoint_path: Path, required: tuple[str, ...], initial: dict[str, Any] | None,
                    map_location: Any = "cpu") -> dict[str, Any]:
    """What a rollback returns to: the latest usable checkpoint (or the one before it), else ``initial``."""
    if checkpoint_path.exists() or previous_path(checkpoint_path).exists():
        return load_checkpoint(checkpoint_path, required=required, map_location=map_location, fallback=True)
    if initial is None:
        raise DivergenceError(f"{checkpoint_path}: no checkpoint and no initial state to roll back to")
    return initial


def ppl_bound(max_ppl: float, ntoken: int) -> float:
    """``max_ppl``, or when it is 0 twice the vocabulary size: far worse than guessing uniformly."""
    return float(max_ppl) if max_ppl > 0 else 2.0 * ntoken


#: config help texts, shared so the three loops describe the knobs alike
HELP_MAX_ROLLBACKS = "rollbacks to the last good checkpoint on divergence before the run fails"
HELP_LR_FACTOR = "learning rate multiplier applied at each rollback"
HELP_MAX_PPL = "valid perplexity above this counts as divergence (0: twice the vocabulary size; inf: no bound)"


__all__ = ["HELP_LR_FACTOR", "HELP_MAX_PPL", "HELP_MAX_ROLLBACKS", "DivergenceGuard", "Diverged", "last_good_state",
           "ppl_bound"]
