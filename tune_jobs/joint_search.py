"""Joint ESS search over several seeds on Ray Tune, then a short retrain of the best genotypes.

    python tune_jobs/joint_search.py                      # cpu-small preset, local Ray, MLflow in runs/tune/mlflow.db
    python tune_jobs/joint_search.py --smoke-test         # about a minute
    python tune_jobs/joint_search.py --preset paper --address auto --storage-path /mnt/shared/tune \\
        --tracking-uri http://127.0.0.1:5000             # on the cluster of cluster.yaml
    python tune_jobs/joint_search.py --resume --name NAME # continue an interrupted experiment

Prints the best genotype, where its artifacts are, and the `mlflow ui` command.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from ess.adapters.ray import jobs
from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.experiment import Experiment
from ess.adapters.ray.grid import search_variants
from ess.adapters.ray.trainables import retrain_trainable, search_trainable
from ess.adapters.ray.trial import RETRAIN_METRIC, SEARCH_METRIC
from ess.space.genotype import ESSGenotype
from ess.space.refs import load_genotype


def search_stage(exp: Experiment, job: JobConfig, variants: list[dict[str, Any]], *,
                 callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Stage 1: one search trial per variant (seed x node counts), in parallel as resources allow."""
    return exp.stage("search", search_trainable, exp.spec(search=job.search), variants, callbacks=callbacks)


def retrain_stage(exp: Experiment, job: JobConfig, genotypes: dict[str, ESSGenotype], info: dict[str, dict[str, Any]],
                  *, callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Stage 2: one retrain trial per chosen genotype."""
    return exp.stage("retrain", retrain_trainable, exp.spec(train=job.train, genotypes=genotypes, genotype_info=info),
                     [{"genotype_label": label} for label in genotypes], callbacks=callbacks)


def run(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Search over ``job.seeds`` (and node counts), then retrain the ``top_k`` best genotypes."""
    with jobs.experiment("joint_search", job, resume=resume) as exp:
        job = exp.job
        found = jobs.succeeded(search_stage(exp, job, search_variants(job), callbacks=callbacks), "search")
        searched = [{"label": r["label"], **r["variant"], "valid_ppl": r["metrics"].get(SEARCH_METRIC),
                     "decided": bool(r["metrics"].get("genotype/decided")),
                     "decided_share": r["metrics"].get("genotype/decided_share"),
                     "arch_entropy": r["metrics"].get("arch/entropy"),
                     "node_id": r["node_id"], "epochs": r["metrics"].get("epoch"),
                     "genotype": r["metrics"].get("genotype"), "checkpoint": r["checkpoint"],
                     "mlflow_run_id": r["metrics"].get("mlflow_run_id"),
                     "artifacts": jobs.artifact_files(r["checkpoint"], "search")}
                    for r in sorted(found, key=lambda r: jobs.finite(r["metrics"].get(SEARCH_METRIC)))]
        best, retrained = searched[0], []
        if job.retrain:
            chosen = searched[:job.top_k]
            genotypes = {c["label"]: load_genotype(c["genotype"]) for c in chosen}
            info = {c["label"]: {"seed": c.get("seed"), "mode": c.get("mode"), "search_valid_ppl": c["valid_ppl"],
                                 "search_run_id": c["mlflow_run_id"]} for c in chosen}
            done = jobs.succeeded(retrain_stage(exp, job, genotypes, info, callbacks=callbacks), "retrain")
            for r in sorted(done, key=lambda r: jobs.finite(r["metrics"].get(RETRAIN_METRIC))):
                retrained.append({"label": r["variant"]["genotype_label"],
                                  "retrain_valid_ppl": r["metrics"].get(RETRAIN_METRIC),
                                  "retrain_test_ppl": r["metrics"].get("retrain/test/ppl"),
                                  "checkpoint": r["checkpoint"], "mlflow_run_id": r["metrics"].get("mlflow_run_id"),
                                  "artifacts": jobs.artifact_files(r["checkpoint"], "retrain")})
            searched_best = next(c for c in searched if c["label"] == retrained[0]["label"])
            best = {**searched_best, **retrained[0],
                    "artifacts": {**searched_best["artifacts"],
                                  **{f"retrain/{k}": v for k, v in retrained[0]["artifacts"].items()}}}
        why = ("lowest retrained valid perplexity (the validation split's select half) among the top_k searches by "
               "search valid perplexity" if retrained else "lowest search valid perplexity")
        evidence = {mode: jobs.arm_evidence([c for c in searched if c.get("mode") == mode],
                                            dataclasses.replace(job.search, mode=mode)).to_dict()
                    for mode in dict.fromkeys(c.get("mode") for c in searched)}
        summary = {"best": best, "searched": searched, "retrained": retrained, "selected_by": why,
                   "evidence": evidence, "decided": best["decided"],
                   "best_search_valid_ppl": jobs.finite(best["valid_ppl"]),
                   **({"best_retrain_valid_ppl": jobs.finite(best["retrain_valid_ppl"])} if retrained else {})}
        exp.set_tags({"ess.genotype": best["genotype"], "best_trial": best["label"],
                      "ess.decided": str(best["decided"]).lower(),
                      **{f"evidence.{mode}": e["statement"] for mode, e in evidence.items()}})
        jobs.write_best_genotype(exp, load_genotype(best["genotype"]), title=f"best genotype: {best['label']}")
        return exp.finish(summary, {"best_genotype.json": json.dumps(json.loads(best["genotype"]), indent=2) + "\n",
                                    "README.txt": jobs.readme(summary), "trials.csv": _trials_csv(searched, retrained)})


def _trials_csv(searched: list[dict[str, Any]], retrained: list[dict[str, Any]]) -> str:
    """The key columns of every trial (the parent run's table in MLflow): mode, seed, perplexities, decided."""
    import pandas as pd  # the tune extra's: imported once ess.adapters.ray has checked it (one line when missing)

    after = {r["label"].removeprefix("retrain_"): r for r in retrained}
    return pd.DataFrame([{"trial": s["label"], "mode": s.get("mode"), "seed": s.get("seed"),
                          "search_valid_ppl": s["valid_ppl"], "decided": s["decided"],
                          "decided_share": s["decided_share"],
                          "retrain_valid_ppl": after.get(s["label"], {}).get("retrain_valid_ppl"),
                          "retrain_test_ppl": after.get(s["label"], {}).get("retrain_test_ppl")}
                         for s in searched]).to_csv(index=False)


def report(summary: dict[str, Any]) -> None:
    jobs.print_best(summary)
    print(f"  chosen by: {summary['selected_by']}")
    print(f"  best_genotype.json, best_genotype.png, summary.json, README.txt: {summary['experiment_dir']}/")
    for mode, evidence in summary["evidence"].items():
        print(f"  {mode} searches:")
        jobs.print_evidence(evidence, summary["best"] if summary["best"].get("mode") == mode else {})


def main(argv: list[str] | None = None) -> int:
    return jobs.main("joint_search", run, report, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
