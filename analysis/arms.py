"""The arms of an ablation: their names, their grouping, the trials that carry a metric.

An *arm* is one setting of the ablated factors, by default ``(mode, steps, n_inter, m)``; the seeds
of an arm are its replicates. Every function takes ``by`` to group differently (``("mode",)``).

Runs that lack the metric in question are left out with an :class:`~analysis.errors.AnalysisWarning`
naming them (``strict=True`` raises :class:`~analysis.errors.MissingMetricError` instead).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.errors import AnalysisError, AnalysisWarning, MissingMetricError

#: the default arm: search mode and node counts (intra steps, inter nodes, inter window)
ARM: tuple[str, ...] = ("mode", "steps", "n_inter", "m")
MODE_ORDER = ("intra", "inter", "joint")
#: factors an arm's name shows by value alone (``joint``, ``DARTS_V2``, ``conll2003 lstm``)
UNNAMED = ("mode", "genotype_label", "task", "cell", "arm", "trial")
#: runs named in a warning before ``and N more``
LIST_LIMIT = 8


def is_missing(value: Any) -> bool:
    """True for None, NA, NaT and NaN."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def format_value(value: Any) -> str:
    """A factor value as printed in an arm's name: ``-`` when missing, whole floats as ints."""
    if is_missing(value):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def arm_label(values: Mapping[str, Any] | Sequence[Any], by: Sequence[str] = ARM,
              show: Sequence[str] | None = None) -> str:
    """A short name of an arm: ``joint steps=8 n_inter=3 m=2`` (:data:`UNNAMED` factors by value); ``all``
    for no factors.

    ``show`` limits the name to those factors (:func:`arm_namer` passes the ones that vary).
    """
    if isinstance(values, Mapping):
        values = [values.get(k) for k in by]
    if not by:
        return "all"
    pairs = [(k, v) for k, v in zip(by, values) if show is None or k in show]
    return " ".join(format_value(v) if k in UNNAMED else f"{k}={format_value(v)}" for k, v in pairs) or "all"


def arm_namer(table: pd.DataFrame, by: Sequence[str] = ARM):
    """A function naming the arms of ``table`` by ``mode`` and the factors that differ between its arms.

    An ablation over modes at fixed node counts reads ``intra``, ``inter``, ``joint``; one over node
    counts reads ``joint steps=4``, ``joint steps=8``.
    """
    by = list(by)
    varying = [k for k in by if k in table and table[k].astype(str).nunique(dropna=False) > 1]
    show = [k for k in by if k in UNNAMED or k in varying] or by

    def name(values: Mapping[str, Any] | Sequence[Any]) -> str:
        return arm_label(values, by, show)

    return name


def check_by(table: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """``by`` as a list; an :class:`AnalysisError` naming the columns when one is not in ``table``."""
    by = list(by)
    missing = [k for k in by if k not in table.columns]
    if missing:
        known = [c for c in table.columns if "/" not in c and not c.startswith("config.")]
        raise AnalysisError(f"arm: no column {missing[0]!r} in the runs (columns: {', '.join(known)})")
    return by


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "mode":
        order = {m: i for i, m in enumerate(MODE_ORDER)}
        return column.map(lambda v: (order.get(v, len(order)), str(v)))
    return column


def sorted_arms(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """``table`` sorted by the arm columns (modes intra, inter, joint; then by value)."""
    if not by or not len(table):
        return table.reset_index(drop=True)
    return table.sort_values(list(by), key=_sort_key, na_position="last", kind="stable").reset_index(drop=True)


def arm_groups(table: pd.DataFrame, by: Sequence[str]) -> Iterable[tuple[tuple[Any, ...], pd.DataFrame]]:
    """``(arm values, rows)`` per arm in a stable order (modes intra, inter, joint; then by value)."""
    if not by:
        yield (), table
        return
    ordered = sorted_arms(table, by)
    for key, rows in ordered.groupby(list(by), sort=False, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), rows


def run_name(row: Mapping[str, Any]) -> str:
    """A run as named in messages: ``name (run id)``."""
    name, run_id = row.get("run_name"), row.get("run_id")
    if is_missing(name):
        return str(run_id)
    return f"{name} ({run_id})" if not is_missing(run_id) and str(run_id) != str(name) else str(name)


def present(summary: pd.DataFrame, value: str, *, strict: bool = False, what: str = "") -> pd.DataFrame:
    """The trials of ``summary`` that have ``value``; warns (or, ``strict``, raises) naming the others.

    A metric that no trial has is always a :class:`MissingMetricError`.
    """
    if summary is None or not len(summary):
        raise MissingMetricError(f"metric {value!r}: there are no runs")
    if value not in summary.columns:
        metrics = sorted(c for c in summary.columns if "/" in c or c.endswith(("_ppl", "_seconds", "_share")))
        raise MissingMetricError(f"metric {value!r}: no run has it (metrics: {', '.join(metrics) or 'none'})")
    values = pd.to_numeric(summary[value], errors="coerce")
    missing = summary[values.isna()]
    if len(missing) == len(summary):
        raise MissingMetricError(f"metric {value!r}: none of the {len(summary)} runs has it "
                                 f"(first: run {run_name(summary.iloc[0])})")
    if len(missing):
        names = [run_name(r) for _, r in missing.iterrows()]
        if strict:
            raise MissingMetricError(f"run {names[0]} has no metric {value!r}")
        more = f" and {len(names) - LIST_LIMIT} more" if len(names) > LIST_LIMIT else ""
        warnings.warn(f"metric {value!r} is missing in {len(names)} run(s): {', '.join(names[:LIST_LIMIT])}{more}; "
                      f"left out{' of ' + what if what else ''}", AnalysisWarning, stacklevel=3)
    out = summary[values.notna()].copy()
    out[value] = values[values.notna()].astype(float)
    return out


__all__ = [
    "ARM", "LIST_LIMIT", "MODE_ORDER", "UNNAMED", "arm_groups", "arm_label", "arm_namer", "check_by", "format_value",
    "is_missing", "present", "run_name", "sorted_arms",
]
