"""The study: does joint search beat intra-only (DARTS), inter-only and random search at equal budget?

    python tune_jobs/study.py                              # study-cpu: about 2.5 hours on 2 cores
    python tune_jobs/study.py --smoke-test                 # minutes
    python tune_jobs/study.py --preset study-gpu --address auto --storage-path /mnt/shared/tune
    python tune_jobs/study.py --resume --name NAME         # continue a stopped study where it stopped

Stages (``--stages``), all on real PTB unless said, every retrain at the same budget and parameter count
(``train.match_params``), seeded with its arm's seed and validated on the validation split's select half; an arm
of no primary comparison runs on the first ``exploratory_seeds`` seeds only (0: all):

1. ``search``: each search arm (``--arms``: intra = DARTS, inter, joint, rsws = random search with weight sharing;
   ``joint-beta``, ``joint-pt``, ``joint-rank``: joint with a remedy or a ranked derivation) x seed: a search,
   then a retrain of its genotype; per arm the evidence that its searches found something (seed agreement
   against random genotypes, stability; docs/method.md section 11);
2. ``baselines``: an LSTM and the published DARTS_V2 cell retrained per seed;
3. ``random``: per seed, ``random_k`` random genotypes of the joint space short-retrained
   (``random_epochs``), the best by valid perplexity retrained in full;
4. ``tau``: ranking quality (``ess.adapters.ray.study_stages``): a short against a ``tau_factor`` times longer
   retrain, each joint-space supernet against the long retrain, Kendall's tau over ``tau_genotypes`` genotypes;
5. ``planted``: known truth: ``planted_arms`` on the planted corpora of ``planted_k`` over ``planted_seeds``;
6. ``transfer``: the best joint and the best intra genotype in the tagger on CoNLL-2003 against an LSTM, over
   ``transfer_seeds`` (empty: the seeds);
7. ``wikitext2``: those two and DARTS_V2 retrained on WikiText-2 (the first of ``transfer_seeds``, else of the seeds).

The primary analysis is ``--design`` (``ess.study.StudyDesign``): its comparisons, Holm-adjusted over those
only, on its metric; everything else is exploratory.

Writes summary.json, study.csv (one row per retrain), study_arms.csv (mean and 95% interval per arm),
study_pairs.csv (Welch, Holm, Hedges' g) and the tables of the other stages.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from analysis.study import best_by_arm, study_files, study_lines, study_summary
from ess.adapters.ray import jobs
from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.experiment import Experiment
from ess.adapters.ray.grid import transfer_variants
from ess.adapters.ray.study_stages import planted_stage, tau_stage
from ess.adapters.ray.trainables import retrain_trainable, search_trainable, transfer_trainable
from ess.adapters.ray.trial import RETRAIN_METRIC, SEARCH_METRIC
from ess.space.refs import load_genotype
from ess.space.sample import random_genotypes
from ess.study import ARMS, Arm, named_arms


def tune_stage(exp: Experiment, stage: str, trainable: Any, spec: dict[str, Any], variants: list[dict[str, Any]],
               callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """One stage: a grid of trials (:meth:`Experiment.stage`); the trials that did not fail."""
    return jobs.succeeded(exp.stage(stage, trainable, spec, variants, callbacks=callbacks), stage)


def row(r: dict[str, Any], arm: str, kind: str, seed: int, genotype: str | None = None) -> dict[str, Any]:
    """One retrained model of the study: its arm, seed, perplexities, size, costs and genotype."""
    m = r["metrics"]
    search_s, search_t = jobs.run_costs(r["checkpoint"], "search") if kind == "search" else (0.0, 0.0)
    retrain_s, retrain_t = jobs.run_costs(r["checkpoint"], "retrain")
    return {"arm": arm, "kind": kind, "seed": seed, "search_valid_ppl": m.get(SEARCH_METRIC),
            "retrain_valid_ppl": m.get(RETRAIN_METRIC), "retrain_test_ppl": m.get("retrain/test/ppl"),
            "params": m.get("retrain/params"),
            "identity_share": m.get("selected/identity_share", m.get("genotype/identity_share")),
            "decided": m.get("selected/decided", m.get("genotype/decided")), "search_seconds": search_s,
            "search_tokens": search_t, "retrain_seconds": retrain_s, "retrain_tokens": retrain_t,
            "genotype": genotype or m.get("genotype"), "checkpoint": r["checkpoint"],
            "mlflow_run_id": m.get("mlflow_run_id")}


def run(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """The stages of ``job.stages``, in order; the later ones take each arm's best genotype of the first three."""
    arms = named_arms(job.arms)
    with jobs.experiment("study", job, resume=resume) as exp:
        job, trials, extra = exp.job, [], {}
        searches: list[dict[str, Any]] = []
        if "search" in job.stages:
            searches = search_stage(exp, job, [a for a in arms if a.kind == "search"], callbacks)
            trials += searches
            extra["evidence"] = {a: jobs.arm_evidence([t for t in searches if t["arm"] == a],
                                                      dataclasses.replace(job.search, mode=ARMS[a].mode)).to_dict()
                                 for a in dict.fromkeys(t["arm"] for t in searches)}
        if "baselines" in job.stages:
            trials += baseline_stage(exp, job, [a for a in arms if a.kind == "baseline"], callbacks)
        if "random" in job.stages and any(a.kind == "random" for a in arms):
            found, extra["random_screen"] = random_stage(exp, job, callbacks)
            trials += found
        best = best_by_arm(trials)
        if "transfer" in job.stages and {"joint", "intra"} <= set(best):
            extra["transfer"] = transfer_stage(exp, job, best, callbacks)
        if "wikitext2" in job.stages and {"joint", "intra"} <= set(best):
            extra["wikitext2"] = wikitext2_stage(exp, job, best, callbacks)
        if "tau" in job.stages:
            extra["tau"] = tau_stage(exp, job, searches, tune_stage, callbacks)
        if "planted" in job.stages:
            extra["planted"] = planted_stage(exp, job, tune_stage, callbacks)
        extra.update(stages=list(job.stages), seeds=list(job.seeds))
        summary = study_summary(trials, job.arms, extra, best, job.design)
        exp.set_tags({"study.arms": ",".join(job.arms), "study.seeds": ",".join(map(str, job.seeds))})
        return exp.finish(summary, study_files(summary))


