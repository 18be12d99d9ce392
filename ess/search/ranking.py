"""Shared-weight ranking: genotypes scored by their validation loss on their path through a trained supernet.

A genotype's score is the mean next-token loss of the supernet restricted to it (:mod:`ess.supernet.path`:
one-hot weights over its ops and predecessors, batch norm by the batch's statistics), over the first
``tokens`` tokens of the search's validation part, state carried across segments as :func:`ess.evaluation.evaluate`
does. Lower is better. Random search with weight sharing (Li & Talwalkar, UAI 2019) returns the best of many
random genotypes ranked this way; ``--derive rank`` ranks the argmax genotype of a DARTS search, its one-edit
neighbours and random genotypes the same way, and returns the best.

Genotypes are evaluated ``group`` at a time side by side in the batch: every weight product then serves all of
them, and the cost per genotype is the decoder's (``tokens x nhid x vocabulary``) plus a small recurrent part.

Many candidates are ranked by successive halving in two rungs (:func:`rank` with ``screen`` and ``keep``): every
candidate is scored on the leading ``screen`` share of the rows of the validation source, the best ``keep`` of
them on all of it. The decoder sets a floor that grouping cannot lower (bench/ranking.py: about 0.3 s per
genotype on 20k tokens at 64 units on 2 cores, 5.3 minutes for 1,000), so a screen is what brings 1,000
genotypes into minutes; bench/ranking.py reports how the screen's order agrees with the full one (Kendall tau).
The reference code ranks in one rung, on the whole validation set, on a GPU.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ess import kernels
from ess.data import get_batch
from ess.space.description import describe
from ess.space.genotype import COMBINATIONS, Edge, ESSGenotype, InterGenotype, InterNode, IntraGenotype
from ess.space.ops import ZERO
from ess.space.sample import random_genotype
from ess.supernet.model import SearchModel
from ess.supernet.path import PathPlan, path_forward

#: genotypes evaluated side by side (bench/ranking.py measures the group sizes)
GROUP = 32


@torch.no_grad()
def path_losses(model: SearchModel, genotypes: Sequence[ESSGenotype], source: torch.Tensor, bptt: int = 35,
                group: int = GROUP, on_group: Callable[[int], None] | None = None) -> list[float]:
    """Mean loss (nats per predicted token) of each genotype's path over ``source`` ``[T, B]``.

    Fixed ``bptt``-long segments, state carried, dropout off; ``on_group(done)`` after each group."""
    was_training = model.training
    model.eval()
    B = source.size(1)
    weight, bias = model.decoder.weight, model.decoder.bias
    out: list[float] = []
    try:
        for start in range(0, len(genotypes), group):
            chunk = list(genotypes[start: start + group])
            G, plan = len(chunk), PathPlan.of(model, chunk)
            state = model.init_state(G * B)
            totals, count = torch.zeros(G, dtype=torch.float64), 0
            for i in range(0, source.size(0) - 1, bptt):
                data, targets = get_batch(source, i, bptt)
                res = path_forward(model, plan, data.repeat(1, G), state)
                state = res.state
                hidden = res.output.view(data.size(0), G, B, -1)
                flat = targets.reshape(-1)
                for g in range(G):
                    x = hidden[:, g].reshape(-1, hidden.size(-1))
                    totals[g] += float(mean_loss(x, weight, bias, flat)) * flat.numel()
                count += flat.numel()
            out += (totals / max(count, 1)).tolist()
            if on_group is not None:
                on_group(len(out))
    finally:
        model.train(was_training)
    return out


def mean_loss(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of the tied decoder on hidden states ``x`` ``[N, d]`` (fused unless the backend is
    ``autograd``)."""
    if kernels.fused_enabled():
        return kernels.linear_cross_entropy(x, weight, bias, y)
    return torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, weight, bias), y)


# --------------------------------------------------------------------------------------------------
# The candidates: the supernet's space, random draws, one-edit neighbours


def space_of(model: SearchModel) -> dict[str, Any]:
    """:func:`ess.space.sample.random_genotype`'s arguments for ``model``'s space (its searched parts, node
    counts, candidate ops and fixed intra cell)."""
    cfg = model.config
    return dict(steps=cfg.steps, m=cfg.m, n_inter=cfg.n_inter, intra_ops=cfg.intra_ops, inter_ops=cfg.inter_ops,
                searched=tuple(model.searched_parts()), fixed_intra=cfg.intra_cell,
                combination=cfg.combination)


def sample(rng: random.Random, space: dict[str, Any]) -> ESSGenotype:
    """One genotype drawn uniformly from ``space`` (:func:`space_of`); a searched combination is drawn too."""
    combination = space["combination"]
    if combination == "search":
        combination = rng.choice(COMBINATIONS)
    return random_genotype(rng, **{**space, "combination": combination})


def samples(seed: int | str, k: int, space: dict[str, Any]) -> list[ESSGenotype]:
    """``k`` distinct genotypes drawn with ``random.Random(seed)`` (fewer when the space is smaller)."""
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(100 * k):
        g = sample(rng, space)
        if g not in seen:
            seen.add(g)
            out.append(g)
        if len(out) == k:
            break
    return out


