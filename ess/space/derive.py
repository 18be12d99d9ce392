"""Derivation of a discrete :class:`~ess.space.ESSGenotype` from architecture weights.

Everything here is a pure function over plain weight tables (nested lists of floats, NumPy arrays or
tensors whose columns follow :data:`ess.space.ops.PRIMITIVES`), so tests and analysis notebooks can build
tables by hand, and a search log written as JSON can be re-derived without a model.

Row layouts (shared by the search cells in :mod:`ess.supernet` and :mod:`ess.supernet.reference`):

* intra cell (DARTS, reference.md section 3): one row per edge ``(i, j)``, node ``i = 1..steps``
  outer, predecessor ``j = 0..i-1`` inner (:func:`intra_rows`); ``steps (steps + 1) / 2`` rows.
* inter cell (ESS, reference.md section 2): one row per ``(k, branch, j)``, node ``k = 0..n-1`` outer,
  branch ``a`` then ``b``, predecessor index ``j = 0..m+k-1`` inner (:func:`inter_rows`).

Derivation rules:

* intra node ``i``: the predecessor whose best non-``none`` op weight is highest, then that op (DARTS's
  ``_parse``); ties go to the lowest predecessor, then the first op in :data:`PRIMITIVES` order.
* inter branch: its best ``(predecessor, op)`` excluding ``none``. For softmax scope ``edge`` (one
  softmax per predecessor) the DARTS rule applies to the branch's table; maximising over pairs is the
  same rule (max over ``j`` of the max over ops), so one function serves both scopes.
* combination: the argmax of the two combination weights (order :data:`COMBINATIONS`) if searched.

The JSON form of all architecture weights (:meth:`ess.supernet.SearchModel.arch_weights`) is built by
:func:`intra_table` / :func:`inter_table` and read back by :func:`derive_genotype` and
:func:`arch_entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ess.space.genotype import COMBINATIONS, Edge, ESSGenotype, InterGenotype, InterNode, IntraGenotype
from ess.space.ops import OPS, PRIMITIVES, ZERO

FORMAT = "ess-arch-weights/1"
BRANCHES: tuple[str, ...] = ("a", "b")
SCOPES: tuple[str, ...] = ("node", "edge")
_ZERO_COL = PRIMITIVES.index(ZERO)

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


def best_edge(table: Any) -> Edge:
    """The best ``(op, predecessor)`` of a table whose rows are predecessors, never the zero op.

    Equals DARTS's rule (predecessor with the highest best non-``none`` weight, then that op); ties go
    to the lowest predecessor, then the first op in :data:`PRIMITIVES` order.
    """
    rows = as_rows(table)
    if not rows:
        raise ValueError("an empty table has no edge to choose")
    best: tuple[float, int, int] | None = None
    for j, row in enumerate(rows):
        for k, w in enumerate(row):
            if k == _ZERO_COL:
                continue
            if best is None or w > best[0]:
                best = (w, j, k)
    assert best is not None
    return Edge(PRIMITIVES[best[2]], best[1])


def derive_intra(table: Any, steps: int | None = None, concat: Sequence[int] | None = None) -> IntraGenotype:
    """DARTS derivation of the intra cell from its ``steps (steps+1)/2 x 5`` table (rows :func:`intra_rows`).

    ``concat`` defaults to every node ``1..steps`` (the search cell's output is the mean of all nodes).
    """
    rows = as_rows(table)
    if steps is None:
        steps = int(round((math.sqrt(8 * len(rows) + 1) - 1) / 2))
    if len(rows) != intra_edge_count(steps):
        raise ValueError(f"intra table: expected {intra_edge_count(steps)} rows for {steps} nodes, got {len(rows)}")
    edges = tuple(best_edge(rows[intra_offset(i): intra_offset(i) + i]) for i in range(1, steps + 1))
    return IntraGenotype(edges, tuple(concat) if concat is not None else tuple(range(1, steps + 1)))


def derive_combination(weights: Any) -> str:
    """Argmax of the two combination weights (order :data:`COMBINATIONS`: product, sum); ties: product."""
    if isinstance(weights, Mapping):
        values = [float(weights[name]) for name in COMBINATIONS]
    else:
        values = [float(v) for v in (weights.tolist() if hasattr(weights, "tolist") else weights)]
    if len(values) != len(COMBINATIONS):
        raise ValueError(f"combination weights: expected {len(COMBINATIONS)} ({', '.join(COMBINATIONS)}), "
                         f"got {len(values)}")
    return COMBINATIONS[max(range(len(values)), key=lambda i: (values[i], -i))]


def derive_inter(branch_tables: Sequence[Any], m: int, combination: str = "product", residual: bool = True,
                 combination_weights: Any = None) -> InterGenotype:
    """Derive one inter cell: ``branch_tables`` lists node 0's a, b tables, then node 1's, ...

    The table of node ``k`` has ``m + k`` rows (predecessor indices). ``combination='search'`` needs
    ``combination_weights`` and derives their argmax.
    """
    if len(branch_tables) % 2:
        raise ValueError(f"inter tables: expected two branch tables per node, got {len(branch_tables)}")
    nodes = []
    for k in range(len(branch_tables) // 2):
        edges = []
        for b, table in zip(BRANCHES, branch_tables[2 * k: 2 * k + 2]):
            rows = as_rows(table)
            if len(rows) != m + k:
                raise ValueError(f"inter node {k} branch {b}: expected {m + k} rows (predecessors), got {len(rows)}")
            edges.append(best_edge(rows))
        nodes.append(InterNode(*edges))
    if combination == "search":
        if combination_weights is None:
            raise ValueError("combination 'search' needs the combination weights")
        combination = derive_combination(combination_weights)
    return InterGenotype(m=m, nodes=tuple(nodes), combination=combination, residual=residual)


def parameter_free_share(genotype: ESSGenotype, parts: Sequence[str] = ("intra", "history", "input")) -> float:
    """Share of the genotype's edges whose op is parameter-free (``OPS[op].parameter_free``).

    The collapse signal of reference.md section 5: it grows when the search drifts to identity/none.
    Edges are the intra cell's ``steps`` edges and both branches of every inter node, over ``parts``.
    """
    edges: list[Edge] = []
    for part in parts:
        if part == "intra":
            edges.extend(genotype.intra.recurrent)
        elif part in ("history", "input"):
            inter = genotype.history if part == "history" else genotype.input
            edges.extend(e for node in inter.nodes for e in (node.a, node.b))
        else:
            raise ValueError(f"unknown genotype part {part!r} (known: intra, history, input)")
    if not edges:
        return 0.0
    return sum(OPS[e.op].parameter_free for e in edges) / len(edges)


# --------------------------------------------------------------------------------------------------
# The JSON form of all architecture weights


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


def intra_table(probs: Any, steps: int) -> dict[str, Any]:
    """The JSON entry of a searched intra cell: its softmax table with row and column labels."""
    rows = as_rows(probs)
    if len(rows) != intra_edge_count(steps):
        raise ValueError(f"intra table: expected {intra_edge_count(steps)} rows, got {len(rows)}")
    return {"searched": True, "steps": steps, "columns": list(PRIMITIVES),
            "rows": [f"{i}<-{j}" for i, j in intra_rows(steps)], "weights": rows}


def inter_table(branches: Sequence[Any], m: int, scope: str, combination: str, residual: bool,
                combination_weights: Any = None) -> dict[str, Any]:
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
            "residual": residual, "columns": list(PRIMITIVES), "branches": tables, "combination_weights": comb}


def derive_genotype(arch_weights: Mapping[str, Any]) -> ESSGenotype:
    """The discrete genotype of a JSON arch-weights dict (:meth:`ess.supernet.SearchModel.arch_weights`).

    Searched parts are derived by the rules above; fixed parts (identity inter cells in ``intra`` mode,
    the given intra cell in ``inter`` mode) are taken as stored.
    """
    intra_entry = arch_weights["intra"]
    if intra_entry["searched"]:
        intra = derive_intra(intra_entry["weights"], intra_entry["steps"])
    else:
        intra = intra_from_dict(intra_entry["genotype"])
    inters = []
    for part in ("history", "input"):
        entry = arch_weights[part]
        if entry["searched"]:
            tables = [t["weights"] for t in entry["branches"]]
            inters.append(derive_inter(tables, entry["m"], entry["combination"], entry["residual"],
                                       entry.get("combination_weights")))
        else:
            inters.append(inter_from_dict(entry["genotype"]))
    return ESSGenotype(intra=intra, history=inters[0], input=inters[1])


def entropy(dist: Sequence[float]) -> float:
    """Shannon entropy (nats) of one probability distribution."""
    return -sum(p * math.log(p) for p in dist if p > 0)


def distributions(arch_weights: Mapping[str, Any]) -> dict[str, list[list[float]]]:
    """Every softmax distribution of the searched parts, by part.

    Intra: one per edge (over the 5 ops). Inter, scope ``node``: one per branch (over all its
    ``(j, op)`` pairs); scope ``edge``: one per ``(branch, j)`` (over ops); plus the combination weights.
    """
    out: dict[str, list[list[float]]] = {}
    intra_entry = arch_weights["intra"]
    if intra_entry["searched"]:
        out["intra"] = [list(row) for row in intra_entry["weights"]]
    for part in ("history", "input"):
        entry = arch_weights[part]
        if not entry["searched"]:
            continue
        dists: list[list[float]] = []
        for t in entry["branches"]:
            if entry["scope"] == "node":
                dists.append([p for row in t["weights"] for p in row])
            else:
                dists.extend(list(row) for row in t["weights"])
        if entry.get("combination_weights"):
            dists.append([float(entry["combination_weights"][c]) for c in COMBINATIONS])
        out[part] = dists
    return out


def arch_entropy(arch_weights: Mapping[str, Any]) -> float:
    """Mean entropy (nats) over all softmax distributions of the searched parts (0 if none)."""
    dists = [d for part in distributions(arch_weights).values() for d in part]
    if not dists:
        return 0.0
    return sum(entropy(d) for d in dists) / len(dists)


__all__ = [
    "BRANCHES", "FORMAT", "SCOPES", "arch_entropy", "as_rows", "best_edge", "derive_combination",
    "derive_genotype", "derive_inter", "derive_intra", "distributions", "entropy", "fixed_part",
    "inter_from_dict", "inter_offset", "inter_row_count", "inter_rows", "inter_table", "inter_to_dict",
    "intra_edge_count", "intra_from_dict", "intra_offset", "intra_rows", "intra_table", "intra_to_dict",
    "parameter_free_share",
]


def arch_weight_rows(weights: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The architecture-weight tables (``arch_weights.json``) as one long table.

    One row per (part, node/edge, branch, op) with the softmax weight, so a table view can sort and
    filter it; parts fixed in the search mode contribute no rows.
    """
    rows: list[dict[str, Any]] = []
    for part in ("intra", "history", "input"):
        table = weights.get(part)
        if not isinstance(table, Mapping) or not table.get("searched"):
            continue
        columns = list(table.get("columns") or weights.get("columns") or [])
        if "rows" in table and "weights" in table:
            for edge, values in zip(table["rows"], table["weights"]):
                for op, w in zip(columns, values):
                    rows.append({"part": part, "edge": str(edge), "branch": "", "op": op, "weight": float(w)})
        for branch in table.get("branches", []) or []:
            for source, values in zip(branch.get("rows", []), branch.get("weights", [])):
                for op, w in zip(columns, values):
                    rows.append({"part": part, "edge": f"node {branch.get('node')} <- {source}",
                                 "branch": str(branch.get("branch", "")), "op": op, "weight": float(w)})
    return rows
