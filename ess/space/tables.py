"""The JSON form of architecture weights: row layouts, labelled softmax tables, their distributions.

Everything here is a pure function over plain weight tables (nested lists of floats, NumPy arrays or
tensors whose columns follow :data:`ess.space.ops.PRIMITIVES`), so tests and analysis notebooks can build
tables by hand, and a search log written as JSON can be read back without a model.

Row layouts (shared by the search cells in :mod:`ess.supernet` and :mod:`ess.supernet.reference`):

* intra cell (DARTS, reference.md section 3): one row per edge ``(i, j)``, node ``i = 1..steps``
  outer, predecessor ``j = 0..i-1`` inner (:func:`intra_rows`); ``steps (steps + 1) / 2`` rows.
* inter cell (ESS, reference.md section 2): one row per ``(k, branch, j)``, node ``k = 0..n-1`` outer,
  branch ``a`` then ``b``, predecessor index ``j = 0..m+k-1`` inner (:func:`inter_rows`).

Each searched part's entry also lists the ops its search may choose (``ops``): an op left out of a
part's candidate set (``SearchConfig.intra_ops`` / ``inter_ops``) has weight 0 in every row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ess.space.genotype import COMBINATIONS, Edge, InterGenotype, InterNode, IntraGenotype
from ess.space.notation import edge_name
from ess.space.ops import PRIMITIVES

FORMAT = "ess-arch-weights/1"
BRANCHES: tuple[str, ...] = ("a", "b")
SCOPES: tuple[str, ...] = ("node", "edge")
PARTS: tuple[str, ...] = ("intra", "history", "input")

Table = Sequence[Sequence[float]]


# --------------------------------------------------------------------------------------------------
# Row layouts


def intra_edge_count(steps: int) -> int:
    """Number of intra edges (rows of the intra table): ``steps (steps + 1) / 2`` (36 for 8 nodes)."""
    return steps * (steps + 1) // 2


def intra_rows(steps: int) -> list[tuple[int, int]]:
    """``(node i, predecessor j)`` of every intra row, node outer (1-based), predecessor inner."""
    return [(i, j) for i in range(1, steps + 1) for j in range(i)]


def intra_offset(i: int) -> int:
    """First row of node ``i`` (1-based) in the intra table."""
    return (i - 1) * i // 2


def inter_row_count(m: int, n_nodes: int) -> int:
    """Rows of one inter cell's table: ``2 * sum_k (m + k)``."""
    return 2 * sum(m + k for k in range(n_nodes))


def inter_rows(m: int, n_nodes: int) -> list[tuple[int, str, int]]:
    """``(node k, branch, predecessor j)`` of every inter row; node ``k`` sits at index ``m + k``."""
    return [(k, b, j) for k in range(n_nodes) for b in BRANCHES for j in range(m + k)]


def inter_offset(m: int, k: int) -> int:
    """First row of node ``k``'s branch ``a`` (its branch ``b`` follows after ``m + k`` rows)."""
    return 2 * sum(m + q for q in range(k))


# --------------------------------------------------------------------------------------------------
# Plain tables


def as_rows(table: Any) -> list[list[float]]:
    """A table (nested sequences, NumPy array or tensor) as a list of float rows."""
    if hasattr(table, "detach"):
        table = table.detach().cpu()
    if hasattr(table, "tolist"):
        table = table.tolist()
    rows = [[float(v) for v in row] for row in table]
    for r, row in enumerate(rows):
        if len(row) != len(PRIMITIVES):
            raise ValueError(f"row {r}: expected {len(PRIMITIVES)} op weights ({', '.join(PRIMITIVES)}), "
                             f"got {len(row)}")
    return rows


def intra_to_dict(genotype: IntraGenotype) -> dict[str, Any]:
    return {"recurrent": [[e.op, e.pred] for e in genotype.recurrent], "concat": list(genotype.concat)}


