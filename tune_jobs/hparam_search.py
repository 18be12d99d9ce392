"""Hyperparameter search of the ESS search on Ray Tune: OptunaSearch (TPE; the study persisted in
an RDB so optuna-dashboard can watch it) with the ASHA scheduler, metric valid perplexity, over the
learning rates, dropouts, m and n_inter (or --config with a `space:` mapping).

    python tune_jobs/hparam_search.py --smoke-test
    python tune_jobs/hparam_search.py --num-samples 16
    optuna-dashboard sqlite:///runs/tune/NAME/optuna.db
    python tune_jobs/hparam_search.py --resume --name NAME   # Tuner.restore, searcher state included
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ess.adapters.ray import jobs
from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.grid import search_variants, tune_space
from ess.adapters.ray.spec import trial_config
from ess.adapters.ray.trainables import search_trainable
from ess.adapters.ray.trial import SEARCH_METRIC
from ess.adapters.storage import is_uri
from ess.errors import ConfigError


def optuna_storage_url(exp_root: str, job: JobConfig) -> str:
    """``--optuna-storage`` (a relative SQLite path made absolute), else ``sqlite:///<experiment>/optuna.db``."""
    if job.optuna_storage:
        url = job.optuna_storage
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = f"sqlite:///{Path(url[len('sqlite:///'):]).resolve()}"
        return url
    if is_uri(exp_root):
        raise ConfigError("optuna_storage: the storage is not a local path; give --optuna-storage (an RDB URL)")
    return f"sqlite:///{Path(exp_root) / 'optuna.db'}"


def run(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """``num_samples`` trials of one mode, seed and node counts; Optuna samples the space, ASHA stops the worst."""
    import optuna  # the tune extra's: imported once ess.adapters.ray has checked it (one line when missing)
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    with jobs.experiment("hparam_search", job, resume=resume) as exp:
        job = exp.job
        storage_url = optuna_storage_url(exp.root, job)
        study_name = job.study_name or job.name
        variant = search_variants(job)[0]   # one mode, seed and node counts; the space varies the rest
        space = tune_space(job)
        search = trial_config(job.search, {k: v for k, v in variant.items() if k not in space}, "hparam_search")
        searcher = OptunaSearch(metric=SEARCH_METRIC, mode="min", seed=variant["seed"], study_name=study_name,
                                storage=optuna.storages.RDBStorage(storage_url),
                                sampler=optuna.samplers.TPESampler(seed=variant["seed"]))
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=search.epochs,
                                  grace_period=min(job.grace_period, search.epochs),
                                  reduction_factor=job.reduction_factor)
        results = exp.stage("hparam", search_trainable, exp.spec(search=search), space=space, callbacks=callbacks,
                            search_alg=searcher, scheduler=scheduler, metric=SEARCH_METRIC, mode="min",
                            num_samples=job.num_samples)
        best = min(jobs.succeeded(results, "hparam"),
                   key=lambda r: jobs.finite(r["metrics"].get(SEARCH_METRIC)))
        study = optuna.load_study(study_name=study_name, storage=storage_url)
        summary = {"best_config": {k: best["variant"].get(k) for k in space},
                   "best_valid_ppl": jobs.finite(best["metrics"].get(SEARCH_METRIC)),
                   "best_genotype": best["metrics"].get("genotype"), "best_checkpoint": best["checkpoint"],
                   "trials": len(results), "optuna_storage": storage_url, "study_name": study_name,
                   "optuna_trials": len(study.trials), "dashboard": f"optuna-dashboard {storage_url}"}
        exp.log_params({f"best.{k}": v for k, v in summary["best_config"].items()})
        return exp.finish(summary)


def report(summary: dict[str, Any]) -> None:
    print(f"best config: {json.dumps(summary['best_config'])}  valid ppl {summary['best_valid_ppl']:.2f}")
    print(f"best genotype: {jobs.describe(summary.get('best_genotype'))}")
    print(f"best checkpoint: {summary.get('best_checkpoint')}")
    print(f"Optuna study {summary['study_name']!r} ({summary['optuna_trials']} trials): {summary['dashboard']}")


def main(argv: list[str] | None = None) -> int:
    return jobs.main("hparam_search", run, report, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
