"""The sections of a report, each written onto its :class:`~analysis.page.Page` from one :class:`Context`.

Every statistic of a metric is taken over the trials that should have it (:func:`analysis.trials.expected`),
so a search the job never retrained is not a run missing its test perplexity. Intervals of a positive or
bounded metric stay in its range (``scale="auto"`` of :func:`analysis.stats.aggregate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import figures as figs
from analysis.arms import arm_namer, format_value
from analysis.errors import MissingMetricError
from analysis.genotypes import op_frequencies, predecessor_frequencies, rank_genotypes
from analysis.jobs import Kind
from analysis.page import Page, cell
from analysis.stats import aggregate, compare_arms, epoch_curves, evolution
from analysis.study import study_rows, study_tables
from analysis.trials import expected
from ess.search.evidence import arm_evidence
from ess.space.refs import load_genotype
from ess.study import ARMS
from ess.supernet import MODES

#: the per-trial values aggregated per arm, when the trials have them
VALUES = ("final_valid_ppl", "best_valid_ppl", "retrain_valid_ppl", "test_ppl", "search_seconds", "params",
          "dev/f1", "test/f1")
TRIAL_COLUMNS = ("run_name", "parent", "status", "mode", "seed", "steps", "n_inter", "m", "genotype_label", "cell",
                 "task", "epochs", "final_valid_ppl", "best_valid_ppl", "retrain_run", "retrain_seed",
                 "retrain_valid_ppl", "test_ppl", "final_arch_entropy", "final_identity_share", "search_seconds",
                 "wall_seconds", "params", "best_epoch", "dev/f1", "test/f1")
ARM_COLUMNS = ("arm", "metric", "n", "mean", "std", "geo_mean", "ci_low", "ci_high", "interval", "min", "max", "seeds")
COMPARISON_COLUMNS = ("metric", "arm_a", "arm_b", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "t",
                      "df", "p_value", "p_holm", "hedges_g")
_TUNED_SKIP = ("seed", "epochs", "run_dir", "data_dir", "dataset", "threads", "progress", "draw", "mode")


@dataclass
class Context:
    """What every section reads: the page, the job kind, the flat frame, the trials and the arms."""

    page: Page
    kind: Kind
    frame: pd.DataFrame
    trials: pd.DataFrame
    by: tuple[str, ...]
    primary: str
    higher_is_better: bool
    method: str = "welch"
    band: str = "std"

    @property
    def curve_by(self) -> tuple[str, ...]:
        """The lines of a curve: the arms, or each trial when the job has no arms (a hyperparameter search)."""
        return self.by or ("trial",)


def _save(make: Callable[[], object], base: Path) -> list[Path]:
    fig = make()
    try:
        return figs.save_figure(fig, base)
    finally:
        fig.clear()


def has(table: pd.DataFrame, column: str) -> bool:
    return column in table and pd.to_numeric(table[column], errors="coerce").notna().any()


def with_metric(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The trials that should have ``metric`` (a missing value among them is a gap, warned about later)."""
    return trials[expected(trials, metric)] if len(trials) else trials


_TRIALS_CAPTION = {
    "transfer": "its task, cell and seed, epochs, tagger parameters, the best dev epoch, dev and test span F1 of "
                "the best-dev model (percent)",
    "retrain": "the genotype, the seed of the search that found it (none for a built-in or a file), the retrain's own "
               "seed (retrain_seed), retrained valid and test perplexity, parameters",
    "hparam_search": "the fixed arm and seed, the search valid perplexity (final and best), search time",
}


