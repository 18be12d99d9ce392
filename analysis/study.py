"""The study's tables: per arm each perplexity's mean with its 95% interval; every pair of arms tested.

Perplexities are positive and skewed, so each interval is a Student-t interval of the *log* perplexity,
mapped back (``exp(mean log +- t s / sqrt(n))``): it is never negative and is the interval of the geometric
mean. Pairs are compared by Welch's t-test on the perplexities (:func:`analysis.stats.compare_arms`), Holm
adjusted over all pairs, with Hedges' g; :func:`ratio_tests` compares named pairs on the scale of the geometric
means (ratio and interval from Welch on log values, Holm over those pairs); :func:`required_seeds` says how many
seeds per arm would detect a given standardised effect (exact noncentral t). The study job (its summary, its
CSV files, its closing lines: :func:`study_summary`) and ``analysis.report`` both build their tables here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom

from analysis.stats import (
    compare_arms,
    describe_sample,
    detectable_effect,
    holm,
    log_interval,
    ratio_test,
    seeds_for_power,
)
from ess.data.planted import chance_of_lag, chance_of_reaching, planted_lag_edges
from ess.errors import ESSError
from ess.search.evidence import seed_agreement
from ess.space.ops import PRIMITIVES
from ess.space.refs import load_genotype
from ess.study import ARMS
from ess.supernet import MODES

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


#: the arms joint search is compared with in the summary's headline, in order
HEADLINE_OTHERS = ("intra", "random", "darts_v2", "lstm", "inter")


def best_by_arm(trials: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Per arm, its retrain of lowest valid perplexity (the first of equals; missing and non-finite values last):
    the genotype the study's later stages take."""
    def ppl(trial: Mapping[str, Any]) -> float:
        try:
            value = float(trial["retrain_valid_ppl"])
        except (TypeError, ValueError):
            return math.inf
        return value if math.isfinite(value) else math.inf

    best: dict[str, Mapping[str, Any]] = {}
    for t in trials:
        if t["arm"] not in best or ppl(t) < ppl(best[t["arm"]]):
            best[t["arm"]] = t
    return best


def pooled_log_sd(trials: Sequence[Mapping[str, Any]], arms: Sequence[str], metric: str) -> tuple[float, list[int]]:
    """The seed sd of ``log(metric)`` pooled over ``arms`` (the mean of their variances; NaN without an arm of two
    seeds), and the seeds each arm has."""
    frame = pd.DataFrame(list(trials))
    variances, n = [], []
    for arm in arms:
        values = pd.to_numeric(frame[frame["arm"] == arm][metric], errors="coerce").dropna() \
            if len(frame) and metric in frame else pd.Series(dtype=float)
        logs = np.log(values[values > 0])
        n.append(len(logs))
        if len(logs) > 1:
            variances.append(float(logs.var(ddof=1)))
    return (math.sqrt(float(np.mean(variances))) if variances else math.nan), n


def primary_verdict(row: Mapping[str, Any]) -> str:
    """What one pre-registered comparison says at the family-wise level: a direction only where its Holm p passes
    (``row["significant"]``); an unadjusted 95% interval that excludes 1 without it is named, not read as a finding."""
    if min(row["n_a"], row["n_b"]) < 2 or not math.isfinite(row["ci_low"]):
        return "no comparison: it needs at least two seeds per arm"
    if row["ci_low"] <= 1 <= row["ci_high"]:
        return "cannot be told apart"
    direction = f"{row['arm_a']} {'lower' if row['ci_high'] < 1 else 'higher'}"
    return direction if row["significant"] else f"cannot be told apart after Holm (unadjusted: {direction})"


