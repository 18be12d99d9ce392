"""Statistics of an ablation over the per-trial summary (:func:`analysis.load.trial_summary`).

The arms (:mod:`analysis.arms`) are the groups; the seeds of an arm are its replicates. Every function
takes ``by`` to group differently (``("mode",)``).

* :func:`aggregate`: per arm the count, mean, sample standard deviation (ddof = 1), standard error
  and the Student-t confidence interval of the mean, ``mean +- t_{(1+c)/2, n-1} s / sqrt(n)``; with
  ``scale="auto"`` a positive metric (perplexity, seconds, parameters) gets that interval on the log scale
  mapped back (:func:`log_interval`, the interval of the geometric mean: never negative) and a bounded one
  (F1 in percent, a share, an entropy) the interval intersected with its range (:func:`interval_scale`).
* :func:`compare_arms`: every pair of arms, by Welch's unequal-variance t-test (Welch 1947: ``t`` and
  the Welch-Satterthwaite degrees of freedom) or a studentized bootstrap test (Efron & Tibshirani
  1993, algorithm 16.2), with Holm's (1979) step-down adjustment over the pairs and the effect
  sizes Cohen's ``d`` (pooled standard deviation) and Hedges' ``g`` (``d`` with the small-sample
  correction ``J = 1 - 3 / (4 (n_a + n_b) - 9)``).
* :func:`epoch_curves` / :func:`evolution`: a metric per arm and epoch (mean, standard deviation and
  confidence interval over seeds), e.g. valid perplexity, architecture-weight entropy and the share of
  parameter-free ops in the derived genotype.

The genotype tables (ranking, op and predecessor frequencies) are in :mod:`analysis.genotypes`.
Runs that lack the metric in question are left out with an :class:`~analysis.errors.AnalysisWarning`
naming them (``strict=True`` raises :class:`~analysis.errors.MissingMetricError` instead).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis.arms import ARM, arm_groups, arm_namer, check_by, format_value, is_missing, present
from analysis.errors import AnalysisError, AnalysisWarning, MissingMetricError

# --------------------------------------------------------------------------------------------------
# Aggregation


def t_quantile(confidence: float, dof: float) -> float:
    """The two-sided Student-t critical value ``t_{(1+c)/2, dof}`` (NaN for ``dof < 1``)."""
    if not dof or dof < 1 or not math.isfinite(dof):
        return math.nan
    return float(scipy_stats.t.ppf((1.0 + confidence) / 2.0, dof))


#: the range of a bounded metric's values, by :func:`interval_scale`'s name for it
BOUNDS = {"percent": (0.0, 100.0), "share": (0.0, 1.0), "nonnegative": (0.0, math.inf)}
SCALES = ("t", "log", *BOUNDS)
_SCALE_WORDS = (("log", ("ppl", "seconds", "params", "tokens")), ("percent", ("f1", "acc", "precision", "recall")),
                ("share", ("share", "mass")), ("nonnegative", ("entropy", "loss")))


def interval_scale(metric: str) -> str:
    """How the confidence interval of ``metric`` is formed, from its name: ``log`` for a positive metric
    (perplexity, seconds, parameters, tokens), ``percent`` (F1, accuracy: [0, 100]), ``share`` ([0, 1]),
    ``nonnegative`` (entropy, loss), else ``t`` (the plain Student-t interval)."""
    name = str(metric).lower()
    for scale, words in _SCALE_WORDS:
        if any(word in name for word in words):
            return scale
    return "t"


def log_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """``n``, ``mean``, ``geo_mean`` and the interval ``ci_low``/``ci_high`` of the geometric mean: the
    Student-t interval of the log values mapped back, ``exp(mean log +- t s_log / sqrt(n))`` (positive values
    only; never negative)."""
    x = np.asarray([float(v) for v in values if not is_missing(v) and math.isfinite(float(v)) and float(v) > 0])
    n = len(x)
    if not n:
        return {"n": 0, "mean": math.nan, "geo_mean": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    logs = np.log(x)
    half = t_quantile(confidence, n - 1) * logs.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": float(x.mean()), "geo_mean": float(math.exp(logs.mean())),
            "ci_low": float(math.exp(logs.mean() - half)), "ci_high": float(math.exp(logs.mean() + half))}


def describe_sample(values: Sequence[float], confidence: float = 0.95, *, scale: str = "t") -> dict[str, float]:
    """``n, mean, std, sem, ci_low, ci_high, min, max`` of one sample (and ``geo_mean`` with ``scale="log"``).

    ``std`` is the sample standard deviation (ddof = 1), ``sem = std / sqrt(n)`` and the interval is
    Student's ``mean +- t_{(1+c)/2, n-1} * sem``; with one value the spread and interval are NaN.
    ``scale`` (:func:`interval_scale`): ``log`` makes the interval :func:`log_interval`'s (when every value
    is positive); a bounded scale intersects it with the metric's range (:data:`BOUNDS`), which keeps its
    coverage since the true mean lies in that range.
    """
    if scale not in SCALES:
        raise AnalysisError(f"scale: unknown interval scale {scale!r} ({', '.join(SCALES)})")
    x = np.asarray([float(v) for v in values if not is_missing(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    sem = std / math.sqrt(n) if n > 1 else math.nan
    half = t_quantile(confidence, n - 1) * sem if n > 1 else math.nan
    out = {"n": n, "mean": mean, "std": std, "sem": sem, "ci_low": mean - half, "ci_high": mean + half,
           "min": float(x.min()) if n else math.nan, "max": float(x.max()) if n else math.nan}
    if scale == "log" and n and (x > 0).all():
        logs = log_interval(x, confidence)
        out.update({"ci_low": logs["ci_low"], "ci_high": logs["ci_high"], "geo_mean": logs["geo_mean"]})
    elif scale != "t" and n > 1:
        low, high = BOUNDS.get(scale, BOUNDS["nonnegative"])
        out.update({"ci_low": max(out["ci_low"], low), "ci_high": min(out["ci_high"], high)})
    return out


def aggregate(summary: pd.DataFrame, value: str = "final_valid_ppl", by: Sequence[str] = ARM, *,
              confidence: float = 0.95, strict: bool = False, warn_single: bool = True,
              scale: str = "t") -> pd.DataFrame:
    """Per arm: ``n`` (seeds with the metric), ``mean``, ``std`` (ddof = 1), ``sem``, the ``confidence``
    Student-t interval ``ci_low``/``ci_high``, ``min``, ``max`` and the ``seeds``.

    One row per arm (the ``by`` columns, then ``arm``, a printable name); ``metric`` names ``value``.
    An arm with a single run warns (no spread) unless ``warn_single=False``. ``scale`` is
    :func:`describe_sample`'s (``auto``: :func:`interval_scale` of ``value``), named in ``interval``; on the
    log scale ``geo_mean`` is the geometric mean the interval is about.
    """
    by = check_by(summary, by)
    rows = present(summary, value, strict=strict, what=f"the {value} aggregates")
    name = arm_namer(summary, by)
    scale = interval_scale(value) if scale == "auto" else scale
    out = []
    for key, group in arm_groups(rows, by):
        stats = describe_sample(group[value].tolist(), confidence, scale=scale)
        seeds = sorted({format_value(s) for s in group["seed"] if not is_missing(s)}) if "seed" in group else []
        out.append({**dict(zip(by, key)), "arm": name(key), "metric": value, **stats,
                    "seeds": ",".join(seeds), "interval": scale})
        if stats["n"] < 2 and warn_single:
            warnings.warn(f"arm {name(key)!r} has {stats['n']} run(s) with {value!r}: no standard "
                          "deviation or confidence interval", AnalysisWarning, stacklevel=2)
    table = pd.DataFrame(out)
    table.attrs["confidence"] = confidence
    return table


def aggregate_many(summary: pd.DataFrame, values: Sequence[str], by: Sequence[str] = ARM, *,
                   confidence: float = 0.95, warn_single: bool = True, scale: str = "t") -> pd.DataFrame:
    """:func:`aggregate` of several metrics stacked (the ``metric`` column tells them apart).

    Metrics that no run has are skipped silently (a search without retraining has no test perplexity).
    """
    tables = []
    for value in values:
        if value in summary and pd.to_numeric(summary[value], errors="coerce").notna().any():
            tables.append(aggregate(summary, value, by, confidence=confidence, warn_single=warn_single,
                                    scale=scale))
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
    return {"t": float(t), "df": float(df), "p_value": float(2 * scipy_stats.t.sf(abs(t), df)), "se": math.sqrt(se2)}


def ratio_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Welch's t-test on the log values: the ratio of the geometric means ``a / b`` with its interval.

    ``ratio = exp(mean log a - mean log b)``, interval ``exp(diff +- t_{(1+c)/2, df} se)`` and ``p`` of
    :func:`welch_t_test` on ``log a`` and ``log b``: the comparison on the scale of geometric means, which is
    where perplexities are summarised (a ratio of 1.03 is "a is 3% higher"). Also ``diff_geo``, the difference
    of the geometric means. NaN (but the ratio) when an arm has fewer than two positive values.
    """
    a = np.asarray([v for v in a if not is_missing(v) and float(v) > 0], dtype=float)
    b = np.asarray([v for v in b if not is_missing(v) and float(v) > 0], dtype=float)
    out = {"n_a": len(a), "n_b": len(b), "ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "p_value": math.nan, "df": math.nan, "diff_geo": math.nan}
    if not len(a) or not len(b):
        return out
    la, lb = np.log(a), np.log(b)
    diff = float(la.mean() - lb.mean())
    out.update({"ratio": math.exp(diff), "diff_geo": math.exp(la.mean()) - math.exp(lb.mean())})
    test = welch_t_test(la, lb)
    if not math.isfinite(test["t"]):
        return out
    half = t_quantile(confidence, test["df"]) * test["se"]
    out.update({"ci_low": math.exp(diff - half), "ci_high": math.exp(diff + half), "p_value": test["p_value"],
                "df": test["df"]})
    return out


def seeds_for_power(effect: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 10_000) -> int:
    """The smallest seeds per arm ``n`` at which a two-sided two-sample t-test at level ``alpha`` detects a
    standardised effect ``effect`` (difference / common sd) with probability ``power``.

    Exact: the power of the pooled t-test with ``2n - 2`` degrees of freedom is
    ``P(|T'| > t_{1-alpha/2})`` for ``T'`` noncentral t with noncentrality ``effect sqrt(n / 2)`` (no normal
    approximation, which undercounts at few seeds). 0 for no effect; ``max_n + 1`` when out of reach.
    """
    if not effect or not math.isfinite(effect):
        return 0
    for n in range(2, max_n + 1):
        df = 2 * n - 2
        crit = scipy_stats.t.ppf(1 - alpha / 2, df)
        nc = abs(effect) * math.sqrt(n / 2)
        if scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc) >= power:
            return n
    return max_n + 1


