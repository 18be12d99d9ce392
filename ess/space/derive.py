"""Derivation of a discrete :class:`~ess.space.ESSGenotype` from architecture weights, with its reasons.

Pure functions over the plain weight tables of :mod:`ess.space.tables` (columns in
:data:`ess.space.ops.PRIMITIVES` order), so a search log written as JSON can be re-derived without a model
and tests can build tables by hand. Rules (docs/method.md, "Derivation"):

* **intra node** ``i``: the predecessor whose best non-``none`` op weight is highest, then that op (DARTS's
  ``_parse``); ties go to the lowest predecessor, then the first op. ``none`` is never chosen.
* **inter branch**: its best ``(predecessor, op)`` with ``op != none`` among the inputs and the surviving
  earlier nodes (for softmax scope ``edge`` this is DARTS's rule too: max over ``j`` of the max over ops).
  The branch says **no** when its strongest ``none`` weight beats that choice:
  ``max_j theta(j, none) > drop_ratio * theta(best)`` (:class:`DeriveRule`, default 1.5; ``drop_ratio = inf``
  never drops, the derivation before this rule existed).
* **inter node**: a product node (seed eq. 4) is dropped when either branch says no (``a ⊙ 0 = 0``); a sum
  node when both do (one "no" under ``sum`` keeps both branches, since a genotype edge cannot be the zero
  op, and is reported). Surviving nodes are renumbered in order; a later branch never reads a dropped node.
* **duplicates**: a node whose branches equal an earlier survivor's (same side, op and source: the maps
  ``W^a_j``, ``W^b_j`` are shared by all nodes) computes the same vector; it is merged into the earlier node
  (later branches that read it read that node) and reported.
* an inter cell with no surviving node derives to the identity (:data:`IDENTITY_INTER`), so a joint
  search can hand back exactly a DARTS cell; the combination, when searched, is the argmax of its weights.

Every choice is kept as a :class:`Choice` with its margin over the runner-up (the best alternative, ``none``
included) and over the uniform weight; it is **decided** when ``weight >= decision_ratio * runner_up``, and
a derivation is decided when all its choices are (:class:`Derivation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ess.space.genotype import (
    COMBINATIONS,
    IDENTITY_INTER,
    Edge,
    ESSGenotype,
    InterGenotype,
    InterNode,
    IntraGenotype,
)
from ess.space.notation import node_name, slot_name
from ess.space.ops import PRIMITIVES, ZERO
from ess.space.tables import (
    BRANCHES,
    PARTS,
    as_rows,
    inter_from_dict,
    intra_edge_count,
    intra_from_dict,
    intra_offset,
    part_ops,
)

_ZERO_COL = PRIMITIVES.index(ZERO)


@dataclass(frozen=True)
class DeriveRule:
    """The knobs of the derivation (see the module docstring).

    ``drop_ratio``: an inter branch says no when its ``none`` weight exceeds ``drop_ratio`` times its best
    choice (``inf``: never). The default, 1.5, asks "no" to be as clear as a decided choice: at 1, nearly
    uniform weights (an undecided search) would drop one branch in five by chance, since ``none`` is one of
    the five ops of every row. ``decision_ratio``: a choice is decided when its weight is at least this many
    times the runner-up's. ``merge_duplicates``: merge identical inter nodes (else keep them, reported).
    """

    drop_ratio: float = 1.5
    decision_ratio: float = 1.5
    merge_duplicates: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.drop_ratio, (int, float)) and self.drop_ratio > 0):
            raise ValueError(f"drop_ratio: expected a positive number (inf: never drop), got {self.drop_ratio!r}")
        if not (isinstance(self.decision_ratio, (int, float)) and math.isfinite(self.decision_ratio)
                and self.decision_ratio >= 1):
            raise ValueError(f"decision_ratio: expected a finite number >= 1, got {self.decision_ratio!r}")


DEFAULT_RULE = DeriveRule()


@dataclass(frozen=True)
class Choice:
    """One decision of the derivation: what was chosen, how strongly, against what."""

    part: str            # intra, history or input
    where: str           # "s3" (intra), "s1.a" (inter branch), "combination" (ess.space.notation.slot_name)
    op: str              # the chosen op; "none" when an inter branch says no; the combination's name
    pred: int            # the chosen predecessor in the supernet's numbering (-1: none or combination)
    weight: float
    runner_up: float     # the best alternative's weight (0.0 when there is none)
    uniform: float       # the weight of this choice if its distribution were uniform
    decided: bool
    source: str = ""     # the predecessor's name ("s1", "h_{t-2}"; "" for none or the combination)

    @property
    def margin(self) -> float:
        """``weight / runner_up`` (inf without an alternative)."""
        return self.weight / self.runner_up if self.runner_up > 0 else math.inf

    @property
    def over_uniform(self) -> float:
        """``weight / uniform``."""
        return self.weight / self.uniform if self.uniform > 0 else math.inf

    @property
    def chosen(self) -> str:
        """What was chosen, for people: ``relu(s1)``, ``none``, ``product``."""
        return f"{self.op}({self.source})" if self.source else self.op

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.part, "where": self.where, "op": self.op, "pred": self.pred, "source": self.source,
                "weight": self.weight,
                "runner_up": self.runner_up, "uniform": self.uniform, "margin": _finite(self.margin),
                "over_uniform": _finite(self.over_uniform), "decided": self.decided}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Derivation:
    """A derived genotype with every choice behind it and what the rules did (dropped, merged nodes)."""

    genotype: ESSGenotype
    choices: tuple[Choice, ...] = ()
    notes: tuple[str, ...] = ()
    rule: DeriveRule = field(default=DEFAULT_RULE)

    def of(self, part: str) -> list[Choice]:
        return [c for c in self.choices if c.part == part]

    @property
    def searched_parts(self) -> list[str]:
        return [p for p in PARTS if self.of(p)]

    def decided_share(self, part: str | None = None) -> float:
        """Share of decided choices (of ``part``, or of all); 1.0 when nothing was searched."""
        chosen = self.of(part) if part else list(self.choices)
        return sum(c.decided for c in chosen) / len(chosen) if chosen else 1.0

    @property
    def decided(self) -> bool:
        return all(c.decided for c in self.choices)

    def undecided(self) -> list[Choice]:
        return [c for c in self.choices if not c.decided]

    def summary(self) -> str:
        """One line: decided or not, and the weakest choice per searched part."""
        if not self.choices:
            return "nothing searched"
        parts = []
        for part in self.searched_parts:
            weakest = min(self.of(part), key=lambda c: c.margin)
            parts.append(f"{part} {self.decided_share(part):.0%} decided (weakest {weakest.where}: "
                         f"{weakest.chosen} x{weakest.margin:.2f} its runner-up)")
        verdict = "decided" if self.decided else f"UNDECIDED (rule: every choice >= {self.rule.decision_ratio:g}x " \
                                                  "its runner-up)"
        return f"{verdict}; " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"genotype": self.genotype.to_dict(), "decided": self.decided,
                "decision_ratio": self.rule.decision_ratio, "drop_ratio": _finite(float(self.rule.drop_ratio)),
                "decided_share": {p: self.decided_share(p) for p in self.searched_parts},
                "choices": [c.to_dict() for c in self.choices], "notes": list(self.notes)}


# --------------------------------------------------------------------------------------------------
# Ranking the candidates of one choice


def _ranked(rows: Sequence[Sequence[float]], row_ids: Sequence[int],
            cols: Sequence[int]) -> list[tuple[float, int, int]]:
    """``(weight, j, col)`` of every non-``none`` candidate, best first; ties: lowest ``j``, then first op."""
    cands = [(rows[j][k], j, k) for j in row_ids for k in cols if k != _ZERO_COL]
    return sorted(cands, key=lambda c: (-c[0], c[1], c[2]))


def best_edge(table: Any) -> Edge:
    """The best ``(op, predecessor)`` of a table whose rows are predecessors, never the zero op.

    Equals DARTS's rule (predecessor with the highest best non-``none`` weight, then that op); ties go
    to the lowest predecessor, then the first op in :data:`PRIMITIVES` order.
    """
    rows = as_rows(table)
    if not rows:
        raise ValueError("an empty table has no edge to choose")
    w, j, k = _ranked(rows, range(len(rows)), range(len(PRIMITIVES)))[0]
    return Edge(PRIMITIVES[k], j)


def _cols(ops: Sequence[str] | None) -> list[int]:
    return [PRIMITIVES.index(op) for op in (ops or PRIMITIVES)]


# --------------------------------------------------------------------------------------------------
# Intra cell


def _intra(table: Any, steps: int | None, concat: Sequence[int] | None, ops: Sequence[str] | None,
           rule: DeriveRule, part: str = "intra") -> tuple[IntraGenotype, list[Choice]]:
    rows = as_rows(table)
    if steps is None:
        steps = int(round((math.sqrt(8 * len(rows) + 1) - 1) / 2))
    if len(rows) != intra_edge_count(steps):
        raise ValueError(f"intra table: expected {intra_edge_count(steps)} rows for {steps} nodes, got {len(rows)}")
    cols = _cols(ops)
    edges, choices = [], []
    for i in range(1, steps + 1):
        node_rows = rows[intra_offset(i): intra_offset(i) + i]
        ranked = _ranked(node_rows, range(i), cols)
        w, j, k = ranked[0]
        runner = ranked[1][0] if len(ranked) > 1 else 0.0
        edges.append(Edge(PRIMITIVES[k], j))
        choices.append(Choice(part, slot_name("intra", i), PRIMITIVES[k], j, w, runner, 1.0 / len(cols),
                              w >= rule.decision_ratio * runner, node_name("intra", j)))
    genotype = IntraGenotype(tuple(edges), tuple(concat) if concat is not None else tuple(range(1, steps + 1)))
    return genotype, choices


def derive_intra(table: Any, steps: int | None = None, concat: Sequence[int] | None = None,
                 ops: Sequence[str] | None = None) -> IntraGenotype:
    """DARTS derivation of the intra cell from its ``steps (steps+1)/2 x 5`` table (rows ``intra_rows``).

    ``concat`` defaults to every node ``1..steps`` (the search cell's output is the mean of all nodes);
    ``ops`` limits the candidates (default: every op).
    """
    return _intra(table, steps, concat, ops, DEFAULT_RULE)[0]


# --------------------------------------------------------------------------------------------------
# Inter cells


def derive_combination(weights: Any) -> str:
    """Argmax of the two combination weights (order :data:`COMBINATIONS`: product, sum); ties: product."""
    values = _combination_values(weights)
    return COMBINATIONS[max(range(len(values)), key=lambda i: (values[i], -i))]


def _combination_values(weights: Any) -> list[float]:
    if isinstance(weights, Mapping):
        values = [float(weights[name]) for name in COMBINATIONS]
    else:
        values = [float(v) for v in (weights.tolist() if hasattr(weights, "tolist") else weights)]
    if len(values) != len(COMBINATIONS):
        raise ValueError(f"combination weights: expected {len(COMBINATIONS)} ({', '.join(COMBINATIONS)}), "
                         f"got {len(values)}")
    return values


#: ``choose(k, side, visible) -> (op, j, says_no, choice)``: one inter branch's decision among the rows
#: ``visible`` (inputs, surviving nodes and their merged duplicates, in the supernet's numbering).
ChooseBranch = Callable[[int, str, list[int]], tuple[str, int, bool, Choice]]


def build_inter(n_nodes: int, m: int, combination: str, residual: bool, choose: ChooseBranch, rule: DeriveRule,
                part: str) -> tuple[InterGenotype, list[Choice], list[str]]:
    """The structure rules of the module docstring (drop, renumber, merge, identity) around ``choose``."""
    choices: list[Choice] = []
    notes: list[str] = []
    alias: dict[int, int] = {j: j for j in range(m)}      # supernet index -> the index whose value it has
    survivors: list[int] = []                              # supernet indices of the kept nodes, in order
    kept_nodes: dict[int, tuple[Edge, Edge]] = {}
    for k in range(n_nodes):
        index, visible = m + k, sorted(alias)
        edges, says_no = [], []
        for side in BRANCHES:
            op, j, no, choice = choose(k, side, visible)
            choices.append(choice)
            edges.append(Edge(op, alias[j]))
            says_no.append(no)
        dropped = any(says_no) if combination == "product" else all(says_no)
        name = node_name(part, index, m)
        if dropped:
            notes.append(f"{part}: {name} dropped (branch {'/'.join(s for s, n in zip(BRANCHES, says_no) if n)} "
                         "says none)")
            continue
        if any(says_no):
            notes.append(f"{part}: sum node {name} kept although branch {BRANCHES[says_no.index(True)]} says none")
        twin = next((q for q in survivors if kept_nodes[q] == tuple(edges)), None)
        if twin is not None and rule.merge_duplicates:
            alias[index] = twin
            notes.append(f"{part}: {name} duplicates {node_name(part, twin, m)}: merged")
            continue
        if twin is not None:
            notes.append(f"{part}: {name} duplicates {node_name(part, twin, m)} (kept: merge_duplicates is off)")
        alias[index] = index
        survivors.append(index)
        kept_nodes[index] = (edges[0], edges[1])
    if not survivors:
        if n_nodes:
            notes.append(f"{part}: every node dropped: the identity")
        return IDENTITY_INTER, choices, notes
    renumber = {j: j for j in range(m)} | {s: m + q for q, s in enumerate(survivors)}
    nodes = tuple(InterNode(*(Edge(e.op, renumber[e.pred]) for e in kept_nodes[s])) for s in survivors)
    return InterGenotype(m=m, nodes=nodes, combination=combination, residual=residual), choices, notes


def _inter(branch_tables: Sequence[Any], m: int, combination: str, residual: bool, combination_weights: Any,
           scope: str, ops: Sequence[str] | None, rule: DeriveRule,
           part: str) -> tuple[InterGenotype, list[Choice], list[str]]:
    if len(branch_tables) % 2:
        raise ValueError(f"inter tables: expected two branch tables per node, got {len(branch_tables)}")
    choices: list[Choice] = []
    if combination == "search":
        if combination_weights is None:
            raise ValueError("combination 'search' needs the combination weights")
        values = _combination_values(combination_weights)
        combination = derive_combination(values)
        best = COMBINATIONS.index(combination)
        choices.append(Choice(part, "combination", combination, -1, values[best], values[1 - best],
                              1.0 / len(values), values[best] >= rule.decision_ratio * values[1 - best]))
    cols = _cols(ops)
    can_say_no = _ZERO_COL in cols
    tables = []
    for k in range(len(branch_tables) // 2):
        for side, table in zip(BRANCHES, branch_tables[2 * k: 2 * k + 2]):
            rows = as_rows(table)
            if len(rows) != m + k:
                raise ValueError(f"inter node {k} branch {side}: expected {m + k} rows (predecessors), got {len(rows)}")
            tables.append(rows)

    def choose(k: int, side: str, visible: list[int]) -> tuple[str, int, bool, Choice]:
        rows = tables[2 * k + BRANCHES.index(side)]
        ranked = _ranked(rows, visible, cols)
        w, j, col = ranked[0]
        zero = max(rows[v][_ZERO_COL] for v in visible) if can_say_no else 0.0
        no = can_say_no and zero > rule.drop_ratio * w
        uniform = 1.0 / (len(cols) * (m + k)) if scope == "node" else 1.0 / len(cols)
        where = slot_name(part, m + k, m, side)
        if no:
            choice = Choice(part, where, ZERO, -1, zero, w, uniform, zero >= rule.decision_ratio * w)
        else:
            runner = max(ranked[1][0] if len(ranked) > 1 else 0.0, zero)
            choice = Choice(part, where, PRIMITIVES[col], j, w, runner, uniform, w >= rule.decision_ratio * runner,
                            node_name(part, j, m))
        return PRIMITIVES[col], j, no, choice

    genotype, found, notes = build_inter(len(tables) // 2, m, combination, residual, choose, rule, part)
    return genotype, choices + found, notes


def derive_inter(branch_tables: Sequence[Any], m: int, combination: str = "product", residual: bool = True,
                 combination_weights: Any = None, *, scope: str = "node", ops: Sequence[str] | None = None,
                 rule: DeriveRule = DEFAULT_RULE, part: str = "history") -> InterGenotype:
    """Derive one inter cell (``part``: history or input): ``branch_tables`` lists node 0's a, b tables, then
    node 1's, ...

    The table of node ``k`` has ``m + k`` rows (predecessor indices). ``combination='search'`` needs
    ``combination_weights`` and derives their argmax.
    """
    return _inter(branch_tables, m, combination, residual, combination_weights, scope, ops, rule, part)[0]


# --------------------------------------------------------------------------------------------------
# Whole genotypes


def derivation(arch_weights: Mapping[str, Any], rule: DeriveRule = DEFAULT_RULE) -> Derivation:
    """The genotype of a JSON arch-weights dict (:meth:`ess.supernet.SearchModel.arch_weights`) and its reasons.

    Searched parts are derived by the rules above; fixed parts (identity inter cells in ``intra`` mode,
    the given intra cell in ``inter`` mode) are taken as stored.
    """
    choices: list[Choice] = []
    notes: list[str] = []
    entry = arch_weights["intra"]
    if entry["searched"]:
        intra, found = _intra(entry["weights"], entry["steps"], None, part_ops(entry), rule)
        choices += found
    else:
        intra = intra_from_dict(entry["genotype"])
    inters = []
    for part in ("history", "input"):
        entry = arch_weights[part]
        if entry["searched"]:
            tables = [t["weights"] for t in entry["branches"]]
            inter, found, said = _inter(tables, entry["m"], entry["combination"], entry["residual"],
                                        entry.get("combination_weights"), entry.get("scope", "node"),
                                        part_ops(entry), rule, part)
            inters.append(inter)
            choices += found
            notes += said
        else:
            inters.append(inter_from_dict(entry["genotype"]))
    genotype = ESSGenotype(intra=intra, history=inters[0], input=inters[1])
    return Derivation(genotype, tuple(choices), tuple(notes), rule)


def derive_genotype(arch_weights: Mapping[str, Any], rule: DeriveRule = DEFAULT_RULE) -> ESSGenotype:
    """The discrete genotype of a JSON arch-weights dict (see :func:`derivation`)."""
    return derivation(arch_weights, rule).genotype


def identity_share(genotype: ESSGenotype, parts: Sequence[str] = PARTS) -> float:
    """Share of the genotype's edges (intra edges, both branches of every inter node) whose op is ``identity``.

    The collapse signal of reference.md section 5 for this space: ``identity`` still has its weight matrix
    (``s_j W``), so this is not a share of parameter-free ops; ``none`` is never an edge of a genotype.
    """
    edges: list[Edge] = []
    for part in parts:
        if part == "intra":
            edges.extend(genotype.intra.recurrent)
        elif part in ("history", "input"):
            edges.extend(e for node in getattr(genotype, part).nodes for e in (node.a, node.b))
        else:
            raise ValueError(f"unknown genotype part {part!r} (known: {', '.join(PARTS)})")
    return sum(e.op == "identity" for e in edges) / len(edges) if edges else 0.0


__all__ = [
    "DEFAULT_RULE", "ChooseBranch", "Choice", "DeriveRule", "Derivation", "best_edge", "build_inter", "derivation",
    "derive_combination",
    "derive_genotype", "derive_inter", "derive_intra", "identity_share",
]
