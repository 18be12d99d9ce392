"""docs/results.md from a finished study: its tables, figures, commands, a plain reading of the numbers.

    python -m analysis.results --study runs/tune/study-cpu-2 --out docs/results.md [--notes notes.md]
    python -m analysis.results --data docs/results/data --out docs/results.md     # from the committed rows
    python -m analysis.results --study runs/tune/study-pilot-1 --out docs/pilot.md --pilot   # a pilot

``--study`` reads the study's experiment folder (``summary.json``: the job's own tables, :mod:`analysis.study`;
its MLflow store: the per-part diagnostics of every search epoch, for the figures; its Tune files: the cost)
into its raw data folder (:mod:`analysis.study_data`, ``<out stem>/data``); the Markdown file is always rendered
from that folder, so ``--data`` rewrites it byte for byte. Figures go beside it (``<out stem>/``); every file is
written atomically. ``--notes FILE`` is the hand-written discussion: kept in the data folder (``discussion.md``)
and appended to the page, so that ``--data`` rewrites the discussion too; without it the folder's is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import figures as figs
from analysis.figures import genotype_picture
from analysis.genotypes import op_frequencies
from analysis.md import interval as _interval
from analysis.md import num as _f
from analysis.md import p_value as _p
from analysis.md import ratio_words
from analysis.md import table as _table
from analysis.stats import compare_arms, describe_sample
from analysis.study import planted_table, pooled_log_sd, required_seeds
from analysis.study_data import DISCUSSION, StudyData, from_experiment, read_data, write_data, write_discussion
from analysis.study_sections import PARTS, design_sections, part_identity_share
from ess.checkpoint import atomic_write_text
from ess.cli import run_main
from ess.errors import ConfigError

REMEDY_ARMS = ("joint", "joint-beta", "joint-pt")


def part_shares(trials: pd.DataFrame, arms: Sequence[str],
                genotypes: Mapping[tuple[str, int], Any] | None = None) -> list[dict[str, Any]]:
    """Per search arm: the identity share per searched part of the retrained genotypes (``genotypes``; else the
    final epoch's, from the store), the final epoch's decided share and relative entropy, n."""
    out = []
    for arm in arms:
        group = trials[trials.get("arm") == arm] if "arm" in trials else trials.iloc[0:0]
        if not len(group):
            continue
        row: dict[str, Any] = {"arm": arm, "n": len(group)}
        mine = [g for (a, _), g in (genotypes or {}).items() if a == arm]
        for part in PARTS:
            key = f"genotype/{part}/identity_share"
            values = pd.to_numeric(group[key], errors="coerce") if key in group else pd.Series(dtype=float)
            if mine and values.notna().any():   # a searched part: its share in what was retrained
                values = pd.Series([part_identity_share(g, part) for g in mine], dtype=float)
            row[part] = _f(values.mean(), 2) if values.notna().any() else "-"
        for key, name in (("genotype/decided_share", "decided_share"), ("arch/entropy", "entropy")):
            values = pd.to_numeric(group[key], errors="coerce") if key in group else pd.Series(dtype=float)
            row[name] = _f(values.mean(), 3) if values.notna().any() else "-"
        out.append(row)
    return out


def study_figures(summary: Mapping[str, Any], search_arms: Sequence[str], store: pd.DataFrame, frame: pd.DataFrame,
                  genotypes: Mapping[tuple[str, int], Any], figures_dir: Path, rel: str) -> list[str]:
    """The report's figures for the study's arms (``analysis.figures``), each a Markdown line; a figure the
    data cannot make is left out with the reason. The op heatmap counts the retrained genotypes."""
    arms = [a["arm"] for a in summary["arms"]]
    rows = store[store["arm"].isin(arms)] if "arm" in store else store
    searched = store[store["arm"].isin(search_arms)] if "arm" in store else store
    if "genotype" in searched:
        searched = searched.assign(genotype=[
            genotypes[(a, int(s))].to_json(None) if (a, int(s)) in genotypes else g
            for a, s, g in zip(searched["arm"], searched["seed"], searched["genotype"])])
    epochs = frame[frame["arm"].isin(search_arms)] if "arm" in frame else frame
    plots = [
        ("final", "retrained valid perplexity per arm: geometric mean with its 95% CI, dots are seeds",
         lambda: figs.final_figure(rows, "retrain_valid_ppl", ("arm",), scale="auto")),
        ("curves", "the supernet's valid perplexity over the search, per search arm (mean +- 1 sd over seeds)",
         lambda: figs.curves_figure(epochs, "valid/ppl", ("arm",), stage="search")),
        ("entropy", "the architecture weights' entropy relative to uniform (left) and the derived genotype's "
                    "identity share (right), over the search (mean +- 1 sd over seeds)",
         lambda: figs.entropy_figure(epochs, ("arm",))),
        ("parts", "per part: entropy, mass on none and identity share over the search",
         lambda: figs.parts_figure(epochs, ("arm",))),
        ("ops", "ops of the retrained genotypes, per search arm (share of the part's edges)",
         lambda: figs.op_heatmap_figure(op_frequencies(searched, ("arm",)))),
    ]
    figures_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, caption, make in plots:
        try:
            figs.save_figure(make(), figures_dir / name, formats=("png",))
        except Exception as err:  # noqa: BLE001 - a figure the data cannot make is left out, said
            out += [f"({name} figure left out: {str(err).splitlines()[0]})", ""]
            continue
        out += [f"![{name}]({rel}/{name}.png)", "", f"*{caption}*", ""]
    return out


def transfer_tests(transfer: pd.DataFrame) -> list[dict[str, Any]]:
    """Per task, Welch's t-test on test F1 between every pair of cells, Holm over the task's pairs."""
    rows = []
    for task, group in transfer.groupby("task", sort=False):
        runs = group.rename(columns={"cell": "arm"})
        if runs["arm"].nunique() < 2:
            continue
        pairs = compare_arms(runs, "test_f1", by=("arm",))
        rows += [{"task": task, **r} for r in pairs.to_dict(orient="records")]
    return rows


def _with_intervals(trials: pd.DataFrame, grouped: pd.DataFrame) -> list[dict[str, Any]]:
    """``grouped``'s rows with the 95% interval of the mean dev and test F1 of each (task, cell)."""
    rows = []
    for r in grouped.to_dict(orient="records"):
        mine = trials[(trials["task"] == r["task"]) & (trials["cell"] == r["cell"])]
        for split in ("dev", "test"):
            d = describe_sample(mine[f"{split}_f1"].tolist(), scale="percent")
            r[f"{split}_ci"] = f"[{_f(d['ci_low'], 2)}, {_f(d['ci_high'], 2)}]"
        rows.append(r)
    return rows


def seeds_for_gains(summary: Mapping[str, Any], arms: Sequence[str] = ("joint", "intra"),
                    gains: Sequence[float] = (0.02, 0.03, 0.05), alpha: float = 0.05) -> tuple[float, dict[float, int]]:
    """The pooled seed sd of log retrained valid perplexity over ``arms``, and per relative gain the seeds per
    arm that detect it with 80% power (two-sided ``alpha``, exact noncentral t: :func:`analysis.study.required_seeds`).

    The sd is itself an estimate (its degrees of freedom are the seeds less one per arm), so these counts are
    as uncertain as it is."""
    sd, _ = pooled_log_sd(summary["trials"], arms, "retrain_valid_ppl")
    if not math.isfinite(sd):
        return math.nan, {}
    return sd, {g: required_seeds(-math.log(1 - g) / sd, alpha) for g in gains}


def reading(summary: Mapping[str, Any]) -> list[str]:
    """Plain sentences about the headline comparisons, as the numbers say them, on the scale of the geometric
    means the tables show: their difference, their ratio and its 95% interval (Welch on log perplexity)."""
    lines = []
    arms = {a["arm"]: a for a in summary["arms"]}
    for key, h in summary.get("headline", {}).items():
        other = key.removeprefix("joint_vs_")
        mine, theirs = (arms.get(a, {}).get("retrain_valid_ppl_geo_mean") for a in ("joint", other))
        head = f"- **joint vs {other}**: geometric-mean retrained valid perplexity {_f(mine)} vs {_f(theirs)}"
        if "ratio" not in h:   # a summary written before ratios were reported: arithmetic means only
            lines.append(f"{head}; the arithmetic means differ by {_f(h['diff'], 2)}, Holm-adjusted p = "
                         f"{h['p_holm']:.3g}.")
            continue
        if min(h.get("n_a", 0), h.get("n_b", 0)) < 2 or not math.isfinite(h.get("ci_low", math.nan)):
            lines.append(f"{head}: no comparison (it needs at least two seeds per arm).")
            continue
        verdict = ratio_words("joint", other, h["ci_low"], h["ci_high"])
        lines.append(f"{head} (difference {h['diff']:+.1f}); ratio {h['ratio']:.3f}, 95% interval "
                     f"[{h['ci_low']:.3f}, {h['ci_high']:.3f}] (n = {h['n_a']} and {h['n_b']}; Welch on log "
                     f"perplexity p = {h['p_value']:.3g}, Holm p = {h['p_holm']:.3g}): {verdict}.")
    return lines


def _question(summary: Mapping[str, Any]) -> str:
    """What the study asks: its pre-registered comparisons, or (a study before designs) its issue's question."""
    pairs = [p.split(":") for p in (summary.get("design") or {}).get("primary", [])]
    firsts = list(dict.fromkeys(a for a, _ in pairs))
    if len(firsts) != 1:
        return ("The study of issue \"does joint search beat intra-only and inter-only at equal budget?\", run to "
                "the end on this project's CPU machine.")
    others = [b for _, b in pairs]
    listed = ", ".join(others[:-1]) + (" and " if len(others) > 1 else "") + others[-1]
    return (f"The pre-registered study (docs/study-design.md): does the {firsts[0]} arm give a better language model "
            f"than {listed}, at equal budget and parameter count? Its design follows the main table.")


def render(data: StudyData, figures_dir: Path, rel: str, pilot: bool = False, page: str = "") -> str:
    """results.md from a study's raw data (:mod:`analysis.study_data`); its figures into ``figures_dir``.
    ``pilot``: the study is a pilot (exploratory; docs/study-design.md): said so, with what it decides. ``page``: the
    page's path without ``.md`` as its reproduce line names it (default ``rel``, the figures' folder)."""
    summary, store, frame = data.summary, data.trials, data.epochs
    arms = summary["arms"]
    source = (f"Every number below comes from the study's `summary.json` and its MLflow experiment "
              f"`{summary['mlflow_experiment']}`; `python -m analysis.results` wrote this file.")
    md = ([f"# Pilot: {summary['name']} (exploratory)", "",
           "The pilot of the study (docs/study-design.md section 1): it measures the seed noise, the evidence of "
           "each search arm, the ranking quality of the proxies and the time of every stage, from which the "
           "pre-registered study is sized. None of its comparisons is a result of the study. " + source, ""]
          if pilot else
          [f"# Results: {summary['name']}", "", _question(summary) + " " + source, ""])
    md += ["## Main table: retrained language models at equal budget and parameter count", "",
           "Geometric mean over seeds of the retrained model's valid and test perplexity (PTB), with the 95% "
           "interval of the geometric mean (Student-t on log perplexity); parameters of the retrained model; "
           "search and retrain time (training seconds, mean per seed).", "",
           _table(arms, [("arm", "arm"), ("n", "n"), ("seeds", "seeds"),
                         ("valid ppl [95% CI]", lambda r: _interval(r, "retrain_valid_ppl")),
                         ("test ppl [95% CI]", lambda r: _interval(r, "retrain_test_ppl")),
                         ("params", lambda r: _f(r.get("params"), 0)),
                         ("search s", lambda r: _f(r.get("search_seconds"), 0)),
                         ("retrain s", lambda r: _f(r.get("retrain_seconds"), 0)),
                         ("train tokens (search + retrain)",
                          lambda r: _f((r.get("search_tokens") or 0) + (r.get("retrain_tokens") or 0), 0))])]
    md += design_sections(data, pilot)
    label = (" (exploratory: the pilot's few seeds)" if pilot else
             " (exploratory: joint against every arm, on retrained valid perplexity)" if summary.get("design") else "")
    md += [f"## Reading{label}", "", *reading(summary)]
    sd, need = seeds_for_gains(summary)
    if need and not pilot and not summary.get("design"):   # else the design's (or the pilot's) power statement
        n = sum(t['arm'] in ('joint', 'intra') for t in summary['trials'])
        md += [f"- At the pooled seed sd of log perplexity of joint and intra ({100 * sd:.1f}%, from n = {n} "
               f"retrains, {n - 2} degrees of freedom: an estimate as uncertain as that), detecting a relative "
               "gain of " + ", ".join(f"{100 * g:.0f}% takes about {k} seeds per arm" for g, k in need.items())
               + " (80% power, two-sided 5%, exact noncentral t)."]
    trials, minutes, hours = data.cost.trials, data.cost.minutes, data.cost.busy_hours
    if trials:
        md += ["", "## Cost", "", f"{trials} trials, {sum(minutes.values()):,.0f} trial-minutes ("
               + ", ".join(f"{k} {v:,.0f}" for k, v in minutes.items()) + f"); {hours:.1f} h of wall time with "
               "at least one trial running (from the Tune result files of the experiment folder)."]
    md += [""]
    pairs = summary["pairs"].get("retrain_valid_ppl", []) + summary["pairs"].get("retrain_test_ppl", [])
    md += [f"## Every pair of arms{' (exploratory)' if pilot or summary.get('design') else ''}", "",
           "Welch's t-test on the perplexities (diff = a - b), Holm-adjusted over the pairs of each metric, Hedges' g.",
           "",
           _table(pairs, [("metric", "metric"), ("a", "arm_a"), ("b", "arm_b"), ("diff", lambda r: _f(r["diff"], 2)),
                          ("95% CI", lambda r: f"[{_f(r['ci_low'], 1)}, {_f(r['ci_high'], 1)}]"),
                          ("p", lambda r: _p(r["p_value"])), ("Holm p", lambda r: _p(r["p_holm"])),
                          ("Hedges' g", lambda r: _f(r["hedges_g"], 2))])]
    search_arms = [a["arm"] for a in arms if any(t["arm"] == a["arm"] and t["kind"] == "search"
                                                 for t in summary["trials"])]
    if len(store):
        genotypes = data.genotypes
        md += ["## What the searches decided", "",
               "Per search arm, mean over seeds: the retrained genotype's share of `identity` edges per searched "
               "part (an inter cell without nodes left out), and at the search's last epoch the share of the "
               "argmax choices that are decided (weight at least 1.5x the runner-up) and the architecture "
               "weights' entropy relative to uniform (1 = uniform).", "",
               _table(part_shares(store, search_arms, genotypes),
                      [("arm", "arm"), ("n", "n"), ("identity share: intra", "intra"), ("history", "history"),
                       ("input", "input"), ("decided share", "decided_share"), ("relative entropy", "entropy")])]
        remedies = [a for a in REMEDY_ARMS if a in search_arms]
        if len(remedies) > 1:
            by_arm = {a["arm"]: a for a in arms}
            rows = [{**r, "valid": _interval(by_arm[r["arm"]], "retrain_valid_ppl")}
                    for r in part_shares(store, remedies, genotypes)]
            md += ["## Collapse remedies (issue \"A search that can say no\", item 6)", "",
                   "joint: no remedy; joint-beta: beta-decay regularisation (beta-DARTS); joint-pt: perturbation-"
                   "based derivation (DARTS-PT). Identity share per part of the retrained genotype, the last epoch's "
                   "decided share and the retrained valid perplexity.", "",
                   _table(rows, [("arm", "arm"), ("n", "n"), ("identity: intra", "intra"), ("history", "history"),
                                 ("input", "input"), ("decided share", "decided_share"),
                                 ("retrained valid ppl [95% CI]", "valid")])]
        md += ["## Figures", "", *study_figures(summary, search_arms, store, frame, genotypes, figures_dir, rel)]
    for arm in ("joint", "intra"):
        best = summary.get("best", {}).get(arm)
        if best and best.get("genotype"):
            genotype_picture(best["genotype"], figures_dir / f"best_{arm}", title=f"best {arm} genotype")
            md += [f"Best {arm} genotype (seed {best['seed']}, retrained valid ppl {_f(best['retrain_valid_ppl'])}):",
                   "", f"![best {arm}]({rel}/best_{arm}.png)", ""]
    if summary.get("transfer"):
        t = pd.DataFrame(summary["transfer"])
        g = t.groupby(["task", "cell"])[["dev_f1", "test_f1"]].agg(["mean", "std", "count"]).reset_index()
        g.columns = ["_".join(c).strip("_") for c in g.columns]
        md += ["## Transfer: the best joint and intra cells in the NER tagger", "",
               "Span F1 in percent (conlleval) of the BiRNN-CRF tagger with each cell: mean ± standard deviation "
               "over seeds, and the 95% Student-t interval of the mean (within [0, 100]).",
               "", _table(_with_intervals(t, g),
                          [("task", "task"), ("cell", "cell"), ("n", "dev_f1_count"),
                           ("dev F1", lambda r: f"{_f(r['dev_f1_mean'], 2)} ± {_f(r['dev_f1_std'], 2)}"),
                           ("test F1", lambda r: f"{_f(r['test_f1_mean'], 2)} ± {_f(r['test_f1_std'], 2)}"),
                           ("dev 95% CI", "dev_ci"), ("test 95% CI", "test_ci")])]
        tests = transfer_tests(t)
        if tests:
            md += ["", "Exploratory: Welch's t-test on test F1 between every pair of cells of a task, Holm-adjusted "
                   "over the pairs of that task (diff = a - b, percentage points).", "",
                   _table(tests, [("task", "task"), ("a", "arm_a"), ("b", "arm_b"),
                                  ("n", lambda r: f"{r['n_a']} + {r['n_b']}"), ("diff", lambda r: _f(r["diff"], 2)),
                                  ("95% CI", lambda r: f"[{_f(r['ci_low'], 2)}, {_f(r['ci_high'], 2)}]"),
                                  ("p", lambda r: _p(r["p_value"])), ("Holm p", lambda r: _p(r["p_holm"]))])]
    if summary.get("wikitext2"):
        md += ["## WikiText-2: the PTB-searched cells retrained", "",
               "One seed each (n = 1: no interval), same budget as on PTB.", "",
               _table(summary["wikitext2"], [("genotype", "arm"), ("valid ppl", lambda r: _f(r["retrain_valid_ppl"])),
                                             ("test ppl", lambda r: _f(r["retrain_test_ppl"])),
                                             ("params", lambda r: _f(r["params"], 0))])]
    rows = planted_table(summary.get("planted") or [])
    if rows:
        md += ["## The planted-structure corpora (known truth)", "",
               "Per corpus (the next token depends on `x_{t-k}`) and arm, over seeds: the test perplexity of the "
               "retrained model, its distance to the corpus's exact floor in nats (mean and 95% interval) against "
               "the count model `P(x_t | x_{t-k})`'s, and for searches the share of seeds whose derived input cell "
               "reads the planted input (lag convention: method section 9), against the share of random genotypes of "
               "the same space that read it (exact) with the one-sided binomial p of recovering as often by chance; "
               "and which lag the input cells chose: of their edges from earlier inputs (`x_{t-1}` .. `x_{t-m+1}`), "
               "how many read the planted one, against `1 / (m - 1)` for random genotypes (one-sided binomial p, "
               "pooled over seeds; method section 9); and, as for the searches of PTB, how often the seeds agree "
               "against random genotypes of the same space (method section 11): the evidence checked where the truth "
               "is known.",
               "",
               _table(rows, [("k", "k"), ("arm", "arm"), ("n", "n"), ("floor ppl", lambda r: _f(r["floor_ppl"], 3)),
                             ("test ppl", lambda r: _f(r["test_ppl_geo_mean"], 2)),
                             ("nats above floor [95% CI]", lambda r: f"{_f(r['gap_nats'], 3)} "
                              f"[{_f(r['gap_ci_low'], 3)}, {_f(r['gap_ci_high'], 3)}]"),
                             ("count model", lambda r: _f(r["count_model_gap_nats"], 3)),
                             ("recovered", lambda r: "-" if r["recovery_rate"] is None else
                              f"{r['recovered']} of {r['n']}"),
                             ("random genotypes", lambda r: "-" if r.get("chance_rate") is None else
                              f"{100 * r['chance_rate']:.0f}%"),
                             ("p", lambda r: "-" if r.get("recovery_p") is None else _p(r["recovery_p"])),
                             ("planted-lag edges", lambda r: "-" if r.get("lag_p") is None else
                              f"{r['lag_edges']} of {r['lagged_edges']}"),
                             ("chance", lambda r: "-" if r.get("lag_p") is None else f"{100 * r['lag_chance']:.0f}%"),
                             ("p (lag)", lambda r: "-" if r.get("lag_p") is None else _p(r["lag_p"])),
                             ("seeds agree (vs random)", lambda r: "-" if r.get("agree_p") is None else
                              f"{r['agree']:.0%} vs {r['agree_null']:.0%}"),
                             ("p (agree)", lambda r: "-" if r.get("agree_p") is None else _p(r["agree_p"]))])]
    md += ["## Reproduce", "", "```bash",
           summary.get("command") or
           (f"python tune_jobs/study.py --name {summary['name']} --arms {','.join(a['arm'] for a in arms)}"
            + "".join(f" --{k} {','.join(map(str, summary[k]))}" for k in ("seeds", "stages") if summary.get(k))
            + "   # this study; after a stop: the same with --resume"),
           "python tune_jobs/study.py --preset study-gpu --address auto     # the paper's scale, on GPUs",
           f"python -m analysis.results --data {page or rel}/data --out {page or rel}.md{' --pilot' if pilot else ''}"
           "    # this file, from the committed rows",
           f"python -m analysis.report --experiment {summary['name']}       # the MLflow report of the same runs",
           "```", "", f"MLflow experiment `{summary['mlflow_experiment']}`, parent run `{summary['parent_run_id']}`.",
           ""]
    if data.discussion.strip():
        md += ["## Discussion", "", data.discussion.strip(), ""]
    return "\n".join(md)


def main_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.results", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", help="the study's experiment folder (holds summary.json): its data folder is "
                                        "written to <out stem>/data first")
    source.add_argument("--data", help="a study's raw data folder (analysis.study_data)")
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--notes", default="", help="a Markdown file: the discussion, kept in the data folder "
                                                    "(discussion.md) and appended (default: the folder's own)")
    parser.add_argument("--command", default="",
                        help="with --study: the command that ran the study, kept in its data folder and shown under "
                             "Reproduce (default: one built from its arms, seeds and stages)")
    parser.add_argument("--pilot", action="store_true",
                        help="the study is a pilot (exploratory): say so, and what it decides for the main study")
    return parser.parse_args(argv)


