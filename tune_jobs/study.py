"""The study: does joint search beat intra-only (DARTS), inter-only and random search at equal budget?

    python tune_jobs/study.py                              # study-cpu: about 2.5 hours on 2 cores
    python tune_jobs/study.py --smoke-test                 # minutes
    python tune_jobs/study.py --preset study-gpu --address auto --storage-path /mnt/shared/tune
    python tune_jobs/study.py --resume --name NAME         # continue a stopped study where it stopped

Stages (``--stages``), all on real PTB unless said, every retrain at the same budget and parameter count
(``train.match_params``) and seeded with its arm's seed:

1. ``search``: each search arm (``--arms``: intra = DARTS, inter, joint; ``joint-beta``, ``joint-pt``: joint
   with a collapse remedy, when asked for) x seed: a search, then a retrain of its genotype;
2. ``baselines``: an LSTM and the published DARTS_V2 cell retrained per seed;
3. ``random``: per seed, ``random_k`` random genotypes of the joint space short-retrained
   (``random_epochs``), the best by valid perplexity retrained in full;
4. ``transfer``: the best joint and the best intra genotype in the tagger on CoNLL-2003 against an LSTM;
5. ``wikitext2``: those two and DARTS_V2 retrained on WikiText-2 (first seed);
6. ``planted``: the three modes searched on the planted-structure corpus, against its exact floor.

Writes summary.json, study.csv (one row per retrain), study_arms.csv (mean and 95% interval per arm),
study_pairs.csv (Welch, Holm, Hedges' g) and the tables of the other stages.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune

from analysis.study import arm_table, pair_tests, ratio_tests
from ess.adapters.ray import jobs
from ess.adapters.ray.arms import arms as named_arms
from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.experiment import Experiment
from ess.adapters.ray.grid import transfer_variants
from ess.adapters.ray.trainables import retrain_trainable, search_trainable, transfer_trainable
from ess.adapters.ray.trial import RETRAIN_METRIC, SEARCH_METRIC
from ess.space.description import describe
from ess.space.refs import load_genotype
from ess.space.sample import random_genotypes


def tune_stage(exp: Experiment, stage: str, trainable: Any, spec: dict[str, Any], variants: list[dict[str, Any]],
               callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """One stage: a grid of trials, restored when resuming; the trials that did not fail."""
    wrapped = exp.with_resources(trainable)
    tuner = exp.restored(stage, wrapped) or tune.Tuner(
        wrapped, param_space={"ess": spec, "variant": tune.grid_search(variants)},
        tune_config=exp.tune_config(), run_config=exp.run_config(stage, callbacks))
    return jobs.succeeded(jobs.rows(exp.fit(tuner, stage, expected=len(variants))), stage)


def _totals(checkpoint: str | None, sub: str) -> tuple[float, float]:
    """Seconds and tokens of a run's training epochs (its metrics.jsonl in the trial's last checkpoint)."""
    path = Path(checkpoint or "", sub, "metrics.jsonl")
    if not checkpoint or not path.is_file():
        return float("nan"), float("nan")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seconds = sum(r.get("train/seconds", 0.0) for r in rows)
    return seconds, sum(r.get("train/seconds", 0.0) * r.get("train/tokens_per_s", 0.0) for r in rows)


def row(r: dict[str, Any], arm: str, kind: str, seed: int, genotype: str | None = None) -> dict[str, Any]:
    """One retrained model of the study: its arm, seed, perplexities, size, costs and genotype."""
    m = r["metrics"]
    search_s, search_t = _totals(r["checkpoint"], "search") if kind == "search" else (0.0, 0.0)
    retrain_s, retrain_t = _totals(r["checkpoint"], "retrain")
    return {"arm": arm, "kind": kind, "seed": seed, "search_valid_ppl": m.get(SEARCH_METRIC),
            "retrain_valid_ppl": m.get(RETRAIN_METRIC), "retrain_test_ppl": m.get("retrain/test/ppl"),
            "params": m.get("retrain/params"),
            "identity_share": m.get("selected/identity_share", m.get("genotype/identity_share")),
            "decided": m.get("selected/decided", m.get("genotype/decided")), "search_seconds": search_s,
            "search_tokens": search_t,
            "retrain_seconds": retrain_s, "retrain_tokens": retrain_t,
            "genotype": genotype or m.get("genotype"), "checkpoint": r["checkpoint"],
            "mlflow_run_id": m.get("mlflow_run_id")}


def run(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    arms = named_arms(job.arms)
    with jobs.experiment("study", job, resume=resume) as exp:
        job, trials, extra = exp.job, [], {}
        train = job.train
        if "search" in job.stages:
            variants = [{"label": a.name, "arm": a.name, "mode": a.mode, "seed": s, **a.search}
                        for a in arms if a.kind == "search" for s in job.seeds]
            if variants:
                spec = exp.spec(search=job.search, train=train, retrain_seed="search")
                for r in tune_stage(exp, "search", search_trainable, spec, variants, callbacks):
                    trials.append(row(r, r["variant"]["arm"], "search", r["variant"]["seed"]))
        if "baselines" in job.stages:
            base = [a for a in arms if a.kind == "baseline"]
            genotypes = {f"{a.name}_s{s}": "DARTS_V2" if a.cell == "lstm" else a.cell for a in base for s in job.seeds}
            variants = [{"genotype_label": f"{a.name}_s{s}", "arm": a.name, "seed": s,
                         "cell": "lstm" if a.cell == "lstm" else "ess"} for a in base for s in job.seeds]
            if variants:
                spec = exp.spec(train=train, genotypes=genotypes)
                for r in tune_stage(exp, "baselines", retrain_trainable, spec, variants, callbacks):
                    v = r["variant"]
                    trials.append(row(r, v["arm"], "baseline", v["seed"], "lstm" if v["cell"] == "lstm" else None))
        if "random" in job.stages and any(a.kind == "random" for a in arms):
            space = dict(steps=job.search.steps, m=job.search.m, n_inter=job.search.n_inter,
                         intra_ops=job.search.intra_ops, inter_ops=job.search.inter_ops)
            drawn = {f"random_s{s}_{i}": g for s in job.seeds for i, g in enumerate(random_genotypes(s, job.random_k,
                                                                                                      **space))}
            short = dataclasses.replace(train, epochs=job.random_epochs)
            screen = tune_stage(exp, "random-screen", retrain_trainable, exp.spec(train=short, genotypes=drawn),
                                [{"genotype_label": label, "arm": "random-screen", "seed": int(label.split("_")[1][1:])}
                                 for label in drawn],
                                callbacks)
            extra["random_screen"] = [{"label": r["variant"]["genotype_label"], "seed": r["variant"]["seed"],
                                       "valid_ppl": r["metrics"].get(RETRAIN_METRIC)} for r in screen]
            best = {s: min((r for r in screen if r["variant"]["seed"] == s),
                           key=lambda r: jobs.finite(r["metrics"].get(RETRAIN_METRIC))) for s in job.seeds}
            chosen = {f"random_s{s}": drawn[r["variant"]["genotype_label"]] for s, r in best.items()}
            for r in tune_stage(exp, "random", retrain_trainable, exp.spec(train=train, genotypes=chosen),
                                [{"genotype_label": f"random_s{s}", "arm": "random", "seed": s} for s in job.seeds],
                                callbacks):
                label, seed = r["variant"]["genotype_label"], r["variant"]["seed"]
                screened = [_totals(x["checkpoint"], "retrain") for x in screen if x["variant"]["seed"] == seed]
                # the screen is this arm's search: its cost is counted as the searches' are
                trials.append({**row(r, "random", "random", seed, chosen[label].to_json(None)),
                               "search_seconds": sum(s for s, _ in screened),
                               "search_tokens": sum(t for _, t in screened)})
        best = _best_by_arm(trials)
        if "transfer" in job.stages and {"joint", "intra"} <= set(best):
            jobs.ensure_tasks(job.tasks, job.data_dir or None)
            cells = {"lstm": "lstm", "joint": load_genotype(best["joint"]["genotype"]),
                     "intra": load_genotype(best["intra"]["genotype"])}
            done = tune_stage(exp, "transfer", transfer_trainable,
                              exp.spec(transfer=job.transfer, cells=cells), transfer_variants(job, list(cells)),
                              callbacks)
            extra["transfer"] = [{"task": r["variant"]["task"], "cell": r["variant"]["cell_label"],
                                  "seed": r["variant"]["seed"], "dev_f1": r["metrics"].get("dev/f1"),
                                  "test_f1": r["metrics"].get("test/f1"), "params": r["metrics"].get("params")}
                                 for r in done]
        if "wikitext2" in job.stages and {"joint", "intra"} <= set(best):
            jobs.ensure_corpus("wikitext-2", job.data_dir or None)
            genotypes = {"joint": load_genotype(best["joint"]["genotype"]),
                         "intra": load_genotype(best["intra"]["genotype"]), "darts_v2": "DARTS_V2"}
            wt2 = dataclasses.replace(train, dataset="wikitext-2")
            done = tune_stage(exp, "wikitext2", retrain_trainable, exp.spec(train=wt2, genotypes=genotypes),
                              [{"genotype_label": g, "arm": f"wt2-{g}", "seed": job.seeds[0]} for g in genotypes],
                              callbacks)
            extra["wikitext2"] = [row(r, r["variant"]["genotype_label"], "wikitext2", job.seeds[0]) for r in done]
        if "planted" in job.stages:
            extra["planted"] = _planted(exp, job, callbacks)
        summary = _summary(job, trials, extra, best)
        exp.set_tags({"study.arms": ",".join(job.arms), "study.seeds": ",".join(map(str, job.seeds))})
        return exp.finish(summary, _files(summary))


def _best_by_arm(trials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm, its retrain of lowest valid perplexity (the genotype the later stages take)."""
    best: dict[str, dict[str, Any]] = {}
    for t in trials:
        current = best.get(t["arm"])
        if current is None or jobs.finite(t["retrain_valid_ppl"]) < jobs.finite(current["retrain_valid_ppl"]):
            best[t["arm"]] = t
    return best