def trials_section(ctx: Context, trials: pd.DataFrame) -> None:
    """Every trial (``trials``: those in no arm too), and every run's epochs as ``tables/runs.csv``."""
    ctx.page.heading("Trials")
    what = _TRIALS_CAPTION.get(ctx.kind.name, "its arm and seed (the search's; the retrain's own seed is "
                               "retrain_seed), search valid perplexity (final and best), retrained valid and test "
                               "perplexity, search time (training seconds summed over epochs), parameters")
    ctx.page.table("trials", trials, f"One row per {ctx.kind.unit}: {what}; empty columns left out.",
                   TRIAL_COLUMNS, drop_empty=True)
    ctx.page.csv("runs", ctx.frame)
    ctx.page.text("Every epoch of every run (config, metrics, genotype): tables/runs.csv.")


def tuned_columns(trials: pd.DataFrame) -> list[str]:
    """The search-config columns (``config.search.*``) whose value differs between the trials: what was tuned."""
    out = []
    for col in trials.columns:
        if not str(col).startswith("config.search.") or col.removeprefix("config.search.") in _TUNED_SKIP:
            continue
        values = trials[col].dropna().astype(str)
        if values.nunique() > 1 and not values.str.contains("/").any():
            out.append(col)
    return out


def configs_section(ctx: Context) -> None:
    """A hyperparameter search: the sampled configurations ranked by the primary metric, the best named."""
    config = [c for c in ctx.frame.columns if str(c).startswith("config.search.")]
    trials = ctx.trials.drop(columns=[c for c in config if c in ctx.trials])
    if config:
        trials = trials.merge(ctx.frame.groupby("run_id", sort=False)[config].first(), left_on="run_id",
                              right_index=True, how="left")
    tuned = tuned_columns(trials)
    table = trials.sort_values(ctx.primary, ascending=not ctx.higher_is_better, na_position="last", kind="stable")
    names = [c.removeprefix("config.search.") for c in tuned]   # m, n_inter are columns of their own already
    table = table.rename(columns={c: n for c, n in zip(tuned, names) if n not in table})
    table.insert(0, "rank", range(1, len(table) + 1))
    table["stopped_early"] = False
    if "config.search.epochs" in table:
        planned = pd.to_numeric(table["config.search.epochs"], errors="coerce")
        table["stopped_early"] = pd.to_numeric(table["epochs"], errors="coerce") < planned
    ctx.page.heading("Sampled configurations")
    stopped = int(table["stopped_early"].sum())
    if len(table) and has(table, ctx.primary):
        best = table.iloc[0]
        ctx.page.text(f"Best: {best['trial']} with {ctx.primary} {cell(float(best[ctx.primary]))}"
                      + (f" ({', '.join(f'{n}={cell(best[n])}' for n in names)})" if names else "")
                      + f"; {stopped} of {len(table)} trial(s) stopped early by the scheduler (fewer epochs).")
    ctx.page.table("configs", table, f"The sampled configurations ranked by {ctx.primary}: the tuned values "
                   "(what differs between the trials), epochs run, search valid perplexity.",
                   ["rank", "trial", "status", *names, "epochs", "stopped_early", "final_valid_ppl",
                    "best_valid_ppl"])


def arms_section(ctx: Context) -> pd.DataFrame:
    """Per arm and metric over seeds; one note when the primary metric has arms of one seed."""
    trials, by = ctx.trials, ctx.by
    ctx.page.heading("Per arm")
    name = arm_namer(trials, by)
    tables = []
    for value in (v for v in VALUES if has(trials, v)):
        rows = with_metric(trials, value)
        if has(rows, value):
            table = aggregate(rows, value, by, warn_single=False, scale="auto")
            table["arm"] = [name(r) for r in table[list(by)].to_dict(orient="records")] if by else "all"
            tables.append(table)
    if not tables:
        raise MissingMetricError(f"metrics: no trial has any of {', '.join(VALUES)}")
    arms = pd.concat(tables, ignore_index=True)
    single = arms[(arms["metric"] == ctx.primary) & (arms["n"] < 2)]["arm"].tolist()
    if single and ctx.kind.replicated:
        ctx.page.note(f"arm(s) with one seed: {', '.join(single)} (no standard deviation, confidence interval or "
                      "test; run more seeds)")
    ctx.page.table("arms", arms, "Per arm and metric over seeds: mean, sample standard deviation (ddof=1), 95% "
                   "confidence interval and count. Interval: t = Student-t of the mean; log = Student-t of the log "
                   "values mapped back, the interval of the geometric mean geo_mean (positive metrics: perplexity, "
                   "seconds, parameters); percent = Student-t within [0, 100].", ARM_COLUMNS, drop_empty=True)
    rows = with_metric(trials, ctx.primary)
    centre = "geometric mean" if (arms[arms["metric"] == ctx.primary]["interval"] == "log").any() else "mean"
    ctx.page.figure("final_metric", lambda base: _save(lambda: figs.final_figure(rows, ctx.primary, by, scale="auto"),
                                                       base),
                    f"{figs.label(ctx.primary)} per arm: {centre} with its 95% CI as error bars; dots are seeds")
    return arms


