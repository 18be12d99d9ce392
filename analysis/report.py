"""The ablation report: tables (CSV), figures (PNG and SVG), Markdown and HTML in one folder.

    python -m analysis.report --experiment ess-ablation --out reports/ablation
    python -m analysis.report --experiment ablation-smoke-20250101-120000 --tracking-uri sqlite:///runs/tune/mlflow.db
    python -m analysis.report --experiment NAME --ray-results runs/tune --out reports/NAME

``--experiment`` is an MLflow experiment (every trial run in it, ``--parent`` keeps one Tune
experiment) or a Tune experiment name; with ``--ray-results`` it selects the job folder under DIR.
The store defaults to the jobs' own (``$MLFLOW_TRACKING_URI``, else ``runs/tune/mlflow.db``).

Written to ``--out``: ``report.md``, ``report.html``, ``tables/*.csv`` and ``figures/*.png|svg``;
every file atomically (a reader never sees half a file). Only finished trials are analysed unless
``--include-unfinished``. Problems (an unknown or empty experiment, a metric no run has) are one
line and exit status 2; runs left out (a metric missing, an arm with one seed) are listed under
"Notes" in the report and on stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import figures as figs
from analysis.arms import ARM
from analysis.errors import AnalysisWarning, EmptyExperimentError, MissingMetricError
from analysis.genotypes import op_frequencies, predecessor_frequencies, rank_genotypes
from analysis.load import describe_source, load_runs, trial_summary
from analysis.stats import aggregate_many, compare_arms, epoch_curves, evolution
from ess.adapters.mlflow import DEFAULT_STORAGE
from ess.checkpoint import atomic_write_text
from ess.cli import run_main
from ess.errors import ESSError

#: the per-trial values aggregated per arm, when the runs have them
VALUES = ("final_valid_ppl", "best_valid_ppl", "retrain_valid_ppl", "test_ppl", "search_seconds", "params",
          "dev/f1", "test/f1")
#: the primary metric (figure, ranking, comparison) unless --metric: the first of these the runs have
PRIMARY = ("test_ppl", "retrain_valid_ppl", "final_valid_ppl", "test/f1", "dev/f1")
HIGHER_IS_BETTER = ("f1", "acc", "precision", "recall")
TRIAL_COLUMNS = ("run_name", "parent", "status", "mode", "seed", "steps", "n_inter", "m", "genotype_label", "cell",
                 "task", "epochs", "final_valid_ppl", "best_valid_ppl", "retrain_valid_ppl", "test_ppl",
                 "final_arch_entropy", "final_identity_share", "search_seconds", "wall_seconds", "params",
                 "dev/f1", "test/f1")
MAX_ROWS = 40
_TESTS = {"welch": "Welch t-test", "bootstrap": "studentized bootstrap"}


@dataclass
class Report:
    """What :func:`write_report` wrote: the folder, the files by kind, and the notes."""

    out: Path
    markdown: Path
    html: Path
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, list[Path]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Formatting


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if abs(value) >= 100:
            return f"{value:.2f}"
        return f"{value:.4g}"
    return str(value)


def markdown_table(table: pd.DataFrame, columns: Sequence[str] | None = None, max_rows: int = MAX_ROWS) -> str:
    """A GitHub-flavoured Markdown table (numbers to 4 significant digits; ``|`` escaped)."""
    if columns is not None:
        table = table[[c for c in columns if c in table.columns]]
    if not len(table.columns):
        return "(no columns)\n"
    shown = table.head(max_rows)

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(str(c)) for c in shown.columns) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(shown[c]) else "---" for c in shown.columns) + "|"]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(esc(_cell(v)) for v in row) + " |")
    if len(table) > max_rows:
        lines.append(f"\n({len(table) - max_rows} more rows in the CSV)")
    return "\n".join(lines) + "\n"


def html_table(table: pd.DataFrame, columns: Sequence[str] | None = None, max_rows: int = MAX_ROWS) -> str:
    if columns is not None:
        table = table[[c for c in columns if c in table.columns]]
    head = table.head(max_rows)
    shown = (head.map(_cell) if hasattr(head, "map") else head.applymap(_cell)) if len(table) else table
    text = shown.to_html(index=False, border=0, classes="table", escape=True, na_rep="")
    if len(table) > max_rows:
        text += f"<p class=\"more\">({len(table) - max_rows} more rows in the CSV)</p>"
    return text


# --------------------------------------------------------------------------------------------------
# The report


def _higher_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in HIGHER_IS_BETTER)


def _has(summary: pd.DataFrame, column: str) -> bool:
    return column in summary and pd.to_numeric(summary[column], errors="coerce").notna().any()


def choose_metric(summary: pd.DataFrame, metric: str | None = None) -> str:
    """``metric`` when given (it must exist), else the first of :data:`PRIMARY` the runs have."""
    if metric and metric != "auto":
        if not _has(summary, metric):
            known = [c for c in summary.columns if _has(summary, c) and c not in ("seed", "steps", "n_inter", "m")]
            raise MissingMetricError(f"--metric: no run has {metric!r} (numeric columns: {', '.join(known)})")
        return metric
    for name in PRIMARY:
        if _has(summary, name):
            return name
    raise MissingMetricError(f"metric: the runs have none of {', '.join(PRIMARY)} (a metric missing in every run); "
                             "pass --metric NAME")


class _Builder:
    """Collects sections (Markdown and HTML side by side), tables and figures."""

    def __init__(self, out: Path, draw: bool = True):
        self.out, self.draw = out, draw
        self.md: list[str] = []
        self.html: list[str] = []
        self.tables: dict[str, Path] = {}
        self.figures: dict[str, list[Path]] = {}
        self.notes: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, name: str, table: pd.DataFrame, caption: str, columns: Sequence[str] | None = None,
              shown: pd.DataFrame | None = None) -> None:
        """Write ``tables/<name>.csv`` (all columns) and show ``shown`` (or ``table``) in the report."""
        path = atomic_write_text(self.out / "tables" / f"{name}.csv", table.to_csv(index=False))
        self.tables[name] = path
        rel = f"tables/{name}.csv"
        view = table if shown is None else shown
        self.md.append(f"{caption} ([{name}.csv]({rel}))\n\n" + markdown_table(view, columns))
        self.html.append(f"<p>{html.escape(caption)} (<a href=\"{rel}\">{html.escape(name)}.csv</a>)</p>"
                         + html_table(view, columns))

    def figure(self, name: str, make, caption: str) -> None:
        """Draw with ``make(base)`` (returns the files); a figure that cannot be drawn becomes a note."""
        if not self.draw:
            return
        base = self.out / "figures" / name
        try:
            paths = make(base)
        except ESSError as err:
            self.notes.append(f"figure {name} left out: {err}")
            return
        self.figures[name] = paths
        png, svg = f"figures/{name}.png", f"figures/{name}.svg"
        self.md.append(f"![{caption}]({png})\n\n*{caption}* ([SVG]({svg}))\n")
        self.html.append(f"<figure><a href=\"{svg}\"><img src=\"{png}\" alt=\"{html.escape(caption)}\"></a>"
                         f"<figcaption>{html.escape(caption)} (<a href=\"{svg}\">SVG</a>)</figcaption></figure>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table.table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
table.table th,table.table td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
table.table th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}
.notes li{color:#8a4b00}.more{font-size:12px;color:#777}code{background:#f3f3f3;padding:0 3px}"""


