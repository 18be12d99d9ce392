"""Ray Tune overhead: one search epoch called directly vs the same epoch as a one-trial Tuner.

    python bench/tune_overhead.py --preset smoke --repeats 3
    python bench/tune_overhead.py --preset cpu-small --repeats 1 --tracking-uri sqlite:///runs/bench-overhead/mlflow.db

*direct*: ``ess.search.search`` from the call to the end of epoch 1 (data, supernet, epoch, validation,
genotype, checkpoint). *in trial*: the same span inside the trial, as Tune measures it
(``time_total_s`` of the first result: adds the checkpoint copy of the run directory, the report, and
MLflow logging when on). *Tuner.fit*: the whole ``fit()`` (adds actor start, imports, scheduling,
teardown; Ray itself is started once before). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ess.adapters.mlflow import resolve_tracking_uri
from ess.adapters.mlflow.experiment_runs import ExperimentRuns
from ess.adapters.ray.config import JOB_PRESETS, RUN_DIR, job_base
from ess.adapters.ray.tracking import TrialRuns
from ess.adapters.ray.trainables import search_trainable
from ess.config import config_from_mapping, config_to_dict
from ess.errors import ESSError


def measure(search: Mapping[str, Any], *, repeats: int = 1, tracking_uri: str | None = None,
            workdir: str = "runs/bench-overhead") -> dict[str, Any]:
    """Seconds per repeat of each of the three spans, their means and the two ratios to *direct*."""
    import ray
    from ray import tune

    from ess.search import SearchConfig
    from ess.search import search as run_search

    root = Path(workdir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    values = {**search, "epochs": 1, "progress": False, "threads": int(search.get("threads", 1) or 1)}
    cfg = config_from_mapping(SearchConfig, values, "benchmark")
    out: dict[str, list[float]] = {"direct": [], "tune_in_trial": [], "tune_fit": []}
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, cfg.threads), include_dashboard=False, log_to_driver=False)
    try:
        for i in range(repeats):
            start = time.perf_counter()
            run_search(dataclasses.replace(cfg, run_dir=str(root / f"direct{i}")))
            out["direct"].append(time.perf_counter() - start)
            spec = {"job": "bench", "experiment_name": f"bench{i}", "mlflow_experiment": "ess-bench",
                    "checkpoint_every": 1, "system_metrics": tracking_uri is not None, "system_metrics_interval": 10.0,
                    "search": {**config_to_dict(cfg), "run_dir": f"{RUN_DIR}/search"}, "train": None}
            callbacks = []
            if tracking_uri is not None:   # the driver shows the trial in MLflow, as the jobs do
                runs = ExperimentRuns(tracking_uri, "ess-bench", f"bench{i}", str(root / f"bench{i}"))
                runs.open_parent(tags={"job": "bench"}, params={}, resume=False)
                callbacks = [TrialRuns(tracking_uri, "ess-bench", f"bench{i}", str(root / f"bench{i}"))]
            start = time.perf_counter()
            tuner = tune.Tuner(tune.with_resources(search_trainable, {"cpu": cfg.threads}), param_space={"ess": spec},
                               run_config=tune.RunConfig(name=f"tune{i}", storage_path=str(root), verbose=0,
                                                         callbacks=callbacks))
            result = tuner.fit()[0]
            out["tune_fit"].append(time.perf_counter() - start)
            if result.error is not None:
                raise ESSError(f"benchmark trial failed: {result.error}")
            out["tune_in_trial"].append(float(result.metrics["time_total_s"]))
    finally:
        ray.shutdown()
    mean = {k: sum(v) / len(v) for k, v in out.items()}
    return {"runs": out, "mean": mean, "ratio_in_trial": mean["tune_in_trial"] / mean["direct"],
            "ratio_fit": mean["tune_fit"] / mean["direct"], "config": config_to_dict(cfg)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/tune_overhead.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu-small", choices=list(JOB_PRESETS),
                        help="job preset whose search config is timed")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tracking-uri", default="none", help="MLflow store for the Tune run (default: none)")
    parser.add_argument("--workdir", default="runs/bench-overhead")
    args = parser.parse_args(argv)
    from ess.data import resolve_data_dir

    job = job_base("joint_search", args.preset)
    search = config_to_dict(dataclasses.replace(job, data_dir=str(resolve_data_dir(None).resolve())).search)
    uri = resolve_tracking_uri(args.tracking_uri, args.workdir)
    report = measure(search, repeats=args.repeats, tracking_uri=uri, workdir=args.workdir)
    print(json.dumps(report["mean"] | {"ratio_in_trial": report["ratio_in_trial"], "ratio_fit": report["ratio_fit"],
                                       "runs": report["runs"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