def _notes(path: str) -> str | None:
    """The discussion of ``--notes`` (None: not given)."""
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: --notes: {err.strerror}") from None


def _from_here(path: Path) -> str:
    """``path`` as the reproduce line names it: from the folder the command runs in (the repository root for
    docs/results.md), or by its name where it lies outside that folder."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(path).name


@run_main
def main(argv: list[str] | None = None) -> int:
    args = main_args(argv)
    out = Path(args.out)
    figures = out.parent / out.stem
    if args.command and args.data:
        raise ConfigError("--command: give it with --study (it is kept in the data folder's summary.json)")
    notes = _notes(args.notes)
    if args.data:
        folder = Path(args.data)
        data = read_data(folder)   # a folder that is not a study's data is refused before anything is written
        if notes is not None:
            write_discussion(folder, notes)
            data = dataclasses.replace(data, discussion=notes)
    else:
        folder = figures / "data"
        kept = (folder / DISCUSSION).read_text() if (folder / DISCUSSION).is_file() else ""
        data = from_experiment(args.study)
        data = dataclasses.replace(data, discussion=kept if notes is None else notes)
        if args.command:
            data = dataclasses.replace(data, summary={**data.summary, "command": args.command})
        data = read_data(write_data(data, folder))   # the page is what --data renders from the folder
    atomic_write_text(out, render(data, figures, figures.name, args.pilot, page=_from_here(figures)))
    print(f"{out} (figures in {figures}, data in {folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
