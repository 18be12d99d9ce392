"""Collapse diagnostics of a search epoch (what the weights say, what the derivation decided), per part.

Per searched part (``intra``, ``history``, ``input``):

* ``arch/<part>/entropy``: mean entropy of the part's softmax distributions relative to their maximum
  (1 = uniform, undecided; 0 = one-hot), so parts with distributions of different sizes compare;
* ``arch/<part>/none_mass`` and ``arch/<part>/identity_mass``: the mean weight the part's distributions put
  on ``none`` (the only weightless op) and on ``identity`` (the op DARTS-style searches collapse to);
* ``genotype/<part>/identity_share``: share of the derived edges that are ``identity``;
* ``genotype/<part>/none_share`` (inter parts): share of branch decisions that said ``none``;
* ``genotype/<part>/decided_share`` and ``genotype/<part>/min_margin``: share of the part's choices that are
  decided, and the smallest ``weight / runner-up`` ratio (:mod:`ess.space.derive`).

Over all parts: ``arch/entropy`` (mean of the parts' relative entropies), ``genotype/identity_share``,
``genotype/decided`` (1 when every choice is decided) and ``genotype/decided_share``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ess.space.derive import Derivation, identity_share
from ess.space.ops import PRIMITIVES
from ess.space.tables import PARTS, arch_entropy, distributions, part_ops, relative_entropy


def _op_mass(entry: Mapping[str, Any], part: str, op: str) -> float:
    """Mean weight on ``op`` per distribution of the part (0 when the op is not a candidate)."""
    if op not in part_ops(entry):
        return 0.0
    col = PRIMITIVES.index(op)
    if part == "intra":
        rows = entry["weights"]
        return sum(r[col] for r in rows) / len(rows)
    tables = [t["weights"] for t in entry["branches"]]
    if entry.get("scope", "node") == "node":       # one distribution per branch table
        return sum(sum(r[col] for r in t) for t in tables) / len(tables)
    rows = [r for t in tables for r in t]          # one distribution per row
    return sum(r[col] for r in rows) / len(rows)


def epoch_metrics(arch_weights: Mapping[str, Any], found: Derivation) -> dict[str, float]:
    """The diagnostics of one epoch (keys in the module docstring)."""
    out: dict[str, float] = {}
    dists = distributions(arch_weights)
    searched = [p for p in PARTS if arch_weights[p]["searched"]]
    for part in searched:
        entry = arch_weights[part]
        out[f"arch/{part}/entropy"] = relative_entropy(dists[part])
        out[f"arch/{part}/none_mass"] = _op_mass(entry, part, "none")
        out[f"arch/{part}/identity_mass"] = _op_mass(entry, part, "identity")
        out[f"genotype/{part}/identity_share"] = identity_share(found.genotype, (part,))
        choices = [c for c in found.of(part) if c.where != "combination"]
        if part != "intra":
            out[f"genotype/{part}/none_share"] = (sum(c.op == "none" for c in choices) / len(choices)
                                                   if choices else 0.0)
        out[f"genotype/{part}/decided_share"] = found.decided_share(part)
        margins = [c.margin for c in found.of(part)]
        out[f"genotype/{part}/min_margin"] = min(min(margins), 1e6) if margins else 1.0  # no alternative: inf
    out["arch/entropy"] = arch_entropy(arch_weights)
    out["genotype/identity_share"] = identity_share(found.genotype, searched or PARTS)
    out["genotype/decided"] = float(found.decided)
    out["genotype/decided_share"] = found.decided_share()
    return out


__all__ = ["epoch_metrics"]