def comparisons_section(ctx: Context) -> None:
    """Every pair of arms on the primary metric (and the final search perplexity), when two arms have seeds."""
    ctx.page.heading("Pairwise comparison of arms")
    tables = []
    for value in dict.fromkeys([ctx.primary, "final_valid_ppl"]):
        rows = with_metric(ctx.trials, value)
        if not has(rows, value):
            continue
        rows = rows[pd.to_numeric(rows[value], errors="coerce").notna()]
        sizes = rows.groupby(list(ctx.by), dropna=False).size() if ctx.by else pd.Series([len(rows)])
        if (sizes >= 2).sum() >= 2:
            tables.append(compare_arms(rows, value, ctx.by, method=ctx.method))
    if not tables:
        ctx.page.csv("comparisons", pd.DataFrame(columns=list(COMPARISON_COLUMNS)))
        ctx.page.text("No pairwise comparison: fewer than two arms with two or more seeds.")
        return
    test = {"welch": "Welch t-test", "bootstrap": "Studentized bootstrap test"}[ctx.method]
    ctx.page.table("comparisons", pd.concat(tables, ignore_index=True),
                   f"{test} per pair of arms (diff = a - b with its 95% CI), Holm-adjusted p over the pairs, effect "
                   "sizes Cohen's d and Hedges' g.", COMPARISON_COLUMNS)


def _curves(ctx: Context, metric: str, stage: str, name: str, heading: str, caption: str) -> None:
    """A per-epoch metric per arm: its table (``tables/<name>.csv``) and figure."""
    ctx.page.heading(heading)
    by = ctx.curve_by
    try:
        curves = epoch_curves(ctx.frame, metric, by, stage=stage, scale="auto")
    except MissingMetricError as err:
        ctx.page.note(f"table {name} left out: {err}")
        return
    figure = "valid_ppl_curves" if name == "curves" else f"{name}"
    ctx.page.figure(figure, lambda base: _save(lambda: figs.curves_figure(ctx.frame, metric, by, stage=stage,
                                                                          band=ctx.band), base),
                    f"{caption} per epoch and arm (line: mean over seeds; band: spread over seeds)")
    ctx.page.table(name, curves, f"{caption} per arm and epoch over seeds (interval as in the per-arm table).",
                   ["arm", "epoch", "n", "mean", "geo_mean", "std", "ci_low", "ci_high"], drop_empty=True)