def _planted(exp: Experiment, job: JobConfig, callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """The three modes on the planted corpus: distance to its exact floor, and whether the input cell reads x_{t-k}."""
    import math

    from ess.data import get_spec
    from ess.data.planted import entropy_rate, reaches_planted_input

    params = get_spec("planted").generator
    floor = math.exp(entropy_rate(params))
    spec = exp.spec(search=dataclasses.replace(job.search, dataset="planted"),
                    train=dataclasses.replace(job.train, dataset="planted", match_params=""), retrain_seed="search")
    variants = [{"label": f"planted-{m}", "arm": f"planted-{m}", "mode": m, "seed": job.seeds[0]}
                for m in ("intra", "inter", "joint")]
    out = []
    for r in tune_stage(exp, "planted", search_trainable, spec, variants, callbacks):
        genotype = load_genotype(r["metrics"]["genotype"])
        out.append({"mode": r["variant"]["mode"], "floor_ppl": floor, "k": params.k,
                    "search_valid_ppl": r["metrics"].get(SEARCH_METRIC),
                    "retrain_valid_ppl": r["metrics"].get(RETRAIN_METRIC),
                    "reaches_x_t_minus_k": reaches_planted_input(genotype, params.k), "genotype": describe(genotype)})
    return out


def _summary(job: JobConfig, trials: list[dict[str, Any]], extra: dict[str, Any],
             best: dict[str, dict[str, Any]]) -> dict[str, Any]:
    table = arm_table(trials, [a for a in job.arms if any(t["arm"] == a for t in trials)])
    pairs = {v: pair_tests(trials, v) for v in ("retrain_valid_ppl", "retrain_test_ppl")}
    others = [o for o in ("intra", "random", "darts_v2", "lstm", "inter") if o in set(t["arm"] for t in trials)]
    headline = {}
    if "joint" in {t["arm"] for t in trials}:
        ratios = ratio_tests(trials, [("joint", o) for o in others])
        for h in ratios.to_dict(orient="records"):
            headline[f"joint_vs_{h['arm_b']}"] = {
                "diff": h["diff_geo"], "ratio": h["ratio"], "ci_low": h["ci_low"], "ci_high": h["ci_high"],
                "p_value": h["p_value"], "p_holm": h["p_holm"], "n_a": h["n_a"], "n_b": h["n_b"]}
    return {"arms": table.to_dict(orient="records"),
            "pairs": {k: v.to_dict(orient="records") for k, v in pairs.items()},
            "trials": trials, "headline": headline, **extra,
            "best": {arm: {"seed": t["seed"], "retrain_valid_ppl": t["retrain_valid_ppl"], "genotype": t["genotype"]}
                     for arm, t in best.items()}}


def _files(summary: dict[str, Any]) -> dict[str, str]:
    import pandas as pd

    files = {"study.csv": pd.DataFrame(summary["trials"]).to_csv(index=False),
             "study_arms.csv": pd.DataFrame(summary["arms"]).to_csv(index=False),
             "study_pairs.csv": pd.concat([pd.DataFrame(v) for v in summary["pairs"].values()]).to_csv(index=False)}
    for name in ("transfer", "wikitext2", "planted", "random_screen"):
        if summary.get(name):
            files[f"study_{name}.csv"] = pd.DataFrame(summary[name]).to_csv(index=False)
    return files


def report(summary: dict[str, Any]) -> None:
    import pandas as pd

    cols = ["arm", "n", "retrain_valid_ppl_geo_mean", "retrain_valid_ppl_ci_low", "retrain_valid_ppl_ci_high",
            "retrain_test_ppl_geo_mean", "params"]
    arms = pd.DataFrame(summary["arms"])
    if len(arms):
        print(arms[[c for c in cols if c in arms]].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for name, h in summary["headline"].items():
        print(headline_line(name, h))
    print(f"tables: {summary['experiment_dir']}/study_arms.csv, study_pairs.csv, study.csv")


def headline_line(name: str, h: dict[str, Any]) -> str:
    """One comparison of the summary in words: the ratio of geometric means and its interval, or why there is none."""
    if min(h.get("n_a", 0), h.get("n_b", 0)) < 2:
        return (f"{name}: no comparison: it needs at least two seeds per arm (has {h.get('n_a', 0)} and "
                f"{h.get('n_b', 0)})")
    verdict = ("cannot be told apart" if h["ci_low"] <= 1 <= h["ci_high"] else
               "lower" if h["ci_high"] < 1 else "higher")
    return (f"{name}: valid ppl ratio {h['ratio']:.3f} (geometric means differ by {h['diff']:+.2f}), 95% interval "
            f"[{h['ci_low']:.3f}, {h['ci_high']:.3f}]: {verdict}; Welch on log ppl p {h['p_value']:.3g}, "
            f"Holm p {h['p_holm']:.3g} (Holm over the joint_vs_* comparisons)")


def main(argv: list[str] | None = None) -> int:
    return jobs.main("study", run, report, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
