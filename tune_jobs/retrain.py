"""Retrain genotypes on Ray Tune: built-ins, JSON files, or the best runs of an MLflow experiment.

    python tune_jobs/retrain.py --genotypes DARTS_V2,my_cell.json
    python tune_jobs/retrain.py --source-experiment ess-joint_search --source-run NAME --top-k 2
    python tune_jobs/retrain.py --preset paper --genotypes best_genotype.json --train "epochs=8000"
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ess.adapters.mlflow import best_runs, download_artifact
from ess.adapters.ray import jobs
from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.experiment import Experiment
from ess.adapters.ray.trainables import retrain_trainable
from ess.adapters.ray.trial import RETRAIN_METRIC, SEARCH_METRIC
from ess.errors import ConfigError
from ess.space.genotype import ESSGenotype, builtin_name
from ess.space.refs import load_genotype


def sources(job: JobConfig, exp: Experiment) -> tuple[dict[str, ESSGenotype | str], dict[str, dict[str, Any]]]:
    """``{label: built-in name | ESSGenotype}`` from ``job.genotypes`` or the best runs of an MLflow experiment."""
    genotypes: dict[str, ESSGenotype | str] = {}
    info: dict[str, dict[str, Any]] = {}
    for item in job.genotypes:
        name = builtin_name(item)
        if name is not None:
            genotypes[name] = name
            info[name] = {"source": "built-in"}
        else:
            path = Path(item).expanduser()
            label = path.stem
            while label in genotypes:
                label += "_"
            genotypes[label] = load_genotype(path)   # GenotypeError names the file
            info[label] = {"source": str(path.resolve())}
    if job.source_experiment:
        if exp.uri is None:
            raise ConfigError("source_experiment: tracking is off; give --tracking-uri")
        for run in best_runs(exp.uri, job.source_experiment, metric=SEARCH_METRIC, k=job.top_k,
                             phases=("search", "search+retrain"), parent_name=job.source_run or None):
            label = run.info.run_name or run.info.run_id[:8]
            while label in genotypes:
                label += "_"
            ref = run.data.tags.get("ess.genotype") or \
                download_artifact(exp.uri, run.info.run_id, "genotype.json", Path(exp.root) / "sources" / label)
            genotypes[label] = load_genotype(ref)
            info[label] = {"source": f"mlflow:{run.info.run_id}", "search_run_id": run.info.run_id,
                           "seed": run.data.tags.get("seed"), "mode": run.data.tags.get("mode"),
                           "search_valid_ppl": run.data.metrics.get(SEARCH_METRIC)}
    if not genotypes:
        raise ConfigError("genotypes: nothing to retrain; give --genotypes NAME_OR_FILE ... or --source-experiment")
    return genotypes, info


def as_text(ref: ESSGenotype | str) -> str:
    """A genotype as a summary shows it: a built-in's name, else compact JSON."""
    return ref if isinstance(ref, str) else ref.to_json(None)


def retrain_stage(exp: Experiment, job: JobConfig, genotypes: dict[str, ESSGenotype | str],
                  info: dict[str, dict[str, Any]],
                  *, callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """One retrain trial per genotype."""
    return exp.stage("retrain", retrain_trainable, exp.spec(train=job.train, genotypes=genotypes, genotype_info=info),
                     [{"genotype_label": label} for label in genotypes], callbacks=callbacks)


def run(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Retrain every source genotype; the best is the lowest validation perplexity."""
    with jobs.experiment("retrain", job, resume=resume) as exp:
        job = exp.job
        genotypes, info = sources(job, exp)
        done = jobs.succeeded(retrain_stage(exp, job, genotypes, info, callbacks=callbacks), "retrain")
        out = sorted(({"label": r["variant"]["genotype_label"],
                       "retrain_valid_ppl": r["metrics"].get(RETRAIN_METRIC),
                       "retrain_test_ppl": r["metrics"].get("retrain/test/ppl"), "checkpoint": r["checkpoint"],
                       "mlflow_run_id": r["metrics"].get("mlflow_run_id"),
                       "genotype": as_text(genotypes[r["variant"]["genotype_label"]]),
                       "artifacts": jobs.artifact_files(r["checkpoint"], "retrain")} for r in done),
                     key=lambda r: jobs.finite(r["retrain_valid_ppl"]))
        best_valid_ppl = jobs.finite(out[0]["retrain_valid_ppl"])
        return exp.finish({"best": out[0], "retrained": out, "best_valid_ppl": best_valid_ppl})


def main(argv: list[str] | None = None) -> int:
    return jobs.main("retrain", run, jobs.print_best, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