def search_section(ctx: Context) -> None:
    """Search curves, the collapse signals (entropy, identity share) and the per-part diagnostics."""
    _curves(ctx, "valid/ppl", "search", "curves", "Search curves", "search valid perplexity")
    by = ctx.curve_by
    ctx.page.heading("Architecture-weight entropy and identity share")
    ctx.page.figure("entropy", lambda base: _save(lambda: figs.entropy_figure(ctx.frame, by, band=ctx.band), base),
                    "entropy of the architecture-weight softmaxes relative to its maximum and the identity share "
                    "of the genotype derived at each epoch")
    try:
        evo = evolution(ctx.frame, by, scale="auto")
        last = evo[evo["epoch"].isin([evo["epoch"].min(), evo["epoch"].max()])]
        ctx.page.table("evolution", evo, "Entropy and identity share per arm at the first and last search epoch "
                       "(every epoch in the CSV).", ["arm", "metric", "epoch", "n", "mean", "std"], shown=last)
    except MissingMetricError as err:
        ctx.page.note(f"table evolution left out: {err}")
    ctx.page.figure("parts", lambda base: _save(lambda: figs.parts_figure(ctx.frame, by, band=ctx.band), base),
                    "per searched part: relative entropy, mass on none and identity share of the derived genotype, "
                    "over search epochs (a fixed 0-1 scale)")


def retrain_section(ctx: Context) -> None:
    _curves(ctx, "retrain/valid/ppl", "retrain", "retrain_curves", "Retrain curves", "retrain valid perplexity")


def transfer_section(ctx: Context) -> None:
    _curves(ctx, "dev/f1", "transfer", "transfer_curves", "Tagger curves", "dev span F1")


def genotypes_section(ctx: Context) -> None:
    """The distinct final genotypes ranked, the best drawn, op and predecessor frequencies per arm."""
    ctx.page.heading("Derived genotypes")
    rows = with_metric(ctx.trials, ctx.primary)
    try:
        ranking = rank_genotypes(rows, ctx.primary, higher_is_better=ctx.higher_is_better, by=ctx.by)
        ctx.page.table("genotypes", ranking, f"Distinct final genotypes ranked by mean {ctx.primary}.",
                       ["rank", "mean", "best", "n", "arms", "runs", "identity_share", "describe"])
        best = ranking.iloc[0]
        ctx.page.figure("best_genotype", lambda base: figs.genotype_picture(
            best["genotype"], base, title=f"best genotype: {ctx.primary} {cell(float(best['mean']))}"),
            f"the best genotype by {ctx.primary} ({best['arms']}: {best['runs']})")
        ops = op_frequencies(ctx.trials, ctx.by)
        wide = ops.assign(column=ops["part"] + ":" + ops["op"]).pivot_table(
            index="arm", columns="column", values="share", aggfunc="first", sort=False).reset_index()
        ctx.page.table("op_frequency", ops, "Share of each op among the chosen edges of each searched part, per arm.",
                       shown=wide)
        ctx.page.figure("op_heatmap", lambda base: _save(lambda: figs.op_heatmap_figure(ops), base),
                        "ops chosen in the derived genotypes, per arm (share of the part's edges)")
        preds = predecessor_frequencies(ctx.trials, ctx.by)
        ctx.page.table("predecessor_frequency", preds, "Share of each predecessor among a node's incoming edges, "
                       "per arm.", ["arm", "part", "node", "pred_name", "count", "share"])
    except MissingMetricError as err:
        ctx.page.note(f"genotype tables left out: {err}")


