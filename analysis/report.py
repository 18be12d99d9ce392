"""The report of a job's runs in one folder: tables (CSV), figures (PNG, SVG), Markdown, HTML.

    python -m analysis.report --experiment ess-ablation --out reports/ablation
    python -m analysis.report --experiment ablation-smoke-20250101-120000 --tracking-uri sqlite:///runs/tune/mlflow.db
    python -m analysis.report --experiment NAME --ray-results runs/tune --out reports/NAME

``--experiment`` is an MLflow experiment (every trial run in it, ``--parent`` keeps one Tune
experiment) or a Tune experiment name; with ``--ray-results`` it selects the job folder under DIR.
The store defaults to the jobs' own (``$MLFLOW_TRACKING_URI``, else ``runs/tune/mlflow.db``).

The report follows the job that wrote the runs (the ``job`` tag, :mod:`analysis.jobs`): a joint search
or an ablation (arms by mode and node counts, seeds the search's, each retrain joined to its search), a
hyperparameter search (its configurations ranked), a retrain job (arms by genotype), a transfer job (arms
by task and cell, span F1). Runs of several jobs or of none get a neutral report.

Written to ``--out``: ``report.md``, ``report.html``, ``tables/*.csv`` and ``figures/*.png|svg``;
every file atomically (a reader never sees half a file). Only finished trials are analysed unless
``--include-unfinished``. Problems (an unknown or empty experiment, a metric no run has) are one
line and exit status 2; what is left out (a metric missing where the job should have logged it, arms
of one seed) is listed under "Notes" in the report and on stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures as figs
from analysis.errors import AnalysisWarning, EmptyExperimentError, MissingMetricError
from analysis.jobs import KINDS, Kind, job_kind
from analysis.load import describe_source, load_runs, trial_summary
from analysis.page import Page, html_table, markdown_table
from analysis.sections import (
    SECTIONS,
    VALUES,
    Context,
    has,
    seeds_text,
    study_section,
    trials_section,
)
from analysis.trials import expected, join_stages
from ess.adapters.mlflow import DEFAULT_STORAGE
from ess.cli import run_main

#: the primary metric (figure, ranking, comparison) unless --metric: the first of these every trial should
#: have (:func:`analysis.trials.expected`), else the first any trial has
PRIMARY = ("test_ppl", "retrain_valid_ppl", "final_valid_ppl", "test/f1", "dev/f1")
HIGHER_IS_BETTER = ("f1", "acc", "precision", "recall")
_TESTS = {"welch": "Welch t-test", "bootstrap": "studentized bootstrap"}


@dataclass
class Report:
    """What :func:`write_report` wrote: the folder, the files by kind, the notes and the job kind."""

    out: Path
    markdown: Path
    html: Path
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, list[Path]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kind: str = ""


def _higher_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in HIGHER_IS_BETTER)


def choose_metric(summary: pd.DataFrame, metric: str | None = None) -> str:
    """``metric`` when given (it must exist), else the first of :data:`PRIMARY` that every trial should have,
    else the first any trial has."""
    if metric and metric != "auto":
        if not has(summary, metric):
            known = [c for c in summary.columns if has(summary, c) and c not in ("seed", "steps", "n_inter", "m")]
            raise MissingMetricError(f"--metric: no run has {metric!r} (numeric columns: {', '.join(known)})")
        return metric
    present = [name for name in PRIMARY if has(summary, name)]
    for name in present:
        if expected(summary, name).all():
            return name
    if present:
        return present[0]
    raise MissingMetricError(f"metric: the runs have none of {', '.join(PRIMARY)} (a metric missing in every run); "
                             "pass --metric NAME")


def _intro(kind: Kind, trials: pd.DataFrame, by: tuple[str, ...], primary: str, better: str, method: str) -> str:
    """The report's one-line summary of what it covers."""
    n, seeds = len(trials), seeds_text(trials["seed"]) if "seed" in trials else "-"
    what = f"{primary} ({better} is better)"
    retrain_seeds = seeds_text(trials["retrain_seed"]) if "retrain_seed" in trials else "-"
    if kind.name == "hparam_search":
        fixed = ", ".join(f"{k} {trials[k].dropna().iloc[0]}" for k in ("mode", "seed", "steps")
                          if k in trials and trials[k].nunique() == 1)
        return f"{n} sampled configuration(s){' of ' + fixed if fixed else ''}; ranked by {what}."
    arms = trials.groupby(list(by), dropna=False).ngroups if by else 1
    text = f"{n} {kind.unit}(s) in {arms} arm(s) by {', '.join(by) or '(none)'}; seeds {seeds}"
    retrained = int(trials["retrained"].sum()) if "retrained" in trials else 0
    if kind.name == "retrain":
        text = f"{n} {kind.unit}(s) by {', '.join(by) or '(none)'}; search seeds {seeds}"
    elif retrained and retrained < n:
        text += f"; {retrained} of them retrained"
    if retrain_seeds != "-":
        text += f" (retrain seed {retrain_seeds})"
    text += f"; primary metric {what}"
    if "comparisons" in kind.sections:
        text += f"; pairwise test: {_TESTS[method]}"
    return text + "."