def intra_from_dict(data: Mapping[str, Any]) -> IntraGenotype:
    return IntraGenotype(tuple(Edge(op, pred) for op, pred in data["recurrent"]), tuple(data["concat"]))


def inter_to_dict(genotype: InterGenotype) -> dict[str, Any]:
    return {"m": genotype.m, "combination": genotype.combination, "residual": genotype.residual,
            "nodes": [{"a": [n.a.op, n.a.pred], "b": [n.b.op, n.b.pred]} for n in genotype.nodes]}


def inter_from_dict(data: Mapping[str, Any]) -> InterGenotype:
    nodes = tuple(InterNode(Edge(*n["a"]), Edge(*n["b"])) for n in data["nodes"])
    return InterGenotype(m=data["m"], nodes=nodes, combination=data["combination"], residual=data["residual"])


def fixed_part(genotype: IntraGenotype | InterGenotype) -> dict[str, Any]:
    """The JSON entry of a part that is not searched in the current mode: its fixed genotype."""
    if isinstance(genotype, IntraGenotype):
        return {"searched": False, "genotype": intra_to_dict(genotype)}
    return {"searched": False, "genotype": inter_to_dict(genotype)}


def _ops(ops: Sequence[str] | None) -> list[str]:
    return list(PRIMITIVES if ops is None else ops)


