"""Statistics of an ablation over the per-trial summary (:func:`analysis.load.trial_summary`).

An *arm* is one setting of the ablated factors, by default ``(mode, steps, n_inter, m)``; the seeds
of an arm are its replicates. Every function takes ``by`` to group differently (``("mode",)``).

* :func:`aggregate`: per arm the count, mean, sample standard deviation (ddof = 1), standard error
  and the Student-t confidence interval of the mean, ``mean +- t_{(1+c)/2, n-1} s / sqrt(n)``.
* :func:`compare_arms`: every pair of arms, by Welch's unequal-variance t-test (Welch 1947: ``t`` and
  the Welch-Satterthwaite degrees of freedom) or a studentized bootstrap test (Efron & Tibshirani
  1993, algorithm 16.2), with Holm's (1979) step-down adjustment over the pairs and the effect
  sizes Cohen's ``d`` (pooled standard deviation) and Hedges' ``g`` (``d`` with the small-sample
  correction ``J = 1 - 3 / (4 (n_a + n_b) - 9)``).
* :func:`rank_genotypes`: the derived genotypes, best mean first.
* :func:`op_frequencies` / :func:`predecessor_frequencies`: how often each op / predecessor is chosen
  in the final genotypes of an arm (searched parts only: the fixed intra cell of ``inter`` mode and
  the identity inter cells of ``intra`` mode are not choices).
* :func:`epoch_curves` / :func:`evolution`: a metric per arm and epoch (mean, standard deviation and
  confidence interval over seeds), e.g. valid perplexity, architecture-weight entropy and the share of
  parameter-free ops in the derived genotype.

Runs that lack the metric in question are left out with an :class:`~analysis.errors.AnalysisWarning`
naming them (``strict=True`` raises :class:`~analysis.errors.MissingMetricError` instead).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError, AnalysisWarning, MissingMetricError

#: the default arm: search mode and node counts (intra steps, inter nodes, inter window)
ARM: tuple[str, ...] = ("mode", "steps", "n_inter", "m")
MODE_ORDER = ("intra", "inter", "joint")
PARTS = ("intra", "history", "input")
_LIST_LIMIT = 8


# --------------------------------------------------------------------------------------------------
# Arms


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def _fmt(value: Any) -> str:
    if _is_missing(value):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def arm_label(values: Mapping[str, Any] | Sequence[Any], by: Sequence[str] = ARM,
              show: Sequence[str] | None = None) -> str:
    """A short name of an arm: ``joint steps=8 n_inter=3 m=2`` (``mode`` unnamed); ``all`` for no factors.

    ``show`` limits the name to those factors (:func:`arm_namer` passes the ones that vary).
    """
    if isinstance(values, Mapping):
        values = [values.get(k) for k in by]
    if not by:
        return "all"
    pairs = [(k, v) for k, v in zip(by, values) if show is None or k in show]
    return " ".join(_fmt(v) if k == "mode" else f"{k}={_fmt(v)}" for k, v in pairs) or "all"


def arm_namer(table: pd.DataFrame, by: Sequence[str] = ARM):
    """A function naming the arms of ``table`` by ``mode`` and the factors that differ between its arms.

    An ablation over modes at fixed node counts reads ``intra``, ``inter``, ``joint``; one over node
    counts reads ``joint steps=4``, ``joint steps=8``.
    """
    by = list(by)
    varying = [k for k in by if k in table and table[k].astype(str).nunique(dropna=False) > 1]
    show = [k for k in by if k == "mode" or k in varying] or by

    def name(values: Mapping[str, Any] | Sequence[Any]) -> str:
        return arm_label(values, by, show)

    return name


def _check_by(table: pd.DataFrame, by: Sequence[str]) -> list[str]:
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


def _sorted_arms(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    if not by or not len(table):
        return table.reset_index(drop=True)
    return table.sort_values(list(by), key=_sort_key, na_position="last", kind="stable").reset_index(drop=True)


def _groups(table: pd.DataFrame, by: Sequence[str]) -> Iterable[tuple[tuple[Any, ...], pd.DataFrame]]:
    """``(arm values, rows)`` per arm in a stable order (modes intra, inter, joint; then by value)."""
    if not by:
        yield (), table
        return
    ordered = _sorted_arms(table, by)
    for key, rows in ordered.groupby(list(by), sort=False, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), rows


def _run_name(row: Mapping[str, Any]) -> str:
    name, run_id = row.get("run_name"), row.get("run_id")
    if _is_missing(name):
        return str(run_id)
    return f"{name} ({run_id})" if not _is_missing(run_id) and str(run_id) != str(name) else str(name)


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
                                 f"(first: run {_run_name(summary.iloc[0])})")
    if len(missing):
        names = [_run_name(r) for _, r in missing.iterrows()]
        if strict:
            raise MissingMetricError(f"run {names[0]} has no metric {value!r}")
        more = f" and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else ""
        warnings.warn(f"metric {value!r} is missing in {len(names)} run(s): {', '.join(names[:_LIST_LIMIT])}{more}; "
                      f"left out{' of ' + what if what else ''}", AnalysisWarning, stacklevel=3)
    out = summary[values.notna()].copy()
    out[value] = values[values.notna()].astype(float)
    return out


# --------------------------------------------------------------------------------------------------
# Aggregation


def t_quantile(confidence: float, dof: float) -> float:
    """The two-sided Student-t critical value ``t_{(1+c)/2, dof}`` (NaN for ``dof < 1``)."""
    from scipy import stats

    if not dof or dof < 1 or not math.isfinite(dof):
        return math.nan
    return float(stats.t.ppf((1.0 + confidence) / 2.0, dof))


def describe_sample(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """``n, mean, std, sem, ci_low, ci_high, min, max`` of one sample.

    ``std`` is the sample standard deviation (ddof = 1), ``sem = std / sqrt(n)`` and the interval is
    Student's ``mean +- t_{(1+c)/2, n-1} * sem``; with one value the spread and interval are NaN.
    """
    x = np.asarray([float(v) for v in values if not _is_missing(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    sem = std / math.sqrt(n) if n > 1 else math.nan
    half = t_quantile(confidence, n - 1) * sem if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "sem": sem, "ci_low": mean - half, "ci_high": mean + half,
            "min": float(x.min()) if n else math.nan, "max": float(x.max()) if n else math.nan}


def aggregate(summary: pd.DataFrame, value: str = "final_valid_ppl", by: Sequence[str] = ARM, *,
              confidence: float = 0.95, strict: bool = False, warn_single: bool = True) -> pd.DataFrame:
    """Per arm: ``n`` (seeds with the metric), ``mean``, ``std`` (ddof = 1), ``sem``, the ``confidence``
    Student-t interval ``ci_low``/``ci_high``, ``min``, ``max`` and the ``seeds``.

    One row per arm (the ``by`` columns, then ``arm``, a printable name); ``metric`` names ``value``.
    An arm with a single run warns (no spread) unless ``warn_single=False``.
    """
    by = _check_by(summary, by)
    rows = present(summary, value, strict=strict, what=f"the {value} aggregates")
    name = arm_namer(summary, by)
    out = []
    for key, group in _groups(rows, by):
        stats = describe_sample(group[value].tolist(), confidence)
        seeds = sorted({_fmt(s) for s in group["seed"]}) if "seed" in group else []
        out.append({**dict(zip(by, key)), "arm": name(key), "metric": value, **stats,
                    "seeds": ",".join(seeds)})
        if stats["n"] < 2 and warn_single:
            warnings.warn(f"arm {name(key)!r} has {stats['n']} run(s) with {value!r}: no standard "
                          "deviation or confidence interval", AnalysisWarning, stacklevel=2)
    table = pd.DataFrame(out)
    table.attrs["confidence"] = confidence
    return table


def aggregate_many(summary: pd.DataFrame, values: Sequence[str], by: Sequence[str] = ARM, *,
                   confidence: float = 0.95, warn_single: bool = True) -> pd.DataFrame:
    """:func:`aggregate` of several metrics stacked (the ``metric`` column tells them apart).

    Metrics that no run has are skipped silently (a search without retraining has no test perplexity).
    """
    tables = []
    for value in values:
        if value in summary and pd.to_numeric(summary[value], errors="coerce").notna().any():
            tables.append(aggregate(summary, value, by, confidence=confidence, warn_single=warn_single))
    if not tables:
        raise MissingMetricError(f"metrics: no run has any of {', '.join(values)}")
    return pd.concat(tables, ignore_index=True)


# --------------------------------------------------------------------------------------------------
# Pairwise comparison


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Welch's t-test of equal means without assuming equal variances (two-sided).

    ``t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b)`` with the Welch-Satterthwaite degrees of
    freedom ``df = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))`` and
    ``p = 2 * P(T_df > |t|)``. Also the ``confidence`` interval of the difference. NaN when an arm has
    fewer than two values or both have no spread.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = len(a), len(b)
    out = {"t": math.nan, "df": math.nan, "p_value": math.nan, "se": math.nan}
    if na < 2 or nb < 2:
        return out
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se2 = va + vb
    if se2 <= 0:
        return out
    t = (a.mean() - b.mean()) / math.sqrt(se2)
    df = se2 ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    return {"t": float(t), "df": float(df), "p_value": float(2 * stats.t.sf(abs(t), df)), "se": math.sqrt(se2)}


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d: ``(mean_a - mean_b) / s_p``, pooled ``s_p^2 = ((n_a-1) s_a^2 + (n_b-1) s_b^2) / (n_a+n_b-2)``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    if pooled <= 0:
        return math.nan
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Hedges' g: Cohen's d times ``J = 1 - 3 / (4 (n_a + n_b) - 9)`` (Hedges & Olkin 1985), for few seeds."""
    d = cohens_d(a, b)
    n = len(a) + len(b)
    return d * (1.0 - 3.0 / (4.0 * n - 9.0)) if math.isfinite(d) else math.nan


