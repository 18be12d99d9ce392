"""MLflow cost of a trial: the seconds and MLflow calls that showing each epoch takes, and where they run.

    python bench/tracking_overhead.py --epochs 4                          # SQLite store under --workdir
    python bench/tracking_overhead.py --epochs 4 --tracking-uri http://127.0.0.1:5000

A search at the smoke sizes (with pictures), then a 2-epoch retrain of its genotype, shown the way a Tune
job shows them: after each epoch the run directory is copied as a checkpoint (what ``tune.report`` does
in any case; not counted) and handed to the driver's :class:`ExperimentRuns`, which brings the trial's
run up to date from it. The trial itself makes no MLflow call. Prints one JSON object: per epoch the
seconds and the MLflow client calls of the driver, the cost at the trial's end (weights, table, tags,
status), the epoch time for scale, and the (key, step) pairs MLflow holds twice (none).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from ess.adapters.mlflow import resolve_tracking_uri
from ess.adapters.mlflow.experiment_runs import ExperimentRuns
from ess.adapters.mlflow.sync import LocalCheckpoint
from ess.adapters.ray.config import job_base
from ess.adapters.ray.grid import trial_identity
from ess.config import config_to_dict

CALLS: collections.Counter[str] = collections.Counter()


def count_client_calls() -> None:
    """Count every call of the MLflow client methods a view uses (the bench's own instrumentation)."""
    from mlflow import MlflowClient

    for name in ("log_batch", "log_artifact", "log_artifacts", "set_terminated", "get_run", "set_tag",
                 "get_metric_history", "list_artifacts", "search_runs", "update_run", "create_run"):
        real = getattr(MlflowClient, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            CALLS[_name] += 1
            return _real(self, *args, **kwargs)

        setattr(MlflowClient, name, counted)


def measure(uri: str, workdir: Path, epochs: int) -> dict:
    from mlflow import MlflowClient

    from ess.search import search
    from ess.train import train

    shutil.rmtree(workdir, ignore_errors=True)
    job = dataclasses.replace(job_base("joint_search", "smoke"), seeds=(1,), cpus_per_trial=1.0)
    from ess.data import resolve_data_dir

    job = dataclasses.replace(job, data_dir=str(resolve_data_dir(None).resolve()))
    search_cfg = dataclasses.replace(job.search, epochs=epochs)
    config = {"ess": {"job": "bench", "experiment_name": "bench", "mlflow_experiment": "ess-bench",
                      "search": config_to_dict(search_cfg), "train": config_to_dict(job.train)},
              "variant": {"mode": "joint", "seed": 1}}
    run, exp = workdir / "trial", workdir / "exp"
    run.mkdir(parents=True)
    (run / "trial.json").write_text(json.dumps({**trial_identity(config, "t", "t"), "started": time.time()}))
    runs = ExperimentRuns(uri, "ess-bench", "bench", str(exp))
    runs.open_parent(tags={"job": "bench"}, params={}, resume=False)
    runs.started("t", trial_identity(config, "t", "t"))
    per_epoch, calls, epoch_s, tick = [], [], [], [time.perf_counter()]

    def show(rep) -> None:
        epoch_s.append(time.perf_counter() - tick[0])
        copy = exp / f"checkpoint_{len(per_epoch):06d}"
        shutil.copytree(run, copy)
        before, start = sum(CALLS.values()), time.perf_counter()
        runs.checkpoint("t", LocalCheckpoint(copy))
        per_epoch.append(time.perf_counter() - start)
        calls.append(sum(CALLS.values()) - before)
        tick[0] = time.perf_counter()

    result = search(dataclasses.replace(search_cfg, run_dir=str(run / "search")), on_epoch=show)
    train(dataclasses.replace(job.train, run_dir=str(run / "retrain"), genotype=str(run / "search" / "genotype.json")),
          on_epoch=show)
    final = exp / "checkpoint_final"
    shutil.copytree(run, final)
    start = time.perf_counter()
    runs.checkpoint("t", LocalCheckpoint(final))
    runs.ended("t", "FINISHED")
    end = time.perf_counter() - start
    run_id = runs.trials["t"].run_id
    client = MlflowClient(uri)
    twice = collections.Counter((k, m.step) for k in client.get_run(run_id).data.metrics
                                for m in client.get_metric_history(run_id, k))
    return {"mode": "driver (a Tune callback)", "store": uri, "epochs": len(per_epoch),
            "logging_s_per_epoch_median": statistics.median(per_epoch),
            "logging_s_per_epoch": [round(x, 4) for x in per_epoch], "mlflow_calls_per_epoch": calls,
            "end_of_trial_s": round(end, 4), "search_epoch_s_median": statistics.median(epoch_s[:len(result.rows)]),
            "on_trial_critical_path": False,
            "points_written_twice": sorted(f"{k}@{s}" for (k, s), n in twice.items() if n > 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/tracking_overhead.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="search epochs (then 2 retrain epochs)")
    parser.add_argument("--tracking-uri", default="", help="MLflow store (default: SQLite under --workdir)")
    parser.add_argument("--workdir", default="runs/bench-tracking")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    uri = resolve_tracking_uri(args.tracking_uri or f"sqlite:///{workdir.parent / 'bench-tracking.db'}", workdir)
    count_client_calls()
    print(json.dumps(measure(uri, workdir, args.epochs), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