def primary_analysis(trials: Sequence[Mapping[str, Any]], design: Any) -> dict[str, Any]:
    """The pre-registered comparisons of ``design`` (:class:`ess.study.StudyDesign`) on its metric: the ratio of
    geometric means and its interval (Welch on log values), Holm over these comparisons only; and what the seeds
    run could detect: the smallest gain with ``design.power`` at Holm's first step (``alpha / comparisons``),
    at the pooled seed sd of the log metric over the compared arms (exact noncentral t)."""
    pairs = design.pairs
    table = ratio_tests(trials, pairs, value=design.metric) if pairs else pd.DataFrame()
    rows = []
    for r in table.to_dict(orient="records"):
        r["significant"] = bool(r["p_holm"] < design.alpha)
        rows.append({**r, "verdict": primary_verdict(r)})
    sd, n = pooled_log_sd(trials, sorted({a for pair in pairs for a in pair}), design.metric)
    seeds = min(n) if n else 0
    alpha = design.alpha / max(len(pairs), 1)
    effect = detectable_effect(seeds, alpha, design.power) if seeds >= 2 else math.inf
    gain = 1 - math.exp(-effect * sd) if math.isfinite(effect) and math.isfinite(sd) else math.nan
    needed = seeds_for_power(-math.log(1 - design.target_gain) / sd, alpha, design.power) \
        if math.isfinite(sd) and sd > 0 else 0
    return {"metric": design.metric, "comparisons": rows,
            "power": {"seeds_per_arm": seeds, "pooled_log_sd": sd, "alpha_first_step": alpha,
                      "detectable_gain": gain, "target_gain": design.target_gain,
                      "seeds_for_target": needed, "power": design.power}}


def power_statement(power: Mapping[str, Any]) -> str:
    """What the seeds run can detect, from :func:`primary_analysis`'s ``power``: the smallest relative gain at the
    pooled seed sd of the log metric, or why there is none (an arm of the comparisons with fewer than two seeds)."""
    seeds, sd = power["seeds_per_arm"], power["pooled_log_sd"]
    target = (f"the target {100 * power['target_gain']:g}% takes {power['seeds_for_target']} seeds per arm"
              if math.isfinite(sd) and power["seeds_for_target"] else "")
    if seeds < 2 or not math.isfinite(power["detectable_gain"]):
        return (f"No detectable gain is stated: an arm of the comparisons has {seeds} seed(s), and a t-test needs "
                "two per arm" + (f"; at the pooled seed sd of the log metric ({100 * sd:.1f}%), {target}."
                                 if target else "."))
    return (f"With {seeds} seeds per arm at the pooled seed sd of the log metric ({100 * sd:.1f}%), the smallest "
            f"relative gain detectable with {100 * power['power']:.0f}% power at Holm's first step (alpha "
            f"{power['alpha_first_step']:.3g}, exact noncentral t) is {100 * power['detectable_gain']:.1f}%"
            + (f"; {target}." if target else "."))


def study_summary(trials: Sequence[Mapping[str, Any]], arms: Sequence[str], extra: Mapping[str, Any],
                  best: Mapping[str, Mapping[str, Any]], design: Any = None) -> dict[str, Any]:
    """The study job's summary: the design and its primary analysis (:func:`primary_analysis`), the per-arm table
    (``arms`` order, those with trials), the pair tests of each of :data:`VALUES` (exploratory), the headline
    (joint against each of :data:`HEADLINE_OTHERS` by :func:`ratio_tests`, exploratory), every trial, the other
    stages' tables (``extra``) and each arm's ``best`` retrain."""
    trials = list(trials)
    present = {t["arm"] for t in trials}
    table = arm_table(trials, [a for a in arms if a in present])
    pairs = {v: pair_tests(trials, v) for v in VALUES}
    headline = {}
    if "joint" in present:
        ratios = ratio_tests(trials, [("joint", o) for o in HEADLINE_OTHERS if o in present])
        for h in ratios.to_dict(orient="records"):
            headline[f"joint_vs_{h['arm_b']}"] = {
                "diff": h["diff_geo"], "ratio": h["ratio"], "ci_low": h["ci_low"], "ci_high": h["ci_high"],
                "p_value": h["p_value"], "p_holm": h["p_holm"], "n_a": h["n_a"], "n_b": h["n_b"]}
    planned = {}
    if design is not None:
        planned = {"design": {f.name: getattr(design, f.name) for f in dataclasses.fields(design)},
                   "primary": primary_analysis(trials, design)}
    return {**planned, "arms": table.to_dict(orient="records"),
            "pairs": {k: v.to_dict(orient="records") for k, v in pairs.items()},
            "trials": trials, "headline": headline, **extra,
            "best": {arm: {"seed": t["seed"], "retrain_valid_ppl": t["retrain_valid_ppl"], "genotype": t["genotype"]}
                     for arm, t in best.items()}}