def _finished(frame: pd.DataFrame, trials: pd.DataFrame, page: Page) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The finished runs and trials; a note counts the runs left out. A trial whose retrain did not finish
    keeps its search, without the retrain's values."""
    statuses = frame.drop_duplicates("run_id")["status"].fillna("UNKNOWN").value_counts()
    kept = frame[frame["status"] == "FINISHED"]
    if not len(kept):
        raise EmptyExperimentError(
            f"no finished trial runs ({', '.join(f'{n} {s}' for s, n in statuses.items())}); "
            "pass --include-unfinished to analyse them anyway")
    left = int(statuses.sum() - statuses.get("FINISHED", 0))
    if left:
        page.note(f"{left} unfinished trial run(s) left out "
                  f"({', '.join(f'{n} {s}' for s, n in statuses.items() if s != 'FINISHED')}); "
                  "--include-unfinished keeps them")
    trials = trials[trials["status"] == "FINISHED"].copy()
    broken = trials["retrain_status"].notna() & (trials["retrain_status"] != "FINISHED")
    if broken.any():   # one note for the trial, not one per retrain metric it lacks
        values = [c for c in trials.columns if c in ("retrain_valid_ppl", "test_ppl", "params")
                  or str(c).startswith("retrain/")]
        trials.loc[broken, values] = float("nan")
        trials.loc[broken, "retrained"] = False
        page.note(f"retrain of {', '.join(map(str, trials.loc[broken, 'trial']))} not finished "
                  f"({', '.join(map(str, trials.loc[broken, 'retrain_status']))}): the trial keeps its search only")
    return kept, trials.reset_index(drop=True)


_MISSING = re.compile(r"metric '(?P<metric>.+?)' is missing in (?P<runs>\d+ run\(s\): .+?); left out of (?P<where>.+)")


def _merge(messages: Sequence[str], primary: str) -> list[str]:
    """Warnings as notes, once each: the metrics missing in the same runs are one note (``primary`` named first,
    then the others), listing the tables they were left out of."""
    notes: dict[str, dict[str, list[str]] | None] = {}
    for message in messages:
        match = _MISSING.fullmatch(message)
        if match is None:
            notes.setdefault(message, None)
            continue
        entry = notes.setdefault(match["runs"], {"metrics": [], "where": []})
        for key, field_ in (("metric", "metrics"), ("where", "where")):
            if match[key] not in entry[field_]:
                entry[field_].append(match[key])
    out = []
    for head, entry in notes.items():
        if entry is None:
            out.append(head)
            continue
        metrics = sorted(entry["metrics"], key=lambda m: m != primary)
        also = f" (also {', '.join(repr(m) for m in metrics[1:])})" if len(metrics) > 1 else ""
        where = dict.fromkeys("the per-arm table" if re.fullmatch(r"the .+ aggregates", w) else w
                              for w in entry["where"])
        out.append(f"metric {metrics[0]!r} is missing in {head}{also}; left out of {' and '.join(where)}")
    return out


