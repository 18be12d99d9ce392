"""The parameter count of a discrete language model, or the hidden size matching a baseline's count.

A searched ESS cell has more weight matrices than the DARTS cell it extends (one ``W^a_j``, ``W^b_j`` per inter
branch source), so at the same hidden size it also has more parameters (up to +8.7 M at 850 units against
DARTS_V2's 23 M): comparing perplexities at equal width favours the larger model. ``TrainConfig.match_params``
(e.g. ``DARTS_V2@850``) sets the hidden size (= embedding size, tied) whose model has the baseline's parameter
count, within :data:`TOLERANCE`. Counts are taken from the models themselves, built on the ``meta`` device (no
memory, no initialisation cost), so they cannot drift from what training builds.
"""

from __future__ import annotations

import torch

from ess.errors import ConfigError
from ess.models.cells import build_cell
from ess.models.lm import RNNModel
from ess.space.genotype import ESSGenotype
from ess.space.refs import load_genotype

TOLERANCE = 0.01
MAX_HIDDEN = 8192


def count_params(kind: str, genotype: ESSGenotype | None, ntoken: int, nhid: int) -> int:
    """Parameters of the tied LM (embedding = decoder, its bias, the cell) at ``nhid`` units."""
    with torch.device("meta"):
        cell = build_cell(kind, nhid, nhid, genotype)
        model = RNNModel(ntoken, nhid, nhid, cell)
    return sum(p.numel() for p in model.parameters())


def parse_baseline(ref: str) -> tuple[str, ESSGenotype | None, int]:
    """``NAME@SIZE`` (``DARTS_V2@850``, ``lstm@650``, ``cell.json@300``) -> ``(kind, genotype, size)``."""
    name, sep, size = ref.rpartition("@")
    if not sep or not size.isdigit() or int(size) < 1 or not name:
        raise ConfigError(f"match_params: expected NAME@SIZE (e.g. DARTS_V2@850 or lstm@850), got {ref!r}")
    if name.lower() == "lstm":
        return "lstm", None, int(size)
    return "ess", load_genotype(name), int(size)


def matched_size(kind: str, genotype: ESSGenotype | None, ntoken: int, target: int,
                 tolerance: float = TOLERANCE) -> int:
    """The hidden size whose model's count is nearest ``target`` (counts grow with the size: bisection)."""
    lo, hi = 1, MAX_HIDDEN
    while lo < hi:                      # the smallest size with count >= target
        mid = (lo + hi) // 2
        if count_params(kind, genotype, ntoken, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min((n for n in (lo - 1, lo) if n >= 1),
               key=lambda n: abs(count_params(kind, genotype, ntoken, n) - target))
    error = abs(count_params(kind, genotype, ntoken, best) - target) / target
    if error > tolerance:
        raise ConfigError(f"match_params: no hidden size gives {target:,} parameters within {tolerance:.0%} "
                          f"(nearest: {best} units, off by {error:.1%})")
    return best


def match(ref: str, kind: str, genotype: ESSGenotype | None, ntoken: int) -> tuple[int, int, int]:
    """``(hidden size, its count, the baseline's count)`` for ``match_params = ref``."""
    base_kind, base_genotype, size = parse_baseline(ref)
    target = count_params(base_kind, base_genotype, ntoken, size)
    nhid = matched_size(kind, genotype, ntoken, target)
    return nhid, count_params(kind, genotype, ntoken, nhid), target


__all__ = ["TOLERANCE", "count_params", "match", "matched_size", "parse_baseline"]