def _searched_cells(group: pd.DataFrame) -> list[Any]:
    """The derived genotypes of a planted arm's searches (rows whose genotype reads back)."""
    cells = []
    for text in group.get("genotype", pd.Series(dtype=object)).dropna():
        try:
            cells.append(load_genotype(str(text)))
        except ESSError:
            continue
    return cells


def _searched_space(group: pd.DataFrame) -> tuple[list[Any], int, int]:
    """A planted search arm's derived genotypes, its input window ``m`` and its inter node count (the stage's own,
    rows of ess >= this change; else the most that any derived cell kept: a derivation drops a node whose branch
    chose `none`); no genotypes for a control."""
    searched = group[group["reaches_planted_input"].notna()]
    cells = _searched_cells(searched) if len(searched) else []
    if not cells:
        return [], 0, 0
    given = pd.to_numeric(group.get("n_inter", pd.Series(dtype=float)), errors="coerce").dropna()
    return cells, cells[0].input.m, int(given.iloc[0]) if len(given) else max(len(g.input.nodes) for g in cells)


def _recovery(k: int, group: pd.DataFrame, cells: Sequence[Any], m: int, nodes: int) -> dict[str, Any]:
    """Recovery of the planted input against random genotypes of the searched space: reaching it at all (chance
    :func:`ess.data.planted.chance_of_reaching`), and which lag the edges from earlier inputs chose (chance
    ``1 / (m - 1)`` each, :func:`ess.data.planted.planted_lag_edges`), each with its one-sided binomial p."""
    if not cells:
        return {"chance_rate": None, "recovery_p": None, "lag_edges": None, "lagged_edges": None,
                "lag_chance": None, "lag_p": None}
    reads = group["reaches_planted_input"].dropna().astype(bool)
    chance = chance_of_reaching(k, m, nodes)
    counts = [planted_lag_edges(g, k) for g in cells]
    hits, lagged = sum(h for h, _ in counts), sum(n for _, n in counts)
    lag_chance = chance_of_lag(k, m)
    return {"chance_rate": chance, "recovery_p": float(binom.sf(int(reads.sum()) - 1, len(reads), chance)),
            "lag_edges": hits, "lagged_edges": lagged, "lag_chance": lag_chance,
            "lag_p": None if lag_chance is None or not lagged else float(binom.sf(hits - 1, lagged, lag_chance))}


def _agreement(arm: str, group: pd.DataFrame, cells: Sequence[Any], m: int, nodes: int) -> dict[str, Any]:
    """The seeds' agreement on the searched parts against random genotypes of the space (docs/method.md section
    11): the evidence a search of the real corpus gives, checked where the truth is known."""
    if len(cells) < 2 or arm not in ARMS:
        return {"agree": None, "agree_null": None, "agree_p": None}
    first = group.iloc[0]

    def given(key: str, default: Any) -> Any:   # the stage's space (rows of ess >= this change), else the defaults
        value = first.get(key) if key in group else None
        return default if value is None or (isinstance(value, float) and math.isnan(value)) else value

    found = seed_agreement(cells, MODES[ARMS[arm].mode].parts, steps=int(given("steps", cells[0].intra.steps)), m=m,
                           n_inter=nodes, intra_ops=tuple(given("intra_ops", PRIMITIVES)),
                           inter_ops=tuple(given("inter_ops", PRIMITIVES)))
    return {"agree": found.overall.observed, "agree_null": found.overall.null_mean, "agree_p": found.overall.p}