def detectable_effect(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest standardised effect that ``n`` seeds per arm detect with ``power`` (inverse of
    :func:`seeds_for_power`, by bisection on the exact noncentral-t power)."""
    if n < 2:
        return math.inf
    df = 2 * n - 2
    crit = scipy_stats.t.ppf(1 - alpha / 2, df)

    def achieved(d: float) -> float:
        nc = d * math.sqrt(n / 2)
        return scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc)

    low, high = 0.0, 100.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if achieved(mid) < power else (low, mid)
    return high


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
    p = [(v, i) for i, v in enumerate(p_values) if not is_missing(v)]
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
    by = check_by(summary, by)
    rows = present(summary, value, strict=strict, what="the comparison of arms")
    name = arm_namer(summary, by)
    arms = [(name(key), group[value].to_numpy(dtype=float)) for key, group in arm_groups(rows, by)]
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
# Curves over epochs


def epoch_curves(frame: pd.DataFrame, metric: str = "valid/ppl", by: Sequence[str] = ARM, *,
                 stage: str = "search", confidence: float = 0.95, scale: str = "t") -> pd.DataFrame:
    """``metric`` per arm and epoch over seeds: ``n``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``min``, ``max``.

    ``frame`` is the flat per-epoch frame of :func:`analysis.load.load_runs`; only rows of ``stage``.
    ``scale`` is :func:`describe_sample`'s (``auto``: :func:`interval_scale` of ``metric``).
    """
    scale = interval_scale(metric) if scale == "auto" else scale
    by = check_by(frame, by)
    rows = frame[frame["stage"] == stage] if "stage" in frame else frame
    if metric not in rows.columns or not pd.to_numeric(rows[metric], errors="coerce").notna().any():
        known = sorted(c for c in rows.columns if "/" in c and not c.startswith("config.")
                       and rows[c].notna().any())
        raise MissingMetricError(f"metric {metric!r}: no {stage} epoch has it (metrics: {', '.join(known) or 'none'})")
    name = arm_namer(rows, by)   # named by the factors that vary between the stage's runs
    rows = rows[pd.to_numeric(rows[metric], errors="coerce").notna()]
    out = []
    for key, group in arm_groups(rows, by):
        for epoch, at in group.groupby("epoch", sort=True):
            out.append({**dict(zip(by, key)), "arm": name(key), "metric": metric, "epoch": int(epoch),
                        **describe_sample(at[metric].astype(float).tolist(), confidence, scale=scale)})
    return pd.DataFrame(out)


def evolution(frame: pd.DataFrame, by: Sequence[str] = ARM, *,
              metrics: Sequence[str] = ("arch/entropy", "genotype/identity_share"),
              confidence: float = 0.95, scale: str = "t") -> pd.DataFrame:
    """:func:`epoch_curves` of the search's collapse signals, stacked: the mean entropy (nats) of the
    architecture-weight softmaxes and the share of parameter-free ops in the genotype derived each epoch."""
    tables = []
    for metric in metrics:
        try:
            tables.append(epoch_curves(frame, metric, by, confidence=confidence, scale=scale))
        except MissingMetricError:
            continue
    if not tables:
        raise MissingMetricError(f"metrics: no search epoch has any of {', '.join(metrics)}")
    return pd.concat(tables, ignore_index=True)


__all__ = [
    "BOUNDS", "SCALES", "aggregate", "aggregate_many", "bootstrap_test", "cohens_d", "compare_arms", "describe_sample",
    "detectable_effect", "epoch_curves", "evolution", "hedges_g", "holm", "interval_scale", "log_interval",
    "ratio_test", "seeds_for_power", "t_quantile", "welch_t_test",
]