def bootstrap_test(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000, seed: int = 0,
                   confidence: float = 0.95) -> dict[str, float]:
    """Studentized bootstrap test of equal means (Efron & Tibshirani 1993, algorithm 16.2) and a
    percentile interval of the difference.

    Both samples are shifted to the pooled mean (the null), resampled ``n_boot`` times with
    replacement, and ``p = (1 + #{|t*| >= |t|}) / (n_boot + 1)`` with ``t`` Welch's statistic. The
    interval is the ``(1 +- c)/2`` quantiles of ``mean(a*) - mean(b*)`` from the unshifted samples.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = {"t": math.nan, "p_value": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if len(a) < 2 or len(b) < 2:
        return out
    rng = np.random.default_rng(seed)
    t_obs = welch_t_test(a, b)["t"]
    ia = rng.integers(0, len(a), size=(n_boot, len(a)))
    ib = rng.integers(0, len(b), size=(n_boot, len(b)))
    diff = a[ia].mean(axis=1) - b[ib].mean(axis=1)
    lo, hi = np.quantile(diff, [(1 - confidence) / 2, (1 + confidence) / 2])
    out.update({"ci_low": float(lo), "ci_high": float(hi)})
    if not math.isfinite(t_obs):
        return out
    pooled = np.concatenate([a, b]).mean()
    a0, b0 = a - a.mean() + pooled, b - b.mean() + pooled
    xa, xb = a0[ia], b0[ib]
    se = np.sqrt(xa.var(axis=1, ddof=1) / len(a) + xb.var(axis=1, ddof=1) / len(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = (xa.mean(axis=1) - xb.mean(axis=1)) / se
    extreme = np.count_nonzero(np.abs(t_star) >= abs(t_obs))
    out.update({"t": float(t_obs), "p_value": float((1 + extreme) / (n_boot + 1))})
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over all the pairs); NaN stays NaN."""
    p = [(v, i) for i, v in enumerate(p_values) if not _is_missing(v)]
    p.sort()
    m = len(p)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (value, i) in enumerate(p):
        running = max(running, min(1.0, (m - rank) * value))
        out[i] = running
    return out


