"""Evidence that a search found something: seed agreement, argmax stability, ranking quality (docs/method.md §11).

In this space the architecture weights stay near uniform even at full budget, so how peaked ``alpha`` is says
little. These are the checks that can be answered: do searches from different seeds derive the same choices
more often than random genotypes of the space do (:func:`seed_agreement`); did the derived genotype stop
changing over the last half of a search (:func:`stability`); does one score rank genotypes as another does
(:func:`rank_agreement`, Kendall's tau-b). Pure functions over genotypes and score lists (NumPy only); each
result is a frozen dataclass with ``statement()`` (one line) and ``to_dict()`` (JSON).

A **choice** is one decision of a derived genotype. Intra cell: node ``i``'s edge ``(op, predecessor)``.
Inter cell (history, input): node slot ``k = 0 .. n_inter-1``, the *unordered* pair ``{a, b}`` of its two
branch edges (``a ⊙ b = b ⊙ a``), or ``None`` when the genotype has fewer than ``k + 1`` nodes (the derivation
dropped nodes and renumbered the survivors, so slot ``k`` of two genotypes may hold different supernet nodes:
the comparison is approximate there). The combination and the intra ``concat`` are not choices here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np

from ess.space.genotype import ESSGenotype, InterGenotype
from ess.space.ops import PRIMITIVES, ZERO
from ess.space.tables import PARTS

INTER_PARTS: tuple[str, ...] = ("history", "input")
ASPECTS: tuple[str, ...] = ("edge", "op", "pred")   # what of a choice is compared: all of it, its op(s), its source(s)
Z95 = 1.959963984540054                              # the 0.975 quantile of the standard normal
EXACT_MAX_N = 10                                     # rank_agreement's p is exact up to this n


# ---- choices

def _projection(edges: Sequence[Any], aspect: str) -> Hashable:
    if aspect == "edge":
        return tuple(sorted((e.op, e.pred) for e in edges))
    return tuple(sorted(getattr(e, aspect) for e in edges))


def genotype_choices(genotype: ESSGenotype, part: str, n_inter: int | None = None,
                     aspect: str = "edge") -> tuple[Hashable, ...]:
    """The choices of ``part`` of ``genotype`` (module docstring), as comparable values.

    ``aspect``: ``edge`` compares the whole choice, ``op`` its op (an inter slot: the multiset of its two ops),
    ``pred`` its predecessor (an inter slot: the multiset of its two sources). Inter parts have ``n_inter``
    slots (default: the genotype's node count); a missing node is ``None`` whatever the aspect.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"aspect: unknown {aspect!r} (known: {', '.join(ASPECTS)})")
    if part == "intra":
        return tuple(_projection([e], aspect)[0] for e in genotype.intra.recurrent)
    if part not in INTER_PARTS:
        raise ValueError(f"unknown genotype part {part!r} (known: {', '.join(PARTS)})")
    nodes = getattr(genotype, part).nodes
    slots = len(nodes) if n_inter is None else n_inter
    if len(nodes) > slots:
        raise ValueError(f"{part}: {len(nodes)} nodes, more than the {slots} node slots (n_inter)")
    return tuple(_projection((n.a, n.b), aspect) for n in nodes) + (None,) * (slots - len(nodes))


def _matches(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def _searched(parts: Sequence[str]) -> tuple[str, ...]:
    parts = tuple(parts)
    if not parts or len(set(parts)) != len(parts) or any(p not in PARTS for p in parts):
        raise ValueError(f"searched: expected distinct parts among {', '.join(PARTS)}, got {list(parts)}")
    return tuple(p for p in PARTS if p in parts)


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


# ---- 1. seed agreement

def random_agreement(part: str, slot: int, aspect: str = "edge", *, m: int = 3,
                     intra_ops: Sequence[str] = PRIMITIVES, inter_ops: Sequence[str] = PRIMITIVES) -> float:
    """P(two random genotypes agree on one choice) = sum over outcomes of P^2 (``random_genotype``'s draw).

    Intra node ``i = slot`` (1-based): ``1 / (n_ops i)`` (op only: ``1 / n_ops``, predecessor only: ``1 / i``).
    Inter slot ``k = slot`` (0-based): each branch uniform over ``N`` outcomes (``n_ops (m + k)``; op only
    ``n_ops``; source only ``m + k``), the unordered pair equal with probability ``(2N - 1) / N^3``.
    """
    if part == "intra":
        n = {"edge": _n_ops(intra_ops) * slot, "op": _n_ops(intra_ops), "pred": slot}[aspect]
        return 1.0 / n
    n = {"edge": _n_ops(inter_ops) * (m + slot), "op": _n_ops(inter_ops), "pred": m + slot}[aspect]
    return (2 * n - 1) / n ** 3


def _n_ops(ops: Sequence[str]) -> int:
    return len([op for op in ops if op != ZERO])


@dataclass(frozen=True)
class PartAgreement:
    """Agreement on one part's choices (or on all searched parts' choices pooled: ``part = "all"``).

    ``observed``: share of (seed pair, choice) on which the pair agrees; ``null_*``: the same statistic over
    ``draws`` sets of ``k`` random genotypes (mean, 2.5-97.5% range, the 95% quantile: 95% of draws at or
    below it); ``expected``: its analytic mean; ``p = (1 + #{null >= observed}) / (draws + 1)``; ``op`` and
    ``pred`` with ``*_expected``: the op-only and predecessor-only agreement (diagnostics, no null drawn).
    """

    part: str
    choices: int
    observed: float
    null_mean: float
    null_range: tuple[float, float]
    null_q95: float
    expected: float
    p: float
    op: float
    op_expected: float
    pred: float
    pred_expected: float

    def statement(self) -> str:
        return (f"{self.part}: seeds agree on {self.observed:.0%} of {self.choices} choices, random genotypes on "
                f"{self.null_mean:.0%} (95% of random draws at or below {self.null_q95:.0%}), p = {_fmt_p(self.p)}")


@dataclass(frozen=True)
class SeedAgreement:
    """:func:`seed_agreement`'s answer: ``overall`` pooled over the searched parts' choices, ``parts`` each."""

    overall: PartAgreement
    parts: tuple[PartAgreement, ...]
    k: int
    pairs: int
    draws: int
    seed: int

    def statement(self) -> str:
        o = self.overall
        return (f"seeds agree on {o.observed:.0%} of choices, random genotypes on {o.null_mean:.0%} (95% of random "
                f"draws at or below {o.null_q95:.0%}), p = {_fmt_p(o.p)}, k = {self.k} searches")

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "pairs": self.pairs, "draws": self.draws, "seed": self.seed,
                "overall": asdict(self.overall), "parts": {p.part: asdict(p) for p in self.parts},
                "statement": self.statement()}


def _check_space(genotypes: Sequence[ESSGenotype], parts: tuple[str, ...], steps: int, m: int, n_inter: int,
                 intra_ops: Sequence[str], inter_ops: Sequence[str]) -> None:
    for s, g in enumerate(genotypes):
        if not isinstance(g, ESSGenotype):
            raise ValueError(f"genotypes[{s}]: expected an ESSGenotype, got {type(g).__name__}")
        if "intra" in parts:
            if g.intra.steps != steps:
                raise ValueError(f"genotypes[{s}].intra: {g.intra.steps} nodes, the space has steps = {steps}")
            bad = [e.op for e in g.intra.recurrent if e.op not in intra_ops]
            if bad:
                raise ValueError(f"genotypes[{s}].intra: op {bad[0]!r} is not among the space's intra ops")
        for part in (p for p in parts if p != "intra"):
            inter: InterGenotype = getattr(g, part)
            if inter.is_identity:
                continue
            if inter.m != m or len(inter.nodes) > n_inter:
                raise ValueError(f"genotypes[{s}].{part}: m = {inter.m} with {len(inter.nodes)} nodes, the space has "
                                 f"m = {m} and n_inter = {n_inter}")
            bad = [e.op for n in inter.nodes for e in (n.a, n.b) if e.op not in inter_ops]
            if bad:
                raise ValueError(f"genotypes[{s}].{part}: op {bad[0]!r} is not among the space's inter ops")


def _null_codes(rng: np.random.Generator, draws: int, k: int, outcomes: Sequence[int], unordered: bool) -> np.ndarray:
    """Codes ``[draws, k, choices]`` of random choices: uniform over ``outcomes[c]``, or an unordered pair of two."""
    cols = []
    for n in outcomes:
        if unordered:
            a, b = rng.integers(n, size=(2, draws, k))
            cols.append(np.minimum(a, b) * n + np.maximum(a, b))
        else:
            cols.append(rng.integers(n, size=(draws, k)))
    return np.stack(cols, axis=-1)


def _pair_matches(codes: np.ndarray) -> np.ndarray:
    """Matches summed over seed pairs and choices, per draw, of codes ``[draws, k, choices]``."""
    total = np.zeros(codes.shape[0], dtype=np.int64)
    for a, b in combinations(range(codes.shape[1]), 2):
        total += (codes[:, a, :] == codes[:, b, :]).sum(axis=1)
    return total


def seed_agreement(genotypes: Sequence[ESSGenotype], searched: Sequence[str], *, steps: int = 8, m: int = 3,
                   n_inter: int = 3, intra_ops: Sequence[str] = PRIMITIVES, inter_ops: Sequence[str] = PRIMITIVES,
                   draws: int = 10_000, seed: int = 0) -> SeedAgreement:
    """How often the derived genotypes of one arm's ``k >= 2`` seeds agree, against random genotypes.

    ``searched``: the parts the arm searches (the others are fixed and left out). The space keywords are
    :func:`ess.space.sample.random_genotype`'s. The null draws ``draws`` sets of ``k`` independent genotypes
    of ``random_genotype``'s distribution (simulated directly from it, seeded by ``seed``); random genotypes
    never lack a node, so agreement on a dropped inter node (``None``) is agreement random draws cannot reach.
    """
    parts = _searched(searched)
    k = len(genotypes)
    if k < 2:
        raise ValueError(f"genotypes: seed agreement needs at least 2 searches, got {k}")
    if draws < 1:
        raise ValueError(f"draws: expected at least 1, got {draws}")
    _check_space(genotypes, parts, steps, m, n_inter, intra_ops, inter_ops)
    rng = np.random.default_rng(seed)
    pairs = k * (k - 1) // 2
    rows, null_all, n_all = [], np.zeros(draws, dtype=np.int64), 0
    hits_all, expected_all = dict.fromkeys(ASPECTS, 0), {a: [] for a in ASPECTS}
    for part in parts:
        slots = list(range(1, steps + 1)) if part == "intra" else list(range(n_inter))
        ops = _n_ops(intra_ops if part == "intra" else inter_ops)
        hits = {a: sum(_matches(genotype_choices(x, part, n_inter, a), genotype_choices(y, part, n_inter, a))
                       for x, y in combinations(genotypes, 2)) for a in ASPECTS}
        expected = {a: [random_agreement(part, s, a, m=m, intra_ops=intra_ops, inter_ops=inter_ops) for s in slots]
                    for a in ASPECTS}
        outcomes = [ops * s for s in slots] if part == "intra" else [ops * (m + s) for s in slots]
        null = _pair_matches(_null_codes(rng, draws, k, outcomes, unordered=part != "intra"))
        rows.append(_agreement(part, len(slots), pairs, hits, expected, null, draws))
        null_all += null
        n_all += len(slots)
        for a in ASPECTS:
            hits_all[a] += hits[a]
            expected_all[a] += expected[a]
    overall = _agreement("all", n_all, pairs, hits_all, expected_all, null_all, draws)
    return SeedAgreement(overall, tuple(rows), k, pairs, draws, seed)


def _agreement(part: str, choices: int, pairs: int, hits: dict[str, int], expected: dict[str, list[float]],
               null: np.ndarray, draws: int) -> PartAgreement:
    scale = pairs * choices
    low, high = np.quantile(null, [0.025, 0.975])
    return PartAgreement(part=part, choices=choices, observed=hits["edge"] / scale,
                         null_mean=float(null.mean()) / scale,
                         null_range=(float(low) / scale, float(high) / scale),
                         null_q95=float(np.quantile(null, 0.95, method="higher")) / scale,
                         expected=float(np.mean(expected["edge"])),
                         p=(1 + int((null >= hits["edge"]).sum())) / (draws + 1),
                         op=hits["op"] / scale, op_expected=float(np.mean(expected["op"])),
                         pred=hits["pred"] / scale, pred_expected=float(np.mean(expected["pred"])))


# ---- 2. stability

@dataclass(frozen=True)
class Stability:
    """:func:`stability`'s answer (epochs 1-based; ``middle = ceil(E / 2)``; the last half: epochs after it).

    ``changed_choices``: choices that differ between epoch ``e - 1`` and ``e``, summed over ``e = middle + 1
    .. E`` (``parts``: the same per part); ``changed_epochs`` of those ``transitions = E - middle`` epochs
    derived a genotype different from the epoch before; ``kept_from_middle``: the share of the final genotype's
    ``choices`` equal at the middle epoch; ``last_change``: the last epoch whose genotype differs from the one
    before (None: never changed).
    """

    epochs: int
    middle: int
    choices: int
    transitions: int
    changed_choices: int
    changed_epochs: int
    kept_from_middle: float
    last_change: int | None
    parts: dict[str, int]

    @property
    def changed_epoch_share(self) -> float:
        return self.changed_epochs / self.transitions

    def statement(self) -> str:
        since = "never changed" if self.last_change is None else f"last changed at epoch {self.last_change}"
        return (f"over epochs {self.middle + 1}-{self.epochs} the derived genotype changed at {self.changed_epochs} of "
                f"{self.transitions} epochs ({self.changed_choices} choice changes); the final genotype keeps "
                f"{self.kept_from_middle:.0%} of epoch {self.middle}'s {self.choices} choices; {since}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed_epoch_share": self.changed_epoch_share, "statement": self.statement()}


def stability(per_epoch: Sequence[ESSGenotype], searched: Sequence[str], n_inter: int | None = None) -> Stability:
    """How much the derived genotype of one search moved over its last half (:class:`Stability`).

    ``per_epoch``: the genotype derived after each epoch, in epoch order (at least two). Inter slots:
    ``n_inter``, default the most nodes any epoch's genotype has.
    """
    parts = _searched(searched)
    epochs = len(per_epoch)
    if epochs < 2:
        raise ValueError(f"per_epoch: stability needs the genotypes of at least 2 epochs, got {epochs}")
    slots = {p: n_inter if n_inter is not None else max(len(getattr(g, p).nodes) for g in per_epoch)
             for p in parts if p != "intra"}
    seq = [{p: genotype_choices(g, p, slots.get(p)) for p in parts} for g in per_epoch]
    middle = math.ceil(epochs / 2)

    def changed(e: int, part: str) -> int:   # e 1-based: epoch e against epoch e - 1
        return len(seq[e - 1][part]) - _matches(seq[e - 1][part], seq[e - 2][part])

    last_half = range(middle + 1, epochs + 1)
    per_part = {p: sum(changed(e, p) for e in last_half) for p in parts}
    changes = [e for e in range(2, epochs + 1) if any(changed(e, p) for p in parts)]
    n = sum(len(seq[-1][p]) for p in parts)
    kept = sum(_matches(seq[-1][p], seq[middle - 1][p]) for p in parts)
    return Stability(epochs=epochs, middle=middle, choices=n, transitions=epochs - middle,
                     changed_choices=sum(per_part.values()), changed_epochs=sum(e > middle for e in changes),
                     kept_from_middle=kept / n, last_change=changes[-1] if changes else None, parts=per_part)


# ---- 3. ranking quality

def _scores(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected a list of finite numbers")
    return arr


def _pair_signs(a: np.ndarray) -> np.ndarray:
    """``sign(a_i - a_j)`` for the pairs ``i < j``, in ``np.triu_indices`` order."""
    i, j = np.triu_indices(len(a), 1)
    return np.sign(a[i] - a[j]).astype(np.int64)


def _tied_pairs(a: np.ndarray) -> tuple[int, int, int]:
    """``sum t(t-1)/2``, ``sum t(t-1)(t-2)``, ``sum t(t-1)(2t+5)`` over the groups of ``t`` tied values."""
    t = np.unique(a, return_counts=True)[1].astype(np.int64)
    return int((t * (t - 1) // 2).sum()), int((t * (t - 1) * (t - 2)).sum()), int((t * (t - 1) * (2 * t + 5)).sum())


def _permutations(n: int) -> np.ndarray:
    """All ``n!`` permutations of ``range(n)``, ``[n!, n]`` int8 (built by inserting each new element)."""
    perms = np.zeros((1, 0), dtype=np.int8)
    for v in range(n):
        perms = np.concatenate([np.insert(perms, pos, v, axis=1) for pos in range(v + 1)])
    return perms


def _exact_s(sx: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``S = sum_{i<j} sign(x_i - x_j) sign(y_p(i) - y_p(j))`` for every permutation ``p`` of ``y``."""
    n = len(y)
    ranks = np.unique(y, return_inverse=True)[1].astype(np.int8)
    i_idx, j_idx = np.triu_indices(n, 1)
    out = []
    for chunk in np.array_split(_permutations(n), max(1, math.factorial(n) // 500_000)):
        yp = ranks[chunk]
        s = np.zeros(len(chunk), dtype=np.int16)
        for i, j, sign in zip(i_idx, j_idx, sx):
            if sign:
                s += int(sign) * np.sign(yp[:, i] - yp[:, j]).astype(np.int16)
        out.append(s)
    return np.concatenate(out)


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau-b between two score lists over the same genotypes (:func:`rank_agreement`).

    ``concordant``/``discordant``: pairs ordered alike/oppositely by both lists (pairs tied in either count in
    neither); ``p``: two-sided against tau = 0, ``p_greater`` one-sided (tau > 0), by ``p_method``; ``interval``:
    the 95% interval by ``interval_method`` (None for n <= 4).
    """

    tau: float
    n: int
    concordant: int
    discordant: int
    ties_x: int
    ties_y: int
    p: float
    p_greater: float
    p_method: str
    interval: tuple[float, float] | None
    interval_method: str

    def statement(self) -> str:
        ci = ("no interval (n <= 4)" if self.interval is None else
              f"95% interval {self.interval[0]:.2f} to {self.interval[1]:.2f}")
        return (f"Kendall tau-b = {self.tau:.2f} over n = {self.n} genotypes ({ci}), p = {_fmt_p(self.p)} "
                f"(two-sided, {self.p_method})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "statement": self.statement()}


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: ``(C - D) / sqrt((n0 - n1)(n0 - n2))``, ``n0 = n(n-1)/2``, ``n1``/``n2`` tied pairs."""
    return rank_agreement(x, y, p_value=False).tau


def rank_agreement(x: Sequence[float], y: Sequence[float], *, p_value: bool = True) -> RankAgreement:
    """Kendall's tau-b of ``x`` and ``y`` (same genotypes, same order, both lower-is-better or both higher).

    p against tau = 0: the exact permutation distribution of ``S = C - D`` (all ``n!`` orders of ``y``,
    ties kept) for ``n <= 10``; beyond, the normal approximation with Kendall's tie-corrected variance of
    ``S``. Interval: Fieller, Hartley & Pearson (1957), ``tanh(atanh(tau) +- 1.96 sqrt(0.437 / (n - 4)))``;
    at ``|tau| = 1`` the bound away from 1 is that of ``1 - 2 / n0`` (one discordant pair in ``n0``).
    ``p_value=False`` skips the p (NaN), for a tau alone.
    """
    x, y = _scores(x, "x"), _scores(y, "y")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y: {n} and {len(y)} scores; rank agreement needs one of each per genotype")
    if n < 2:
        raise ValueError(f"x: rank agreement needs at least 2 genotypes, got {n}")
    sx, sy = _pair_signs(x), _pair_signs(y)
    prod = sx * sy
    concordant, discordant = int((prod > 0).sum()), int((prod < 0).sum())
    n0 = n * (n - 1) // 2
    (n1, t2, t5), (n2, u2, u5) = _tied_pairs(x), _tied_pairs(y)
    if n1 == n0 or n2 == n0:
        raise ValueError(f"{'x' if n1 == n0 else 'y'}: every score is tied; tau-b is undefined")
    s = concordant - discordant
    tau = s / math.sqrt((n0 - n1) * (n0 - n2))
    p = p_greater = math.nan
    method = "exact permutation" if n <= EXACT_MAX_N else "normal approximation, tie-corrected variance"
    if p_value and n <= EXACT_MAX_N:
        dist = _exact_s(sx, y)
        p, p_greater = float((np.abs(dist) >= abs(s)).mean()), float((dist >= s).mean())
    elif p_value:
        var = ((n * (n - 1) * (2 * n + 5) - t5 - u5) / 18 + t2 * u2 / (9 * n * (n - 1) * (n - 2))
               + (2 * n1) * (2 * n2) / (2 * n * (n - 1)))
        z = s / math.sqrt(var)
        p, p_greater = math.erfc(abs(z) / math.sqrt(2)), 0.5 * math.erfc(z / math.sqrt(2))
    return RankAgreement(tau=tau, n=n, concordant=concordant, discordant=discordant, ties_x=n1, ties_y=n2, p=p,
                         p_greater=p_greater, p_method=method, interval=fieller_interval(tau, n),
                         interval_method="Fieller-Hartley-Pearson 1957")


def fieller_interval(tau: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """``tanh(atanh(tau) +- z sqrt(0.437 / (n - 4)))`` (None for n <= 4); see :func:`rank_agreement` at |tau| = 1."""
    if n <= 4:
        return None
    se = math.sqrt(0.437 / (n - 4))
    if abs(tau) >= 1:
        inner = math.copysign(1 - 2 / (n * (n - 1) // 2), tau)
        bound = math.tanh(math.atanh(inner) - math.copysign(z * se, tau))
        return (bound, 1.0) if tau > 0 else (-1.0, bound)
    centre = math.atanh(tau)
    return math.tanh(centre - z * se), math.tanh(centre + z * se)


# ---- one arm's searches in a few words

@dataclass(frozen=True)
class ArmEvidence:
    """What an arm's searches (one per seed) say together: their seed agreement (None with one search) and
    their stability, averaged (None when no search ran two epochs)."""

    searches: int
    agreement: SeedAgreement | None
    changed_epoch_share: float | None
    kept_from_middle: float | None

    def statement(self) -> str:
        """One or two plain lines (the job summaries print them)."""
        if self.agreement is None:
            first = f"{self.searches} search: seed agreement needs at least two"
        else:
            first = self.agreement.statement()
        if self.changed_epoch_share is None:
            return first + "; no search ran two epochs: no stability"
        return (f"{first}; over the last half of each search the derived genotype changed at "
                f"{self.changed_epoch_share:.0%} of the epochs and kept {self.kept_from_middle:.0%} of its "
                "middle epoch's choices (mean over searches)")

    def to_dict(self) -> dict[str, Any]:
        return {"searches": self.searches, "agreement": self.agreement.to_dict() if self.agreement else None,
                "changed_epoch_share": self.changed_epoch_share, "kept_from_middle": self.kept_from_middle,
                "statement": self.statement()}


def arm_evidence(genotypes: Sequence[ESSGenotype], stabilities: Sequence[Stability | dict[str, Any] | None],
                 searched: Sequence[str], **space: Any) -> ArmEvidence:
    """:class:`ArmEvidence` of one arm: ``genotypes`` its searches' answers (one per seed), ``stabilities`` their
    :func:`stability` (or its ``to_dict()``, as ``selection.json`` keeps it; None for a one-epoch search),
    ``space`` :func:`seed_agreement`'s keywords."""
    agreement = seed_agreement(genotypes, searched, **space) if len(genotypes) >= 2 else None
    rows = [s.to_dict() if isinstance(s, Stability) else s for s in stabilities if s]
    if not rows:
        return ArmEvidence(len(genotypes), agreement, None, None)
    return ArmEvidence(len(genotypes), agreement, float(np.mean([r["changed_epoch_share"] for r in rows])),
                       float(np.mean([r["kept_from_middle"] for r in rows])))


__all__ = ["ASPECTS", "EXACT_MAX_N", "ArmEvidence", "PartAgreement", "RankAgreement", "SeedAgreement", "Stability",
           "arm_evidence", "fieller_interval", "genotype_choices", "kendall_tau_b", "random_agreement",
           "rank_agreement", "seed_agreement", "stability"]
