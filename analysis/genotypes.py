"""Genotype tables of an ablation: op frequencies, predecessor frequencies, the ranking.

* :func:`rank_genotypes`: the derived genotypes, best mean first.
* :func:`op_frequencies` / :func:`predecessor_frequencies`: how often each op / predecessor is chosen
  in the final genotypes of an arm (:mod:`analysis.arms`; searched parts only: the fixed intra cell of
  ``inter`` mode and the identity inter cells of ``intra`` mode are not choices).

Runs without a readable final genotype are left out with an :class:`~analysis.errors.AnalysisWarning`
naming them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pandas as pd

from analysis.arms import (
    ARM,
    LIST_LIMIT,
    arm_groups,
    arm_namer,
    check_by,
    is_missing,
    present,
    run_name,
    sorted_arms,
)
from analysis.errors import AnalysisWarning, MissingMetricError
from ess.errors import ESSError
from ess.space.derive import identity_share
from ess.space.description import describe
from ess.space.notation import node_name
from ess.space.ops import PRIMITIVES, ZERO
from ess.space.refs import load_genotype
from ess.supernet import MODES

#: the genotype parts: the intra cell, the history inter cell, the input inter cell
PARTS = ("intra", "history", "input")


def parse_genotype(text: Any) -> Any:
    """An :class:`ess.space.ESSGenotype` from JSON text or a built-in name; None when it is not one."""
    if is_missing(text) or not str(text).strip():
        return None
    try:
        return load_genotype(str(text).strip())
    except ESSError:
        return None


def searched_parts(mode: Any) -> tuple[str, ...]:
    """The genotype parts a search mode chooses (:data:`ess.supernet.MODES`); all parts for an unknown mode."""
    spec = MODES.get(mode) if isinstance(mode, str) else None
    if spec is None:
        return PARTS
    return (("intra",) if spec.searches_intra else ()) + (("history", "input") if spec.searches_inter else ())


def _pred_name(part: str, pred: int, m: int) -> str:
    return node_name(part, pred, m)


def genotype_edges(genotype: Any, parts: Sequence[str] = PARTS) -> list[dict[str, Any]]:
    """The chosen edges of ``genotype`` in ``parts``: one dict per edge with ``part``, ``node``, ``branch``,
    ``op``, ``pred`` and ``pred_name``.

    Names are the pictures' (:mod:`ess.space.notation`): intra states ``s1 ... sN`` read ``s0`` (the
    initial state) or an earlier state; inter nodes ``s1, s2 ...`` with branches ``a`` and ``b`` read the
    inputs (``h_{t-1}`` ... for the history cell, ``x_t``, ``x_{t-1}`` ... for the input cell) or a node.
    """
    edges = []
    for part in parts:
        if part == "intra":
            for i, edge in enumerate(genotype.intra.recurrent, start=1):
                edges.append({"part": part, "node": _pred_name(part, i, 0), "branch": "", "op": edge.op,
                              "pred": edge.pred, "pred_name": _pred_name(part, edge.pred, 0)})
        else:
            inter = genotype.history if part == "history" else genotype.input
            for k, node in enumerate(inter.nodes, start=1):
                for branch, edge in (("a", node.a), ("b", node.b)):
                    edges.append({"part": part, "node": f"s{k}", "branch": branch, "op": edge.op,
                                  "pred": edge.pred, "pred_name": _pred_name(part, edge.pred, inter.m)})
    return edges


def _edge_table(summary: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One row per chosen edge of every trial's final genotype (searched parts only), with the arm."""
    if "genotype" not in summary:
        raise MissingMetricError("genotype: the runs carry no genotypes")
    rows, unreadable = [], []
    for _, trial in summary.iterrows():
        if str(trial.get("cell")) == "lstm":   # a baseline whose cell is no genotype: nothing is missing
            continue
        genotype = parse_genotype(trial.get("genotype"))
        if genotype is None:
            unreadable.append(run_name(trial))
            continue
        arm = {k: trial[k] for k in by}
        for edge in genotype_edges(genotype, searched_parts(trial.get("mode"))):
            rows.append({**arm, "run_id": trial.get("run_id"), **edge})
    if unreadable:
        if len(unreadable) == len(summary):
            raise MissingMetricError(f"genotype: none of the {len(summary)} runs has a final genotype "
                                     f"(first: run {unreadable[0]})")
        warnings.warn(f"{len(unreadable)} run(s) have no readable final genotype: "
                      f"{', '.join(unreadable[:LIST_LIMIT])}; left out of the genotype tables",
                      AnalysisWarning, stacklevel=3)
    return pd.DataFrame(rows, columns=[*by, "run_id", "part", "node", "branch", "op", "pred", "pred_name"])