def neighbours(genotype: ESSGenotype, space: dict[str, Any]) -> list[ESSGenotype]:
    """Every genotype one choice away: one intra edge's op or predecessor, one inter branch's op or source, or a
    searched combination switched; in the searched parts of ``space`` only."""
    searched, out = space["searched"], []
    intra_ops = [op for op in space["intra_ops"] if op != ZERO]
    inter_ops = [op for op in space["inter_ops"] if op != ZERO]
    if "intra" in searched:
        edges = genotype.intra.recurrent
        for i, edge in enumerate(edges):
            for op in intra_ops:
                for pred in range(i + 1):
                    if (op, pred) != (edge.op, edge.pred):
                        changed = edges[:i] + (Edge(op, pred),) + edges[i + 1:]
                        out.append(ESSGenotype(IntraGenotype(changed, genotype.intra.concat), genotype.history,
                                               genotype.input))
    for part in ("history", "input"):
        if part not in searched:
            continue
        cell: InterGenotype = getattr(genotype, part)
        variants = []
        for k, node in enumerate(cell.nodes):
            for side in ("a", "b"):
                edge = getattr(node, side)
                for op in inter_ops:
                    for pred in range(cell.m + k):
                        if (op, pred) != (edge.op, edge.pred):
                            new = InterNode(**{"a": node.a, "b": node.b, side: Edge(op, pred)})
                            variants.append(cell.nodes[:k] + (new,) + cell.nodes[k + 1:])
        cells = [InterGenotype(cell.m, nodes, cell.combination, cell.residual) for nodes in variants]
        if space["combination"] == "search" and cell.nodes:
            other = next(c for c in COMBINATIONS if c != cell.combination)
            cells.append(InterGenotype(cell.m, cell.nodes, other, cell.residual))
        out += [ESSGenotype(genotype.intra, c, genotype.input) if part == "history" else
                ESSGenotype(genotype.intra, genotype.history, c) for c in cells]
    return out


# --------------------------------------------------------------------------------------------------
# A ranking


@dataclass(frozen=True)
class Ranked:
    """One candidate: its genotype, where it came from (``argmax``, ``neighbour``, ``sample``), its loss and the
    validation tokens that loss was measured on (a screened-out candidate's are the screen's)."""

    genotype: ESSGenotype
    origin: str
    loss: float
    tokens: int = 0


@dataclass(frozen=True)
class Ranking:
    """Candidates best first (lowest loss; ties keep the candidates' order) and what the ranking cost."""

    entries: tuple[Ranked, ...]
    tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Ranked:
        return self.entries[0]

    def rank_of(self, origin: str) -> int | None:
        """1-based rank of the first candidate from ``origin`` (None when there is none)."""
        return next((i for i, e in enumerate(self.entries, 1) if e.origin == origin), None)

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": len(self.entries), "tokens": self.tokens, "seconds": self.seconds, **self.extra,
                "origins": {o: sum(e.origin == o for e in self.entries) for o in dict.fromkeys(
                    e.origin for e in self.entries)},
                "rank_of_argmax": self.rank_of("argmax"),
                "entries": [{"rank": i, "origin": e.origin, "loss": e.loss, "tokens": e.tokens,
                             "ppl": math.exp(min(e.loss, 50.0)), "description": describe(e.genotype),
                             "genotype": e.genotype.to_dict()}
                            for i, e in enumerate(self.entries, 1)]}


def rank(model: SearchModel, candidates: Sequence[tuple[str, ESSGenotype]], source: torch.Tensor, bptt: int = 35,
         group: int = GROUP, screen: float = 1.0, keep: int = 0, **extra: Any) -> Ranking:
    """``candidates`` (origin, genotype), duplicates dropped (first origin kept), scored on ``source`` and sorted.

    With ``screen < 1`` and more than ``keep`` candidates, successive halving in two rungs: all are scored on the
    leading ``screen`` share of ``source``'s rows, the best ``keep`` on all of ``source``; the entries are those
    ``keep`` by their full loss, then the others by their screen loss."""
    unique: dict[ESSGenotype, str] = {}
    for origin, g in candidates:
        unique.setdefault(g, origin)
    genotypes = list(unique)
    tokens = (source.size(0) - 1) * source.size(1)
    start = time.perf_counter()
    rows = max(2, int(round((source.size(0) - 1) * screen)) + 1)
    if screen < 1.0 and 0 < keep < len(genotypes) and rows < source.size(0):
        first = source[:rows]
        screened = path_losses(model, genotypes, first, bptt, group)
        order = sorted(range(len(genotypes)), key=lambda i: (screened[i], i))
        kept, rest = order[:keep], order[keep:]
        full = path_losses(model, [genotypes[i] for i in kept], source, bptt, group)
        top = sorted(zip(kept, full), key=lambda t: (t[1], t[0]))
        entries = tuple([Ranked(genotypes[i], unique[genotypes[i]], loss, tokens) for i, loss in top] +
                        [Ranked(genotypes[i], unique[genotypes[i]], screened[i], (rows - 1) * source.size(1))
                         for i in rest])
        extra = {"screen_tokens": (rows - 1) * source.size(1), "kept": keep, **extra}
    else:
        losses = path_losses(model, genotypes, source, bptt, group)
        order = sorted(range(len(genotypes)), key=lambda i: (losses[i], i))
        entries = tuple(Ranked(genotypes[i], unique[genotypes[i]], losses[i], tokens) for i in order)
    return Ranking(entries, tokens, time.perf_counter() - start, dict(extra))


__all__ = ["GROUP", "Ranked", "Ranking", "mean_loss", "neighbours", "path_losses", "rank", "sample", "samples",
           "space_of"]