def write_report(frame: pd.DataFrame, out: str | os.PathLike, *, title: str | None = None,
                 by: Sequence[str] | None = None, metric: str | None = None, method: str = "welch", band: str = "std",
                 include_unfinished: bool = False, draw: bool = True, job: str | None = None) -> Report:
    """Write the report of a flat frame (:func:`analysis.load.load_runs`) into ``out`` (``draw=False``: no figures).

    ``job`` names the job kind (:data:`analysis.jobs.KINDS`; default the runs' own); ``by`` the arm factors
    (default the kind's).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = KINDS.get(job or "") or job_kind(frame)
    by = kind.arms if by is None else tuple(by)
    page = Page(out, draw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AnalysisWarning)
        runs = trial_summary(frame)
        trials = join_stages(runs)
        labels = dict(zip(trials["retrain_run_id"], trials["trial"])) | dict(zip(trials["run_id"], trials["trial"]))
        frame = frame.assign(trial=frame["run_id"].map(labels))   # the curves of a job without arms: per trial
        if not include_unfinished:
            frame, trials = _finished(frame, trials, page)
            runs = runs[runs["status"] == "FINISHED"]
        missing_by = [k for k in by if k not in trials.columns]
        if missing_by:
            page.note(f"arm factor(s) {', '.join(missing_by)} not in the runs: arms by "
                      f"{', '.join(k for k in by if k in trials.columns) or 'nothing'}")
            by = tuple(k for k in by if k in trials.columns)
        outside = trials[trials[list(by)].isna().all(axis=1)] if by else trials[:0]
        in_arms = trials.drop(index=outside.index) if len(outside) < len(trials) else trials
        primary = choose_metric(in_arms, metric)
        higher = _higher_is_better(primary)
        name = title or frame.attrs.get("source", {}).get("experiment") or "experiment"
        heading = f"{kind.title}: {name}"

        page.heading(heading, 1)
        page.text(f"Source: {describe_source(frame)}. Generated {_dt.datetime.now().isoformat(timespec='seconds')}.")
        parents = sorted({str(p) for p in trials["parent"].dropna()}) if "parent" in trials else []
        if len(parents) > 1:
            page.text(f"Trials of {len(parents)} Tune experiments: {', '.join(parents)} (--parent NAME keeps one).")
        page.text(_intro(kind, in_arms, by, primary, "higher" if higher else "lower", method))
        ctx = Context(page, kind, frame, in_arms, by, primary, higher, method, band)
        trials_section(ctx, trials)
        if len(in_arms) < len(trials):   # a study's runs of other stages (transfer, planted) have no arm
            page.text(f"{len(outside)} run(s) without {', '.join(by)} are in no arm: "
                      f"{', '.join(sorted(map(str, outside['trial'])))}.")
        for section in kind.sections:
            SECTIONS[section](ctx)
            if section == "arms" and "arm" in runs and runs["arm"].notna().any():
                study_section(ctx, runs)

    for note in _merge([str(w.message) for w in caught if issubclass(w.category, AnalysisWarning)], primary):
        page.note(note)
    markdown, html_path = page.write(heading)
    return Report(out=out, markdown=markdown, html=html_path, tables=page.tables, figures=page.figures,
                  notes=page.notes, kind=kind.name)


# --------------------------------------------------------------------------------------------------
# Command line


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--experiment", default="", help="MLflow experiment (ess-ablation) or Tune experiment name")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tracking-uri", default="", help="MLflow store (else $MLFLOW_TRACKING_URI, else "
                        "sqlite:///STORAGE/mlflow.db)")
    source.add_argument("--ray-results", default="", help="Ray Tune results folder instead of MLflow")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE, help="where the jobs keep mlflow.db")
    parser.add_argument("--parent", default=None, help="only the trials of this Tune experiment (parent run)")
    parser.add_argument("--out", default="", help="report folder (default: runs/analysis/EXPERIMENT)")
    parser.add_argument("--job", choices=sorted(KINDS), default=None,
                        help="report as this job kind (default: the job that wrote the runs)")
    parser.add_argument("--arm", default="", help="columns that define an arm (default: the job's: mode,steps,"
                        "n_inter,m for searches, genotype_label for a retrain job, task,cell for transfer)")
    parser.add_argument("--metric", default="auto", help="primary metric (default: test_ppl when every trial "
                        "was retrained, else final_valid_ppl; test/f1 for transfer)")
    parser.add_argument("--test", choices=("welch", "bootstrap"), default="welch", help="pairwise test")
    parser.add_argument("--band", choices=figs.BANDS, default="std", help="band of the epoch curves")
    parser.add_argument("--include-unfinished", action="store_true", help="also FAILED/KILLED/RUNNING trials")
    parser.add_argument("--no-figures", dest="draw", action="store_false", help="tables only (faster)")
    parser.add_argument("--no-genotypes", dest="genotypes", action="store_false",
                        help="skip the per-epoch genotype artifacts (faster on a remote store)")
    args = parser.parse_args(argv)
    if not args.experiment and not args.ray_results:
        parser.error("give --experiment NAME (and --tracking-uri URI or --ray-results DIR)")
    return args


@run_main
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    frame = load_runs(args.experiment or None, tracking_uri=args.tracking_uri or None,
                      ray_results=args.ray_results or None, parent=args.parent, genotypes=args.genotypes,
                      storage_path=args.storage_path)
    name = args.experiment or Path(args.ray_results).resolve().name
    out = Path(args.out or Path("runs") / "analysis" / name)
    by = tuple(k.strip() for k in args.arm.split(",") if k.strip()) or None
    report = write_report(frame, out, title=name, by=by, metric=args.metric, method=args.test, band=args.band,
                          include_unfinished=args.include_unfinished, draw=args.draw, job=args.job)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"report ({KINDS[report.kind].title if report.kind else 'Report'}): {report.markdown} and {report.html}")
    print(f"tables: {', '.join(sorted(p.name for p in report.tables.values()))} in {out / 'tables'}")
    if report.figures:
        print(f"figures: {', '.join(sorted(report.figures))} (PNG and SVG) in {out / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["HIGHER_IS_BETTER", "PRIMARY", "VALUES", "Report", "choose_metric", "html_table", "main",
           "markdown_table", "write_report"]