def compare_arms(summary: pd.DataFrame, value: str = "final_valid_ppl", by: Sequence[str] = ARM, *,
                 method: str = "welch", confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0,
                 strict: bool = False) -> pd.DataFrame:
    """Every pair of arms compared on ``value`` over seeds.

    Columns: ``arm_a``, ``arm_b``, ``n_a``, ``n_b``, ``mean_a``, ``mean_b``, ``diff`` (a - b),
    ``ci_low``/``ci_high`` of the difference (Welch: ``diff +- t_{(1+c)/2, df} se``; bootstrap:
    percentile), ``t``, ``df`` (Welch only), ``p_value``, ``p_holm`` (Holm-adjusted over the pairs),
    ``cohens_d``, ``hedges_g`` and ``method``. Arms with fewer than two seeds give NaN statistics.
    """
    if method not in ("welch", "bootstrap"):
        raise AnalysisError(f"method: unknown test {method!r} (welch, bootstrap)")
    by = _check_by(summary, by)
    rows = present(summary, value, strict=strict, what="the comparison of arms")
    name = arm_namer(summary, by)
    arms = [(name(key), group[value].to_numpy(dtype=float)) for key, group in _groups(rows, by)]
    out = []
    for (name_a, a), (name_b, b) in itertools.combinations(arms, 2):
        welch = welch_t_test(a, b)
        diff = float(a.mean() - b.mean())
        row = {"metric": value, "arm_a": name_a, "arm_b": name_b, "n_a": len(a), "n_b": len(b),
               "mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": diff}
        if method == "welch":
            half = t_quantile(confidence, welch["df"]) * welch["se"] if math.isfinite(welch["df"]) else math.nan
            row.update({"ci_low": diff - half, "ci_high": diff + half, "t": welch["t"], "df": welch["df"],
                        "p_value": welch["p_value"]})
        else:
            boot = bootstrap_test(a, b, n_boot=n_boot, seed=seed, confidence=confidence)
            row.update({"ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "t": boot["t"], "df": math.nan,
                        "p_value": boot["p_value"]})
        row.update({"cohens_d": cohens_d(a, b), "hedges_g": hedges_g(a, b), "method": method})
        out.append(row)
    columns = ["metric", "arm_a", "arm_b", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "t", "df",
               "p_value", "p_holm", "cohens_d", "hedges_g", "method"]
    table = pd.DataFrame(out, columns=[c for c in columns if c != "p_holm"])
    table.insert(columns.index("p_holm"), "p_holm", holm(table["p_value"].tolist()) if len(table) else [])
    if len(arms) < 2:
        warnings.warn(f"only {len(arms)} arm(s) with {value!r}: nothing to compare", AnalysisWarning, stacklevel=2)
    table.attrs["confidence"] = confidence
    return table