def search_stage(exp: Experiment, job: JobConfig, arms: list[Arm], callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """1. Each search arm x seed: a search, then a retrain of its genotype seeded with the search's seed; seed by
    seed, so that a study stopped early has its arms on the same seeds."""
    variants = sorted(({"label": a.name, "arm": a.name, "mode": a.mode, "seed": s, **a.search} for a in arms
                       for s in job.arm_seeds(a.name)), key=lambda v: job.seeds.index(v["seed"]))
    if not variants:
        return []
    spec = exp.spec(search=job.search, train=job.train, retrain_seed="search")
    return [row(r, r["variant"]["arm"], "search", r["variant"]["seed"])
            for r in tune_stage(exp, "search", search_trainable, spec, variants, callbacks)]


def baseline_stage(exp: Experiment, job: JobConfig, arms: list[Arm],
                   callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """2. Each baseline cell retrained per seed (an LSTM's trial names DARTS_V2 only to fill the spec)."""
    genotypes = {f"{a.name}_s{s}": "DARTS_V2" if a.cell == "lstm" else a.cell for a in arms
                 for s in job.arm_seeds(a.name)}
    variants = [{"genotype_label": f"{a.name}_s{s}", "arm": a.name, "seed": s,
                 "cell": "lstm" if a.cell == "lstm" else "ess"} for a in arms for s in job.arm_seeds(a.name)]
    if not variants:
        return []
    out = []
    for r in tune_stage(exp, "baselines", retrain_trainable, exp.spec(train=job.train, genotypes=genotypes), variants,
                        callbacks):
        v = r["variant"]
        out.append(row(r, v["arm"], "baseline", v["seed"], "lstm" if v["cell"] == "lstm" else None))
    return out


def random_stage(exp: Experiment, job: JobConfig,
                 callbacks: Sequence[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """3. Per seed, ``random_k`` random genotypes of the joint space short-retrained, the best retrained in full;
    the retrains and the screen's table."""
    space = {k: getattr(job.search, k) for k in ("steps", "m", "n_inter", "intra_ops", "inter_ops")}
    seeds = job.arm_seeds("random")
    drawn = {f"random_s{s}_{i}": g for s in seeds for i, g in enumerate(random_genotypes(s, job.random_k, **space))}
    short = dataclasses.replace(job.train, epochs=job.random_epochs)
    screen = tune_stage(exp, "random-screen", retrain_trainable, exp.spec(train=short, genotypes=drawn),
                        [{"genotype_label": g, "arm": "random-screen", "seed": int(g.split("_")[1][1:])}
                         for g in drawn], callbacks)
    table = [{"label": r["variant"]["genotype_label"], "seed": r["variant"]["seed"],
              "valid_ppl": r["metrics"].get(RETRAIN_METRIC)} for r in screen]
    best = {s: min((r for r in screen if r["variant"]["seed"] == s),
                   key=lambda r: jobs.finite(r["metrics"].get(RETRAIN_METRIC))) for s in seeds}
    chosen = {f"random_s{s}": drawn[r["variant"]["genotype_label"]] for s, r in best.items()}
    out = []
    for r in tune_stage(exp, "random", retrain_trainable, exp.spec(train=job.train, genotypes=chosen),
                        [{"genotype_label": f"random_s{s}", "arm": "random", "seed": s} for s in seeds],
                        callbacks):
        label, seed = r["variant"]["genotype_label"], r["variant"]["seed"]
        screened = [jobs.run_costs(x["checkpoint"], "retrain") for x in screen if x["variant"]["seed"] == seed]
        # the screen is this arm's search: its cost is counted as the searches' are
        out.append({**row(r, "random", "random", seed, chosen[label].to_json(None)),
                    "search_seconds": sum(s for s, _ in screened), "search_tokens": sum(t for _, t in screened)})
    return out, table


def transfer_stage(exp: Experiment, job: JobConfig, best: dict[str, dict[str, Any]],
                   callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """4. The best joint and the best intra genotype in the tagger, against an LSTM."""
    jobs.ensure_tasks(job.tasks, job.data_dir or None)
    cells = {"lstm": "lstm", "joint": load_genotype(best["joint"]["genotype"]),
             "intra": load_genotype(best["intra"]["genotype"])}
    done = tune_stage(exp, "transfer", transfer_trainable, exp.spec(transfer=job.transfer, cells=cells),
                      transfer_variants(job, list(cells)), callbacks)
    return [{"task": r["variant"]["task"], "cell": r["variant"]["cell_label"], "seed": r["variant"]["seed"],
             "dev_f1": r["metrics"].get("dev/f1"), "test_f1": r["metrics"].get("test/f1"),
             "params": r["metrics"].get("params")} for r in done]


def wikitext2_stage(exp: Experiment, job: JobConfig, best: dict[str, dict[str, Any]],
                    callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """5. The best joint and intra genotypes and DARTS_V2 retrained on WikiText-2 (the first transfer seed)."""
    jobs.ensure_corpus("wikitext-2", job.data_dir or None)
    genotypes = {"joint": load_genotype(best["joint"]["genotype"]),
                 "intra": load_genotype(best["intra"]["genotype"]), "darts_v2": "DARTS_V2"}
    wt2 = dataclasses.replace(job.train, dataset="wikitext-2")
    seed = (job.transfer_seeds or job.seeds)[0]
    done = tune_stage(exp, "wikitext2", retrain_trainable, exp.spec(train=wt2, genotypes=genotypes),
                      [{"genotype_label": g, "arm": f"wt2-{g}", "seed": seed} for g in genotypes], callbacks)
    return [row(r, r["variant"]["genotype_label"], "wikitext2", seed) for r in done]


def report(summary: dict[str, Any]) -> None:
    print("\n".join(study_lines(summary)))


def main(argv: list[str] | None = None) -> int:
    return jobs.main("study", run, report, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
