"""The study's tables: per arm each perplexity's mean with its 95% interval; every pair of arms tested.

Perplexities are positive and skewed, so each interval is a Student-t interval of the *log* perplexity,
mapped back (``exp(mean log +- t s / sqrt(n))``): it is never negative and is the interval of the geometric
mean. Pairs are compared by Welch's t-test on the perplexities (:func:`analysis.stats.compare_arms`), Holm
adjusted over all pairs, with Hedges' g; :func:`ratio_tests` compares named pairs on the scale of the geometric
means (ratio and interval from Welch on log values, Holm over those pairs); :func:`required_seeds` says how many
seeds per arm would detect a given standardised effect (exact noncentral t). The study job and
``analysis.report`` both build their tables here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.stats import compare_arms, holm, log_interval, ratio_test, seeds_for_power

VALUES = ("retrain_valid_ppl", "retrain_test_ppl")


def arm_table(rows: Sequence[Mapping[str, Any]], arms: Sequence[str],
              extra: Sequence[str] = ("params", "search_seconds", "retrain_seconds", "search_tokens",
                                      "retrain_tokens", "identity_share", "decided")) -> pd.DataFrame:
    """One row per arm (in ``arms`` order): ``n`` and the seeds, each of :data:`VALUES` as mean and interval,
    and the mean of each ``extra`` column."""
    frame = pd.DataFrame(list(rows))
    out = []
    for arm in arms:
        group = frame[frame["arm"] == arm] if len(frame) else frame
        row: dict[str, Any] = {"arm": arm, "n": len(group),
                               "seeds": ",".join(str(s) for s in sorted(group["seed"])) if len(group) else ""}
        for value in VALUES:
            stats = log_interval(group[value].tolist() if value in group else [])
            row.update({f"{value}_{k}": v for k, v in stats.items() if k != "n"})
        for name in extra:
            values = pd.to_numeric(group[name], errors="coerce") if name in group else pd.Series(dtype=float)
            row[name] = float(values.mean()) if values.notna().any() else math.nan
        out.append(row)
    return pd.DataFrame(out)


def pair_tests(rows: Sequence[Mapping[str, Any]], value: str = "retrain_valid_ppl") -> pd.DataFrame:
    """Every pair of arms on ``value``: Welch's t, Holm-adjusted p, Hedges' g (arms with < 2 seeds: NaN)."""
    frame = pd.DataFrame(list(rows))
    frame = frame[pd.to_numeric(frame[value], errors="coerce").notna()] if value in frame else frame
    if frame["arm"].nunique() < 2:
        return pd.DataFrame()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare_arms(frame, value, by=("arm",))   # arms named by value: "joint"


def study_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The study's rows (arm, seed, perplexities, parameters) from :func:`analysis.load.trial_summary` of its
    runs: the trials tagged with an arm and retrained, as the job's own ``study.csv`` has them."""
    if "arm" not in summary:
        return []
    done = summary[summary["arm"].notna() & pd.to_numeric(summary.get("retrain_valid_ppl"), errors="coerce").notna()]
    return [{"arm": str(r["arm"]), "seed": int(r["seed"]), "retrain_valid_ppl": float(r["retrain_valid_ppl"]),
             "retrain_test_ppl": float(r["test_ppl"]) if pd.notna(r.get("test_ppl")) else math.nan,
             "params": float(r["params"]) if pd.notna(r.get("params")) else math.nan}
            for _, r in done.iterrows()]


def study_tables(summary: pd.DataFrame, arms: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-arm table and the pair tests of a study's runs (``arms``: their order; default as they come)."""
    rows = study_rows(summary)
    order = list(arms or dict.fromkeys(r["arm"] for r in rows))
    rows = [r for r in rows if r["arm"] in order]
    table = arm_table(rows, order, extra=("params",))
    pairs = pd.concat([pair_tests(rows, v) for v in VALUES], ignore_index=True) if rows else pd.DataFrame()
    return table, pairs


def required_seeds(effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds per arm for a two-sided two-sample t-test at level ``alpha`` to detect a standardised effect
    ``effect`` with ``power``: exact noncentral t (:func:`analysis.stats.seeds_for_power`)."""
    return seeds_for_power(effect, alpha, power)


def ratio_tests(rows: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]],
                value: str = "retrain_valid_ppl", confidence: float = 0.95) -> pd.DataFrame:
    """The named ``(a, b)`` pairs on ``value``: ratio of geometric means ``a / b`` with its interval and Welch's
    p on log values (:func:`analysis.stats.ratio_test`), Holm-adjusted over these pairs only."""
    frame = pd.DataFrame(list(rows))
    out = []
    for a, b in pairs:
        def values(arm: str) -> list[float]:
            if not len(frame) or value not in frame:
                return []
            return pd.to_numeric(frame[frame["arm"] == arm][value], errors="coerce").dropna().tolist()

        out.append({"metric": value, "arm_a": a, "arm_b": b, **ratio_test(values(a), values(b), confidence)})
    table = pd.DataFrame(out)
    if len(table):
        table["p_holm"] = holm(table["p_value"].tolist())
    return table


__all__ = ["VALUES", "arm_table", "log_interval", "pair_tests", "ratio_tests", "required_seeds", "study_rows",
           "study_tables"]