def intra_table(probs: Any, steps: int, ops: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON entry of a searched intra cell: its softmax table with row and column labels."""
    rows = as_rows(probs)
    if len(rows) != intra_edge_count(steps):
        raise ValueError(f"intra table: expected {intra_edge_count(steps)} rows, got {len(rows)}")
    return {"searched": True, "steps": steps, "columns": list(PRIMITIVES), "ops": _ops(ops),
            "rows": [f"{i}<-{j}" for i, j in intra_rows(steps)], "weights": rows}


def inter_table(branches: Sequence[Any], m: int, scope: str, combination: str, residual: bool,
                combination_weights: Any = None, ops: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON entry of a searched inter cell.

    ``branches[k]`` is node ``k``'s ``[2, m + k, 5]`` softmax weights (branch a, branch b). Each branch
    table's rows are labelled by predecessor index ``j`` (``j < m``: input ``j``, 0 the newest;
    ``j = m + q``: node ``q``). With scope ``node`` a whole branch table sums to 1, with ``edge`` each row.
    """
    tables = []
    for k, node in enumerate(branches):
        for b, table in zip(BRANCHES, node):
            rows = as_rows(table)
            tables.append({"node": k, "branch": b, "rows": list(range(m + k)), "weights": rows})
    comb = None
    if combination_weights is not None:
        values = combination_weights.tolist() if hasattr(combination_weights, "tolist") else combination_weights
        comb = {name: float(v) for name, v in zip(COMBINATIONS, values)}
    return {"searched": True, "m": m, "nodes": len(branches), "scope": scope, "combination": combination,
            "residual": residual, "columns": list(PRIMITIVES), "ops": _ops(ops), "branches": tables,
            "combination_weights": comb}


def part_ops(entry: Mapping[str, Any]) -> list[str]:
    """The ops a searched part chooses among (all of :data:`PRIMITIVES` for tables written before ``ops``)."""
    return list(entry.get("ops") or PRIMITIVES)


# --------------------------------------------------------------------------------------------------
# Distributions and entropy


def entropy(dist: Sequence[float]) -> float:
    """Shannon entropy (nats) of one probability distribution."""
    return -sum(p * math.log(p) for p in dist if p > 0)


def distributions(arch_weights: Mapping[str, Any]) -> dict[str, list[list[float]]]:
    """Every softmax distribution of the searched parts, by part, over the part's candidate ops only.

    Intra: one per edge (over its ops). Inter, scope ``node``: one per branch (over all its
    ``(j, op)`` pairs); scope ``edge``: one per ``(branch, j)`` (over ops); plus the combination weights.
    """
    out: dict[str, list[list[float]]] = {}
    for part in PARTS:
        entry = arch_weights[part]
        if not entry["searched"]:
            continue
        cols = [PRIMITIVES.index(op) for op in part_ops(entry)]
        if part == "intra":
            out[part] = [[row[c] for c in cols] for row in entry["weights"]]
            continue
        dists: list[list[float]] = []
        for t in entry["branches"]:
            if entry["scope"] == "node":
                dists.append([row[c] for row in t["weights"] for c in cols])
            else:
                dists.extend([row[c] for c in cols] for row in t["weights"])
        if entry.get("combination_weights"):
            dists.append([float(entry["combination_weights"][c]) for c in COMBINATIONS])
        out[part] = dists
    return out


def relative_entropy(dists: Sequence[Sequence[float]]) -> float:
    """Mean of ``H(d) / log |d|`` over distributions: 1 at uniform weights, 0 when every one is one-hot."""
    values = [entropy(d) / math.log(len(d)) for d in dists if len(d) > 1]
    return sum(values) / len(values) if values else 0.0


def arch_entropy(arch_weights: Mapping[str, Any]) -> float:
    """Mean relative entropy (:func:`relative_entropy`) over the searched parts (0 if none).

    Each part counts once, whatever the size of its distributions (5 intra ops, ``5 (m + k)`` inter
    pairs), so the number reads the same for every mode: 1 = undecided, 0 = fully decided.
    """
    parts = distributions(arch_weights)
    if not parts:
        return 0.0
    return sum(relative_entropy(d) for d in parts.values()) / len(parts)


# --------------------------------------------------------------------------------------------------
# The long table (for people: edges named as in the pictures)


def _intra_steps(entry: Mapping[str, Any]) -> int:
    """The node count of an intra table: its ``steps``, else from its row count ``steps (steps + 1) / 2``."""
    if entry.get("steps") is not None:
        return int(entry["steps"])
    return int(round((math.sqrt(8 * len(entry["weights"]) + 1) - 1) / 2))


def arch_weight_rows(weights: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The architecture-weight tables (``arch_weights.json``) as one long table.

    One row per (part, edge, branch, op) with the softmax weight, so a table view can sort and filter
    it; edges are named by :func:`ess.space.notation.edge_name` from the row layouts above (``s3 <- s1``,
    ``s2 <- h_{t-3}`` with branch ``a``); parts fixed in the search mode contribute no rows.
    """
    rows: list[dict[str, Any]] = []
    for part in PARTS:
        table = weights.get(part)
        if not isinstance(table, Mapping) or not table.get("searched"):
            continue
        columns = list(table.get("columns") or weights.get("columns") or [])
        if "weights" in table and "branches" not in table:
            edges = intra_rows(_intra_steps(table))
            if len(edges) != len(table["weights"]):
                raise ValueError(f"{part} table: {len(table['weights'])} rows is not a whole number of nodes")
            for (i, j), values in zip(edges, table["weights"]):
                for op, w in zip(columns, values):
                    rows.append({"part": part, "edge": edge_name(part, i, j), "branch": "", "op": op,
                                 "weight": float(w)})
        for branch in table.get("branches", []) or []:
            k, sources = int(branch["node"]), branch.get("weights", [])
            m = int(table.get("m", len(sources) - k))   # node k reads m + k predecessors
            for j, values in enumerate(sources):
                for op, w in zip(columns, values):
                    rows.append({"part": part, "edge": edge_name(part, m + k, j, m),
                                 "branch": str(branch.get("branch", "")), "op": op, "weight": float(w)})
    return rows


__all__ = [
    "BRANCHES", "FORMAT", "PARTS", "SCOPES", "arch_entropy", "arch_weight_rows", "as_rows", "distributions",
    "entropy", "fixed_part",
    "inter_from_dict", "inter_offset", "inter_row_count", "inter_rows", "inter_table", "inter_to_dict",
    "intra_edge_count", "intra_from_dict", "intra_offset", "intra_rows", "intra_table", "intra_to_dict",
    "part_ops", "relative_entropy",
]