# --------------------------------------------------------------------------------------------------
# Genotypes


def parse_genotype(text: Any) -> Any:
    """An :class:`ess.space.ESSGenotype` from JSON text or a built-in name; None when it is not one."""
    from ess.errors import ESSError
    from ess.space.genotype import load_genotype

    if _is_missing(text) or not str(text).strip():
        return None
    try:
        return load_genotype(str(text).strip())
    except ESSError:
        return None


def searched_parts(mode: Any) -> tuple[str, ...]:
    """The genotype parts a search mode chooses (:data:`ess.supernet.MODES`); all parts for an unknown mode."""
    try:
        from ess.supernet import MODES
    except Exception:  # pragma: no cover - the core is importable wherever the analysis is
        MODES = {}
    spec = MODES.get(mode) if isinstance(mode, str) else None
    if spec is None:
        return PARTS
    return (("intra",) if spec.searches_intra else ()) + (("history", "input") if spec.searches_inter else ())


def _pred_name(part: str, pred: int, m: int) -> str:
    if part == "intra":
        return "node 0 (init)" if pred == 0 else f"node {pred}"
    if pred < m:
        if part == "history":
            return f"h[t-{pred + 1}]"
        return "x[t]" if pred == 0 else f"x[t-{pred}]"
    return f"s{pred - m + 1}"


