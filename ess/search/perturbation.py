"""Perturbation-based derivation (DARTS-PT) of a trained supernet's genotype.

Wang et al., *Rethinking Architecture Selection in Differentiable NAS* (ICLR 2021), show that the
magnitude of an architecture weight need not measure how much its op matters to the supernet, and that
this is how parameter-free ops win DARTS derivations; DARTS-PT instead picks, on each edge, the op whose
removal hurts the supernet's validation accuracy most. Here, for every choice the derivation makes (an
intra node's predecessor and op, an inter branch's source and op), each candidate is removed in turn (its
softmax weight set to 0, the others kept) and the supernet's validation loss measured: the candidate whose
removal raises the loss most is chosen. ``none`` contributes nothing, so removing it changes nothing
(score 0): an inter branch says **none** when no candidate's removal raises the loss, under the drop rule
of :mod:`ess.space.derive` (``0 > drop_ratio * best score``), and the structure rules (dropped and merged
nodes, the identity) are the same. A choice is decided when its score is positive and at least
``decision_ratio`` times the runner-up's (when that is positive).

One simplification, stated: DARTS-PT fine-tunes the supernet for a few epochs after each decision; here
every score comes from the final supernet (one pass, no fine-tuning), which costs one validation pass per
candidate (``pt_tokens`` tokens each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ess.evaluation import evaluate
from ess.space.derive import Choice, Derivation, DeriveRule, build_inter
from ess.space.genotype import COMBINATIONS, Edge, ESSGenotype, IntraGenotype
from ess.space.notation import node_name, slot_name
from ess.space.ops import PRIMITIVES, ZERO
from ess.space.tables import BRANCHES, intra_offset
from ess.space.tables import inter_from_dict as _inter_from_dict
from ess.space.tables import intra_from_dict as _intra_from_dict
from ess.supernet.base import InterWeights
from ess.supernet.model import SearchModel

_ZERO_COL = PRIMITIVES.index(ZERO)


def _decided(score: float, runner: float, rule: DeriveRule) -> bool:
    return score > 0 and score >= rule.decision_ratio * max(runner, 0.0)


class _Scorer:
    """Validation loss of the supernet with one candidate removed, minus the loss with none removed."""

    def __init__(self, model: SearchModel, source: Tensor, bptt: int):
        self.model, self.source, self.bptt = model, source, bptt
        with torch.no_grad():
            self.probs: dict[str, Any] = {
                part: module.arch_probabilities(model.part_logits(part))
                for part, module in model.searched_parts().items()}
        self.base = self._loss(self.probs)
        self.evaluations = 1

    def _loss(self, probs: dict[str, Any]) -> float:
        with self.model.overridden(probs):
            return evaluate(self.model, self.source, self.bptt)

    def without(self, part: str, remove: Callable[[Any], Any]) -> float:
        """The loss increase when ``remove(copy of the part's weights)`` zeroes one candidate."""
        self.evaluations += 1
        return self._loss({**self.probs, part: remove(self.probs[part])}) - self.base


def _zero_intra(row: int, col: int) -> Callable[[Tensor], Tensor]:
    def remove(theta: Tensor) -> Tensor:
        out = theta.clone()
        out[row, col] = 0.0
        return out
    return remove


def _zero_inter(k: int, side: int, j: int, col: int) -> Callable[[InterWeights], InterWeights]:
    def remove(w: InterWeights) -> InterWeights:
        branches = list(w.branches)
        branches[k] = branches[k].clone()
        branches[k][side, j, col] = 0.0
        return InterWeights(branches, w.combination)
    return remove


def _ranked(scores: dict[tuple[int, int], float]) -> list[tuple[float, int, int]]:
    """``(score, j, col)``, best first; ties: lowest ``j``, then first op (as the argmax rule)."""
    return sorted(((s, j, c) for (j, c), s in scores.items()), key=lambda x: (-x[0], x[1], x[2]))


def perturbation_derivation(model: SearchModel, source: Tensor, bptt: int, rule: DeriveRule) -> Derivation:
    """The DARTS-PT genotype of ``model`` scored on ``source`` (a batchified validation slice)."""
    scorer = _Scorer(model, source, bptt)
    weights = model.arch_weights()
    choices: list[Choice] = []
    notes: list[str] = [f"perturbation: base valid loss {scorer.base:.4f} on {source.numel():,} tokens"]
    entry = weights["intra"]
    if entry["searched"]:
        cols = [PRIMITIVES.index(op) for op in model.ops["intra"] if op != ZERO]
        edges = []
        for i in range(1, entry["steps"] + 1):
            scores = {(j, c): scorer.without("intra", _zero_intra(intra_offset(i) + j, c))
                      for j in range(i) for c in cols}
            ranked = _ranked(scores)
            s, j, c = ranked[0]
            runner = ranked[1][0] if len(ranked) > 1 else 0.0
            edges.append(Edge(PRIMITIVES[c], j))
            choices.append(Choice("intra", slot_name("intra", i), PRIMITIVES[c], j, s, runner, 0.0,
                                  _decided(s, runner, rule), node_name("intra", j)))
        intra = IntraGenotype(tuple(edges), tuple(range(1, entry["steps"] + 1)))
    else:
        intra = _intra_from_dict(entry["genotype"])
    inters = []
    for part in ("history", "input"):
        entry = weights[part]
        if not entry["searched"]:
            inters.append(_inter_from_dict(entry["genotype"]))
            continue
        module = model.searched_parts()[part]
        cols = [PRIMITIVES.index(op) for op in model.ops[part] if op != ZERO]
        can_say_no = ZERO in model.ops[part]
        combination = entry["combination"]
        if combination == "search":
            values = [entry["combination_weights"][c] for c in COMBINATIONS]
            best = max(range(2), key=lambda q: (values[q], -q))
            combination = COMBINATIONS[best]
            choices.append(Choice(part, "combination", combination, -1, values[best], values[1 - best], 0.5,
                                  values[best] >= rule.decision_ratio * values[1 - best]))

        def choose(k: int, side: str, visible: list[int], part: str = part, m: int = module.m,
                   cols: list[int] = cols, can_say_no: bool = can_say_no) -> tuple[str, int, bool, Choice]:
            b = BRANCHES.index(side)
            scores = {(j, c): scorer.without(part, _zero_inter(k, b, j, c)) for j in visible for c in cols}
            ranked = _ranked(scores)
            s, j, c = ranked[0]
            no = can_say_no and 0.0 > rule.drop_ratio * s
            where = slot_name(part, m + k, m, side)
            if no:
                return PRIMITIVES[c], j, True, Choice(part, where, ZERO, -1, 0.0, s, 0.0, s < 0)
            runner = max(ranked[1][0] if len(ranked) > 1 else 0.0, 0.0 if can_say_no else float("-inf"))
            return PRIMITIVES[c], j, False, Choice(part, where, PRIMITIVES[c], j, s, runner, 0.0,
                                                   _decided(s, runner, rule), node_name(part, j, m))

        inter, found, said = build_inter(module.n_nodes, module.m, combination, module.residual, choose, rule, part)
        inters.append(inter)
        choices += found
        notes += said
    notes.append(f"perturbation: {scorer.evaluations} validation passes")
    genotype = ESSGenotype(intra=intra, history=inters[0], input=inters[1])
    return Derivation(genotype, tuple(choices), tuple(notes), rule)


__all__ = ["perturbation_derivation"]