def planted_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per planted corpus and arm: seeds, the recovery rate of the planted input (search arms) against random
    genotypes' (:func:`ess.data.planted.chance_of_reaching`) with its one-sided binomial p, the seeds' agreement
    against random genotypes with its p (:func:`ess.search.evidence.seed_agreement`), the test perplexity's
    geometric mean and its distance to the exact floor in nats (mean and 95% interval over seeds), against the
    count model's distance."""
    frame = pd.DataFrame(list(rows))
    out = []
    if not len(frame):
        return out
    for (k, arm), group in frame.groupby(["k", "arm"], sort=False):
        test = pd.to_numeric(group["retrain_test_ppl"], errors="coerce").dropna()
        gaps = np.log(test[test > 0]) - float(group["entropy_nats"].iloc[0])
        d = describe_sample(gaps.tolist())
        reads = group["reaches_planted_input"].dropna()
        space = _searched_space(group)
        out.append({"k": int(k), "arm": arm, "n": len(group),
                    "recovered": int(reads.astype(bool).sum()) if len(reads) else None,
                    "recovery_rate": float(reads.astype(bool).mean()) if len(reads) else None,
                    **_recovery(int(k), group, *space), **_agreement(str(arm), group, *space),
                    "test_ppl_geo_mean": log_interval(test.tolist())["geo_mean"],
                    "gap_nats": d["mean"], "gap_ci_low": d["ci_low"], "gap_ci_high": d["ci_high"],
                    "floor_ppl": float(group["floor_ppl"].iloc[0]),
                    "count_model_gap_nats": math.log(float(group["count_model_ppl"].iloc[0]))
                    - float(group["entropy_nats"].iloc[0])})
    return out


def study_files(summary: Mapping[str, Any]) -> dict[str, str]:
    """The CSV files of a study's summary: ``study.csv`` (every retrain), ``study_arms.csv``, ``study_pairs.csv``
    and one per other stage that has rows."""
    files = {"study.csv": pd.DataFrame(summary["trials"]).to_csv(index=False),
             "study_arms.csv": pd.DataFrame(summary["arms"]).to_csv(index=False),
             "study_pairs.csv": pd.concat([pd.DataFrame(v) for v in summary["pairs"].values()]).to_csv(index=False)}
    for name in ("transfer", "wikitext2", "planted", "random_screen"):
        if summary.get(name):
            files[f"study_{name}.csv"] = pd.DataFrame(summary[name]).to_csv(index=False)
    if summary.get("primary"):
        files["study_primary.csv"] = pd.DataFrame(summary["primary"]["comparisons"]).to_csv(index=False)
    tau = summary.get("tau")
    if tau:
        table = {"genotype": tau["genotypes"], "short_valid_ppl": tau["short_valid_ppl"],
                 "long_valid_ppl": tau["long_valid_ppl"],
                 **{f"supernet_{s['arm']}_s{s['seed']}_loss": s["losses"] for s in tau["supernets"]}}
        files["study_tau.csv"] = pd.DataFrame(table).to_csv(index=False)
    return files