def op_frequencies(summary: pd.DataFrame, by: Sequence[str] = ARM) -> pd.DataFrame:
    """How often each op is chosen in the final genotypes of each arm, per part.

    Columns: the arm, ``part`` (intra, history, input), ``op``, ``count`` (edges with that op over the
    arm's trials), ``share`` (count over the part's edges in the arm: each (arm, part) sums to 1) and
    ``trials``. Every op that can be chosen is listed, with 0 when it never was.
    """
    by = check_by(summary, by)
    edges = _edge_table(summary, by)
    ops = [op for op in PRIMITIVES if op != ZERO]
    name = arm_namer(summary, by)
    out = []
    for key, rows in arm_groups(edges, by):
        for part in PARTS:
            part_rows = rows[rows["part"] == part]
            if not len(part_rows):
                continue
            total, trials = len(part_rows), part_rows["run_id"].nunique()
            for op in ops + sorted(set(part_rows["op"]) - set(ops)):
                count = int((part_rows["op"] == op).sum())
                out.append({**dict(zip(by, key)), "arm": name(key), "part": part, "op": op,
                            "count": count, "share": count / total, "trials": trials})
    return pd.DataFrame(out, columns=list(dict.fromkeys([*by, "arm", "part", "op", "count", "share", "trials"])))


def predecessor_frequencies(summary: pd.DataFrame, by: Sequence[str] = ARM) -> pd.DataFrame:
    """How often each predecessor feeds each node in the final genotypes of each arm.

    Columns: the arm, ``part``, ``node`` (``node 1`` ... for the intra cell, ``s1`` ... for the inter
    cells), ``pred`` (index), ``pred_name`` (``s0``, ``h_{t-1}``, ``x_t``, ``s1`` ...), ``count``
    and ``share`` (over the node's incoming edges in the arm; the two branches of an inter node both count).
    """
    by = check_by(summary, by)
    edges = _edge_table(summary, by)
    if not len(edges):
        return pd.DataFrame(columns=list(dict.fromkeys([*by, "arm", "part", "node", "pred", "pred_name", "count",
                                                        "share"])))
    keys = [*by, "part", "node", "pred", "pred_name"]
    counts = edges.groupby(keys, dropna=False, sort=False).size().rename("count").reset_index()
    totals = edges.groupby([*by, "part", "node"], dropna=False, sort=False).size().rename("total").reset_index()
    table = counts.merge(totals, on=[*by, "part", "node"], how="left")
    table["share"] = table["count"] / table["total"]
    name = arm_namer(summary, by)
    names = [name(r) for r in table[by].to_dict(orient="records")] if by else "all"
    if "arm" in by:   # a study's arms are their own column
        table["arm"] = names
    else:
        table.insert(len(by), "arm", names)
    part_order = {p: i for i, p in enumerate(PARTS)}
    table["_p"] = table["part"].map(part_order)
    table["_n"] = table["node"].str.extract(r"(\d+)$", expand=False).astype(int)
    table = sorted_arms(table.sort_values(["_p", "_n", "pred"], kind="stable"), by)
    return table.drop(columns=["_p", "_n", "total"])


def rank_genotypes(summary: pd.DataFrame, value: str = "final_valid_ppl", *, higher_is_better: bool = False,
                   by: Sequence[str] = ARM, strict: bool = False) -> pd.DataFrame:
    """The distinct final genotypes ranked by their mean ``value`` over the trials that derived them.

    Columns: ``rank``, ``mean``, ``best``, ``n`` (trials), ``arms`` and ``runs`` that found it,
    ``identity_share`` (of its edges, :func:`ess.space.derive.identity_share`), ``describe`` (the
    compact form) and ``genotype`` (JSON). Lower is better unless ``higher_is_better``.
    """
    by = [k for k in by if k in summary.columns]
    rows = present(summary, value, strict=strict, what="the genotype ranking")
    rows = rows[rows["genotype"].map(lambda g: parse_genotype(g) is not None)] if "genotype" in rows else rows[:0]
    if not len(rows):
        raise MissingMetricError("genotype: no run with a final genotype to rank")
    name = arm_namer(summary, by)
    out = []
    for text, group in rows.groupby("genotype", sort=False):
        genotype = parse_genotype(text)
        values = group[value].astype(float)
        out.append({"mean": float(values.mean()), "best": float(values.max() if higher_is_better else values.min()),
                    "n": len(group), "arms": "; ".join(sorted({name(r) for r in group[by].to_dict(orient="records")})),
                    "runs": ", ".join(str(r) for r in group["run_name"]) if "run_name" in group else "",
                    "identity_share": identity_share(genotype), "describe": describe(genotype),
                    "genotype": genotype.to_json(None)})
    table = pd.DataFrame(out).sort_values(["mean", "n"], ascending=[not higher_is_better, False], kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    table.insert(1, "metric", value)
    return table.reset_index(drop=True)


__all__ = [
    "PARTS", "genotype_edges", "op_frequencies", "parse_genotype", "predecessor_frequencies", "rank_genotypes",
    "searched_parts",
]