def evidence_section(ctx: Context) -> None:
    """Per arm of searches: the seeds' agreement against random genotypes and the searches' stability
    (:func:`ess.search.evidence.arm_evidence`, docs/method.md section 11), from the runs' final genotypes and
    their ``evidence/*`` metrics."""
    searches = ctx.trials[(ctx.trials.get("epochs", 0) > 0) & ctx.trials.get("genotype").notna()] \
        if {"epochs", "genotype", "mode"} <= set(ctx.trials.columns) else ctx.trials[:0]
    if not len(searches):
        return
    rows, by = [], list(ctx.by) or ["mode"]
    name = arm_namer(searches, by)
    for key, group in searches.groupby(by, sort=False, dropna=False):
        mode = MODES.get(str(group["mode"].iloc[0]))
        if mode is None:
            continue
        searched = list(mode.parts)
        space = {k: int(group[k].iloc[0]) for k in ("steps", "m", "n_inter") if k in group and group[k].notna().any()}
        keys = ("changed_epoch_share", "kept_from_middle")
        stabilities = [{k: r[f"evidence/{k}"] for k in keys} for r in group.to_dict(orient="records")
                       if all(pd.notna(r.get(f"evidence/{k}")) for k in keys)]
        e = arm_evidence([load_genotype(g) for g in group["genotype"]], stabilities, searched, **space)
        overall = e.agreement.overall if e.agreement else None
        rows.append({"arm": name(key if isinstance(key, tuple) else (key,)), "searches": e.searches,
                     "agreement": overall.observed if overall else None,
                     "random_agreement": overall.expected if overall else None, "p": overall.p if overall else None,
                     "changed_epoch_share": e.changed_epoch_share, "kept_from_middle": e.kept_from_middle,
                     "statement": e.statement()})
    if rows:
        ctx.page.heading("Did the searches find something?")
        ctx.page.table("evidence", pd.DataFrame(rows), "Per arm: the share of choices on which pairs of seeds agree, "
                       "against random genotypes of the same space (p: simulated null), and how much each search's "
                       "genotype changed over its last half (docs/method.md section 11).",
                       ["arm", "searches", "agreement", "random_agreement", "p", "changed_epoch_share",
                        "kept_from_middle"])
        for r in rows:
            ctx.page.text(f"{r['arm']}: {r['statement']}")


def study_section(ctx: Context, summary: pd.DataFrame) -> None:
    """The study's arms (tagged ``arm``) at equal budget: log-scale intervals and pair tests."""
    tagged = {r["arm"] for r in study_rows(summary)}
    side = sorted(a for a in tagged if a not in ARMS)   # random-screen, wt2-*, planted-*: own budget or corpus
    # the registry's order, not the store's: concurrent trials reach the store in any order
    study_arms, study_pairs = study_tables(summary, [a for a in ARMS if a in tagged] or None)
    ctx.page.heading("Study: arms at equal budget and parameter count")
    if side:
        ctx.page.text(f"Other stages of the study, at their own budget or corpus, are not in this table: "
                      f"{', '.join(side)}.")
    ctx.page.table("study_arms", study_arms, "Per study arm: seeds, and the geometric mean of the retrained valid and "
                   "test perplexity with its 95% interval (Student-t on log perplexity); mean parameters.",
                   ["arm", "n", "seeds", "retrain_valid_ppl_geo_mean", "retrain_valid_ppl_ci_low",
                    "retrain_valid_ppl_ci_high", "retrain_test_ppl_geo_mean", "retrain_test_ppl_ci_low",
                    "retrain_test_ppl_ci_high", "params"])
    ctx.page.table("study_pairs", study_pairs, "Welch t-test per pair of study arms, Holm-adjusted over the pairs, "
                   "Hedges' g.", ["metric", "arm_a", "arm_b", "n_a", "n_b", "diff", "ci_low", "ci_high", "p_value",
                                  "p_holm", "hedges_g"])


def seeds_text(values: Sequence[object]) -> str:
    """Distinct seeds, sorted, as text (``-`` for none)."""
    seeds = sorted({format_value(v) for v in values if format_value(v) != "-"}, key=lambda s: (len(s), s))
    return ", ".join(seeds) or "-"


SECTIONS = {"configs": configs_section, "arms": arms_section, "comparisons": comparisons_section,
            "search": search_section, "evidence": evidence_section, "retrain": retrain_section,
            "transfer": transfer_section, "genotypes": genotypes_section}

__all__ = ["ARM_COLUMNS", "COMPARISON_COLUMNS", "Context", "SECTIONS", "TRIAL_COLUMNS", "VALUES", "arms_section",
           "comparisons_section", "configs_section", "evidence_section", "genotypes_section", "has",
           "retrain_section", "search_section", "seeds_text", "study_section", "transfer_section", "trials_section",
           "tuned_columns", "with_metric"]