def genotype_edges(genotype: Any, parts: Sequence[str] = PARTS) -> list[dict[str, Any]]:
    """The chosen edges of ``genotype`` in ``parts``: one dict per edge with ``part``, ``node``, ``branch``,
    ``op``, ``pred`` and ``pred_name``.

    Intra nodes are numbered from 1 (predecessor 0 is the initial node); inter nodes are ``s1, s2 ...``
    with branches ``a`` and ``b``, and predecessors below ``m`` are the inputs (``h[t-1]`` ... for the
    history cell, ``x[t]``, ``x[t-1]`` ... for the input cell).
    """
    edges = []
    for part in parts:
        if part == "intra":
            for i, edge in enumerate(genotype.intra.recurrent, start=1):
                edges.append({"part": part, "node": f"node {i}", "branch": "", "op": edge.op, "pred": edge.pred,
                              "pred_name": _pred_name(part, edge.pred, 0)})
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
        genotype = parse_genotype(trial.get("genotype"))
        if genotype is None:
            unreadable.append(_run_name(trial))
            continue
        arm = {k: trial[k] for k in by}
        for edge in genotype_edges(genotype, searched_parts(trial.get("mode"))):
            rows.append({**arm, "run_id": trial.get("run_id"), **edge})
    if unreadable:
        if len(unreadable) == len(summary):
            raise MissingMetricError(f"genotype: none of the {len(summary)} runs has a final genotype "
                                     f"(first: run {unreadable[0]})")
        warnings.warn(f"{len(unreadable)} run(s) have no readable final genotype: "
                      f"{', '.join(unreadable[:_LIST_LIMIT])}; left out of the genotype tables",
                      AnalysisWarning, stacklevel=3)
    return pd.DataFrame(rows, columns=[*by, "run_id", "part", "node", "branch", "op", "pred", "pred_name"])


def op_frequencies(summary: pd.DataFrame, by: Sequence[str] = ARM) -> pd.DataFrame:
    """How often each op is chosen in the final genotypes of each arm, per part.

    Columns: the arm, ``part`` (intra, history, input), ``op``, ``count`` (edges with that op over the
    arm's trials), ``share`` (count over the part's edges in the arm: each (arm, part) sums to 1) and
    ``trials``. Every op that can be chosen is listed, with 0 when it never was.
    """
    from ess.space.ops import PRIMITIVES, ZERO

    by = _check_by(summary, by)
    edges = _edge_table(summary, by)
    ops = [op for op in PRIMITIVES if op != ZERO]
    name = arm_namer(summary, by)
    out = []
    for key, rows in _groups(edges, by):
        for part in PARTS:
            part_rows = rows[rows["part"] == part]
            if not len(part_rows):
                continue
            total, trials = len(part_rows), part_rows["run_id"].nunique()
            for op in ops + sorted(set(part_rows["op"]) - set(ops)):
                count = int((part_rows["op"] == op).sum())
                out.append({**dict(zip(by, key)), "arm": name(key), "part": part, "op": op,
                            "count": count, "share": count / total, "trials": trials})
    return pd.DataFrame(out, columns=[*by, "arm", "part", "op", "count", "share", "trials"])


def predecessor_frequencies(summary: pd.DataFrame, by: Sequence[str] = ARM) -> pd.DataFrame:
    """How often each predecessor feeds each node in the final genotypes of each arm.

    Columns: the arm, ``part``, ``node`` (``node 1`` ... for the intra cell, ``s1`` ... for the inter
    cells), ``pred`` (index), ``pred_name`` (``node 0 (init)``, ``h[t-1]``, ``x[t]``, ``s1`` ...), ``count``
    and ``share`` (over the node's incoming edges in the arm; the two branches of an inter node both count).
    """
    by = _check_by(summary, by)
    edges = _edge_table(summary, by)
    if not len(edges):
        return pd.DataFrame(columns=[*by, "arm", "part", "node", "pred", "pred_name", "count", "share"])
    keys = [*by, "part", "node", "pred", "pred_name"]
    counts = edges.groupby(keys, dropna=False, sort=False).size().rename("count").reset_index()
    totals = edges.groupby([*by, "part", "node"], dropna=False, sort=False).size().rename("total").reset_index()
    table = counts.merge(totals, on=[*by, "part", "node"], how="left")
    table["share"] = table["count"] / table["total"]
    name = arm_namer(summary, by)
    table.insert(len(by), "arm", [name(r) for r in table[by].to_dict(orient="records")] if by else "all")
    part_order = {p: i for i, p in enumerate(PARTS)}
    table["_p"] = table["part"].map(part_order)
    table["_n"] = table["node"].str.extract(r"(\d+)$", expand=False).astype(int)
    table = _sorted_arms(table.sort_values(["_p", "_n", "pred"], kind="stable"), by)
    return table.drop(columns=["_p", "_n", "total"])