def study_lines(summary: Mapping[str, Any]) -> list[str]:
    """What the study job prints at its end: the arms table, one line per headline comparison, where the tables are."""
    cols = ["arm", "n", "retrain_valid_ppl_geo_mean", "retrain_valid_ppl_ci_low", "retrain_valid_ppl_ci_high",
            "retrain_test_ppl_geo_mean", "params"]
    arms = pd.DataFrame(summary["arms"])
    lines = [arms[[c for c in cols if c in arms]].to_string(index=False, float_format=lambda v: f"{v:.2f}")] \
        if len(arms) else []
    primary = summary.get("primary")
    if primary:
        lines.append(f"primary (pre-registered; {primary['metric']}; Holm over these "
                     f"{len(primary['comparisons'])} comparisons only):")
        lines += [f"  {c['arm_a']} vs {c['arm_b']}: ratio {c['ratio']:.3f}, 95% interval [{c['ci_low']:.3f}, "
                  f"{c['ci_high']:.3f}], Holm p {c['p_holm']:.3g} (n = {c['n_a']} and {c['n_b']}): {c['verdict']}"
                  for c in primary["comparisons"]]
        lines.append(f"  {power_statement(primary['power'])}")
    for arm, e in (summary.get("evidence") or {}).items():
        lines.append(f"evidence, {arm}: {e['statement']}")
    tau = summary.get("tau") or {}
    if tau.get("short_vs_long"):
        lines.append(f"ranking quality: short ({tau['short_epochs']} epochs) against long ({tau['long_epochs']}) "
                     f"retrain: {tau['short_vs_long']['statement']}")
    for s in tau.get("supernets", []):
        if s.get("vs_long"):
            lines.append(f"ranking quality: the {s['arm']} supernet of seed {s['seed']} against the long retrain: "
                         f"{s['vs_long']['statement']}")
    for r in planted_table(summary.get("planted") or []):
        reads = "" if r["recovery_rate"] is None else (
            f", reads x_(t+1-k) in {r['recovered']} of {r['n']}" + ("" if r.get("chance_rate") is None else
                                                                  f" (random genotypes {100 * r['chance_rate']:.0f}%, "
                                                                  f"p = {r['recovery_p']:.3g})")
            + ("" if r.get("lag_p") is None else f"; {r['lag_edges']} of its {r['lagged_edges']} edges from earlier "
               f"inputs read it (chance {100 * r['lag_chance']:.0f}%, p = {r['lag_p']:.3g})"))
        agree = "" if r.get("agree_p") is None else (
            f"; seeds agree on {r['agree']:.0%} of choices, random genotypes on {r['agree_null']:.0%} "
            f"(p = {r['agree_p']:.3g})")
        lines.append(f"planted k={r['k']}, {r['arm']}: {r['gap_nats']:.3f} nats above the floor (count model "
                     f"{r['count_model_gap_nats']:.3f}){reads}{agree}")
    lines += ["exploratory:"] + [headline_line(name, h) for name, h in summary["headline"].items()]
    return lines + [f"tables: {summary['experiment_dir']}/study_arms.csv, study_pairs.csv, study.csv"]


def headline_line(name: str, h: Mapping[str, Any]) -> str:
    """One comparison of the summary in words: the ratio of geometric means and its interval, or why there is none."""
    if min(h.get("n_a", 0), h.get("n_b", 0)) < 2:
        return (f"{name}: no comparison: it needs at least two seeds per arm (has {h.get('n_a', 0)} and "
                f"{h.get('n_b', 0)})")
    verdict = ("cannot be told apart" if h["ci_low"] <= 1 <= h["ci_high"] else
               "lower" if h["ci_high"] < 1 else "higher")
    return (f"{name}: valid ppl ratio {h['ratio']:.3f} (geometric means differ by {h['diff']:+.2f}), 95% interval "
            f"[{h['ci_low']:.3f}, {h['ci_high']:.3f}]: {verdict}; Welch on log ppl p {h['p_value']:.3g}, "
            f"Holm p {h['p_holm']:.3g} (Holm over the joint_vs_* comparisons)")


__all__ = ["HEADLINE_OTHERS", "VALUES", "arm_table", "best_by_arm", "headline_line", "log_interval", "pair_tests",
           "planted_table", "pooled_log_sd", "primary_analysis", "primary_verdict", "ratio_tests", "required_seeds",
           "study_files", "study_lines", "study_rows", "study_summary", "study_tables"]