def _save(fig_fn, base: Path) -> list[Path]:
    fig = fig_fn()
    try:
        return figs.save_figure(fig, base)
    finally:
        fig.clear()


def write_report(frame: pd.DataFrame, out: str | os.PathLike, *, title: str | None = None,
                 by: Sequence[str] = ARM, metric: str | None = None, method: str = "welch", band: str = "std",
                 include_unfinished: bool = False, draw: bool = True) -> Report:
    """Write the report of a flat frame (:func:`analysis.load.load_runs`) into ``out`` (``draw=False``: no figures)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by = tuple(by)
    b = _Builder(out, draw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AnalysisWarning)
        statuses = frame.drop_duplicates("run_id")["status"].fillna("UNKNOWN").value_counts()
        if not include_unfinished:
            kept = frame[frame["status"] == "FINISHED"]
            if not len(kept):
                raise EmptyExperimentError(
                    f"no finished trial runs ({', '.join(f'{n} {s}' for s, n in statuses.items())}); "
                    "pass --include-unfinished to analyse them anyway")
            left = int(statuses.sum() - statuses.get("FINISHED", 0))
            if left:
                b.notes.append(f"{left} unfinished trial run(s) left out "
                               f"({', '.join(f'{n} {s}' for s, n in statuses.items() if s != 'FINISHED')}); "
                               "--include-unfinished keeps them")
            frame = kept
        summary = trial_summary(frame)
        missing_by = [k for k in by if k not in summary.columns]
        if missing_by:
            b.notes.append(f"arm factor(s) {', '.join(missing_by)} not in the runs: arms by "
                           f"{', '.join(k for k in by if k in summary.columns) or 'nothing'}")
            by = tuple(k for k in by if k in summary.columns)
        primary = choose_metric(summary, metric)
        better = "higher" if _higher_is_better(primary) else "lower"
        name = title or frame.attrs.get("source", {}).get("experiment") or "experiment"

        b.heading(f"Ablation report: {name}", 1)
        b.text(f"Source: {describe_source(frame)}. Generated {_dt.datetime.now().isoformat(timespec='seconds')}.")
        parents = sorted({str(p) for p in summary["parent"].dropna()}) if "parent" in summary else []
        if len(parents) > 1:
            b.text(f"Trials of {len(parents)} Tune experiments: {', '.join(parents)} (--parent NAME keeps one).")
        seeds = sorted({str(s) for s in summary["seed"].dropna()}) if "seed" in summary else []
        b.text(f"{len(summary)} trial run(s) in {summary.groupby(list(by), dropna=False).ngroups if by else 1} "
               f"arm(s) by {', '.join(by) or '(none)'}; seeds {', '.join(seeds) or '-'}; primary metric "
               f"{primary} ({better} is better); pairwise test: {_TESTS[method]}.")

        b.heading("Trials")
        b.table("trials", summary, "One row per trial: final and best search valid perplexity, retrained valid "
                "and test perplexity, search time (training seconds summed over epochs), parameters.",
                TRIAL_COLUMNS)
        b.tables["runs"] = atomic_write_text(out / "tables" / "runs.csv", frame.to_csv(index=False))
        b.text("Every epoch of every trial (config, metrics, genotype): tables/runs.csv.")

        b.heading("Per arm")
        values = [v for v in VALUES if _has(summary, v)]
        arms = aggregate_many(summary, values, by, warn_single=False)
        single = arms[(arms["metric"] == primary) & (arms["n"] < 2)]["arm"].tolist()
        if single:
            b.notes.append(f"arm(s) with a single run of {primary}: {', '.join(single)} (no standard deviation, "
                           "confidence interval or test; run more seeds)")
        b.table("arms", arms, "Mean, sample standard deviation (ddof=1), 95% Student-t confidence interval of "
                "the mean and count over seeds, per arm and metric.",
                ["arm", "metric", "n", "mean", "std", "ci_low", "ci_high", "min", "max", "seeds"])
        b.figure("final_metric", lambda base: _save(lambda: figs.final_figure(summary, primary, by), base),
                 f"{figs.label(primary)} per arm: mean with 95% CI error bars; dots are seeds")

        if "arm" in summary and summary["arm"].notna().any():
            from analysis.study import study_tables

            study_arms, study_pairs = study_tables(summary)
            b.heading("Study: arms at equal budget and parameter count")
            b.table("study_arms", study_arms, "Per study arm: seeds, and the geometric mean of the retrained valid and "
                    "test perplexity with its 95% interval (Student-t on log perplexity); mean parameters.",
                    ["arm", "n", "seeds", "retrain_valid_ppl_geo_mean", "retrain_valid_ppl_ci_low",
                     "retrain_valid_ppl_ci_high", "retrain_test_ppl_geo_mean", "retrain_test_ppl_ci_low",
                     "retrain_test_ppl_ci_high", "params"])
            b.table("study_pairs", study_pairs, "Welch t-test per pair of study arms, Holm-adjusted over the pairs, "
                    "Hedges' g.", ["metric", "arm_a", "arm_b", "n_a", "n_b", "diff", "ci_low", "ci_high", "p_value",
                                   "p_holm", "hedges_g"])

        b.heading("Pairwise comparison of arms")
        compared = [primary] + [v for v in ("final_valid_ppl",) if v != primary and v in values]
        tables = []
        for value in compared:
            tables.append(compare_arms(summary, value, by, method=method))
        comparisons = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        b.table("comparisons", comparisons,
                f"{_TESTS[method].capitalize()} per pair of arms (diff = a - b with its 95% CI), Holm-adjusted "
                "p over the pairs, effect sizes Cohen's d and Hedges' g.",
                ["metric", "arm_a", "arm_b", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "t", "df",
                 "p_value", "p_holm", "hedges_g"])

        b.heading("Search curves")
        b.figure("valid_ppl_curves", lambda base: _save(lambda: figs.curves_figure(frame, "valid/ppl", by, band=band),
                                                         base),
                 "search valid perplexity per epoch and arm (line: mean over seeds; band: spread over seeds)")
        try:
            curves = epoch_curves(frame, "valid/ppl", by)
            b.table("curves", curves, "Search valid perplexity per arm and epoch over seeds.",
                    ["arm", "epoch", "n", "mean", "std", "ci_low", "ci_high"])
        except MissingMetricError as err:
            b.notes.append(f"table curves left out: {err}")

        b.heading("Architecture-weight entropy and identity share")
        b.figure("entropy", lambda base: _save(lambda: figs.entropy_figure(frame, by, band=band), base),
                 "entropy of the architecture-weight softmaxes relative to its maximum and the identity share "
                 "of the genotype derived at each epoch")
        try:
            evo = evolution(frame, by)
            last = evo[evo["epoch"].isin([evo["epoch"].min(), evo["epoch"].max()])]
            b.table("evolution", evo, "Entropy and identity share per arm at the first and last search epoch "
                    "(every epoch in the CSV).", ["arm", "metric", "epoch", "n", "mean", "std"], shown=last)
        except MissingMetricError as err:
            b.notes.append(f"table evolution left out: {err}")

        b.figure("parts", lambda base: _save(lambda: figs.parts_figure(frame, by, band=band), base),
                 "per searched part: relative entropy, mass on none and identity share of the derived genotype, "
                 "over search epochs (a fixed 0-1 scale)")

        b.heading("Derived genotypes")
        try:
            ranking = rank_genotypes(summary, primary, higher_is_better=better == "higher", by=by)
            b.table("genotypes", ranking, f"Distinct final genotypes ranked by mean {primary}.",
                    ["rank", "mean", "best", "n", "arms", "runs", "identity_share", "describe"])
            best = ranking.iloc[0]
            b.figure("best_genotype", lambda base: figs.genotype_picture(
                best["genotype"], base, title=f"best genotype: {primary} {_cell(float(best['mean']))}"),
                f"the best genotype by {primary} ({best['arms']}: {best['runs']})")
            ops = op_frequencies(summary, by)
            wide = ops.assign(column=ops["part"] + ":" + ops["op"]).pivot_table(
                index="arm", columns="column", values="share", aggfunc="first", sort=False).reset_index()
            b.table("op_frequency", ops, "Share of each op among the chosen edges of each searched part, per arm.",
                    shown=wide)
            b.figure("op_heatmap", lambda base: _save(lambda: figs.op_heatmap_figure(ops), base),
                     "ops chosen in the derived genotypes, per arm (share of the part's edges)")
            preds = predecessor_frequencies(summary, by)
            b.table("predecessor_frequency", preds, "Share of each predecessor among a node's incoming edges, per arm.",
                    ["arm", "part", "node", "pred_name", "count", "share"])
        except MissingMetricError as err:
            b.notes.append(f"genotype tables left out: {err}")

    for w in caught:
        if issubclass(w.category, AnalysisWarning) and str(w.message) not in b.notes:
            b.notes.append(str(w.message))
    if b.notes:
        b.md.append("## Notes\n\n" + "\n".join(f"- {n}" for n in b.notes) + "\n")
        b.html.append("<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in b.notes)
                      + "</ul>")
    markdown = atomic_write_text(out / "report.md", "\n".join(b.md))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Ablation report: {html.escape(str(name))}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(b.html) + "\n</body></html>\n")
    html_path = atomic_write_text(out / "report.html", page)
    return Report(out=out, markdown=markdown, html=html_path, tables=b.tables, figures=b.figures, notes=b.notes)


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
    parser.add_argument("--arm", default=",".join(ARM), help="columns that define an arm (default: %(default)s)")
    parser.add_argument("--metric", default="auto", help="primary metric (default: test_ppl if retrained, "
                        "else final_valid_ppl)")
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
    by = tuple(k.strip() for k in args.arm.split(",") if k.strip())
    report = write_report(frame, out, title=name, by=by, metric=args.metric, method=args.test, band=args.band,
                          include_unfinished=args.include_unfinished, draw=args.draw)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"report: {report.markdown} and {report.html}")
    print(f"tables: {', '.join(sorted(p.name for p in report.tables.values()))} in {out / 'tables'}")
    if report.figures:
        print(f"figures: {', '.join(sorted(report.figures))} (PNG and SVG) in {out / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["HIGHER_IS_BETTER", "PRIMARY", "VALUES", "Report", "choose_metric", "html_table", "main",
           "markdown_table", "write_report"]