def rank_genotypes(summary: pd.DataFrame, value: str = "final_valid_ppl", *, higher_is_better: bool = False,
                   by: Sequence[str] = ARM, strict: bool = False) -> pd.DataFrame:
    """The distinct final genotypes ranked by their mean ``value`` over the trials that derived them.

    Columns: ``rank``, ``mean``, ``best``, ``n`` (trials), ``arms`` and ``runs`` that found it,
    ``identity_share`` (of its edges, :func:`ess.space.derive.identity_share`), ``describe`` (the
    compact form) and ``genotype`` (JSON). Lower is better unless ``higher_is_better``.
    """
    from ess.space.derive import identity_share

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
                    "identity_share": identity_share(genotype), "describe": genotype.describe(),
                    "genotype": genotype.to_json(None)})
    table = pd.DataFrame(out).sort_values(["mean", "n"], ascending=[not higher_is_better, False], kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    table.insert(1, "metric", value)
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Curves over epochs


def epoch_curves(frame: pd.DataFrame, metric: str = "valid/ppl", by: Sequence[str] = ARM, *,
                 stage: str = "search", confidence: float = 0.95) -> pd.DataFrame:
    """``metric`` per arm and epoch over seeds: ``n``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``min``, ``max``.

    ``frame`` is the flat per-epoch frame of :func:`analysis.load.load_runs`; only rows of ``stage``.
    """
    by = _check_by(frame, by)
    rows = frame[frame["stage"] == stage] if "stage" in frame else frame
    if metric not in rows.columns or not pd.to_numeric(rows[metric], errors="coerce").notna().any():
        known = sorted(c for c in rows.columns if "/" in c and not c.startswith("config.")
                       and rows[c].notna().any())
        raise MissingMetricError(f"metric {metric!r}: no {stage} epoch has it (metrics: {', '.join(known) or 'none'})")
    rows = rows[pd.to_numeric(rows[metric], errors="coerce").notna()]
    name = arm_namer(frame, by)
    out = []
    for key, group in _groups(rows, by):
        for epoch, at in group.groupby("epoch", sort=True):
            out.append({**dict(zip(by, key)), "arm": name(key), "metric": metric, "epoch": int(epoch),
                        **describe_sample(at[metric].astype(float).tolist(), confidence)})
    return pd.DataFrame(out)


def evolution(frame: pd.DataFrame, by: Sequence[str] = ARM, *,
              metrics: Sequence[str] = ("arch/entropy", "genotype/identity_share"),
              confidence: float = 0.95) -> pd.DataFrame:
    """:func:`epoch_curves` of the search's collapse signals, stacked: the mean entropy (nats) of the
    architecture-weight softmaxes and the share of parameter-free ops in the genotype derived each epoch."""
    tables = []
    for metric in metrics:
        try:
            tables.append(epoch_curves(frame, metric, by, confidence=confidence))
        except MissingMetricError:
            continue
    if not tables:
        raise MissingMetricError(f"metrics: no search epoch has any of {', '.join(metrics)}")
    return pd.concat(tables, ignore_index=True)


__all__ = [
    "ARM", "MODE_ORDER", "PARTS", "aggregate", "aggregate_many", "arm_label", "arm_namer", "bootstrap_test", "cohens_d",
    "compare_arms", "describe_sample", "epoch_curves", "evolution", "genotype_edges", "hedges_g", "holm",
    "op_frequencies", "parse_genotype", "predecessor_frequencies", "present", "rank_genotypes", "searched_parts",
    "t_quantile", "welch_t_test",
]
