"""The driver's side of a job: the Ray session, the experiment directory, its Tuners, its MLflow view.

An :class:`Experiment` is a context manager: a job that raises inside it ends its parent run
FAILED (or KILLED, when interrupted) exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune

from ess.adapters.mlflow import flat_params, resolve_tracking_uri
from ess.adapters.mlflow.experiment_runs import ExperimentRuns
from ess.adapters.mlflow.runs import close_stale
from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.grid import trial_name, variant_label, variant_of
from ess.adapters.ray.progress import ProgressLines
from ess.adapters.ray.spec import TrialSpec
from ess.adapters.ray.tracking import TrialRuns
from ess.adapters.storage import exists, is_uri, join, storage_root, write_text
from ess.adapters.tune_files import unfinished_trials
from ess.config import config_to_dict
from ess.data import resolve_data_dir
from ess.errors import ConfigError, ESSError
from ess.extras import require


class ExperimentInterrupted(ESSError):
    """The Tune run stopped before all its trials finished (Ctrl+C, SIGINT): resume it."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


@contextmanager
def ray_session(job: JobConfig) -> Iterator[None]:
    """Connect to ``job.address`` or start a local Ray; shut down only what this call started."""
    # Tune warns on every forced experiment snapshot when few checkpoints are kept: noise for short epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if job.verbose == 0:   # quiet: no Tune tables, hints or INFO lines (the job prints one line per trial epoch)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        for name in ("ray.tune", "ray.train", "mlflow"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        yield
        return
    if job.address:
        ray.init(address=job.address, log_to_driver=True)
    else:
        # Workers inherit the environment: make this checkout importable even when not pip-installed.
        root = str(_repo_root())
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])
        ray.init(num_cpus=job.num_cpus or None, include_dashboard=False, log_to_driver=job.verbose > 0,
                 logging_level="WARNING" if job.verbose == 0 else "INFO")
    try:
        yield
    finally:
        ray.shutdown()


def check_resources(job: JobConfig) -> None:
    """Fail early (one line) when a local Ray can never place a trial (before anything is written)."""
    if job.address:
        return  # an autoscaling cluster may add the nodes
    have = ray.cluster_resources()
    if job.gpus_per_trial > have.get("GPU", 0):
        raise ConfigError(f"gpus_per_trial: {job.gpus_per_trial} asked for but the local Ray has "
                          f"{have.get('GPU', 0):g} GPUs (use --gpus-per-trial 0 or --address a GPU cluster)")
    if job.cpus_per_trial > have.get("CPU", 0):
        raise ConfigError(f"cpus_per_trial: {job.cpus_per_trial} asked for but the local Ray has "
                          f"{have.get('CPU', 0):g} CPUs")


def _resolve_data_dir() -> Path:
    return resolve_data_dir(None).resolve()


def _trial_error(error: BaseException | None, metrics: Mapping[str, Any]) -> str | None:
    """Why a trial failed (an exception, or a divergence it reported), in one line; None when it did not."""
    if error is not None:
        return str(error).splitlines()[0][:300]
    if metrics.get("diverged"):
        return str(metrics.get("failure") or "diverged")[:300]
    return None


def rows(results: Any) -> list[dict[str, Any]]:
    """One dict per trial of a ResultGrid: its variant, label, last metrics, checkpoint and error."""
    out = []
    for r in results:
        variant = variant_of(r.config or {})
        metrics = dict(r.metrics or {})
        out.append({"variant": variant, "label": variant_label(variant), "metrics": metrics,
                    "node_id": metrics.get("node_id"),
                    "checkpoint": r.checkpoint.path if r.checkpoint is not None else None,
                    "trial_dir": r.path, "error": _trial_error(r.error, metrics)})
    return out


class Experiment:
    """One job run: experiment directory, saved config, Tune stages, and their MLflow view (parent and trial runs)."""

    def __init__(self, job_kind: str, job: JobConfig, *, resume: bool = False):

        # the one resolved JobConfig: saved as job.yaml, logged as params, sent to every trial
        self.data_dir = str(Path(job.data_dir).expanduser().resolve()) if job.data_dir else \
            str(_resolve_data_dir())
        job = dataclasses.replace(job, data_dir=self.data_dir)
        self.kind, self.job, self.resume = job_kind, job, resume
        self.storage = storage_root(job.storage_path)
        self.root = join(self.storage, job.name)
        saved = join(self.root, "job.yaml")
        if resume and not exists(saved):
            raise ConfigError(f"{saved}: no experiment {job.name!r} to resume")
        if not resume and exists(saved):
            raise ConfigError(f"{self.root}: experiment {job.name!r} exists; pass --resume to continue it "
                              "or choose another --name")
        if not resume:
            write_text(saved, yaml.safe_dump({"job": job_kind, **config_to_dict(job)}, sort_keys=False))
        self.uri = resolve_tracking_uri(job.tracking_uri, job.storage_path if not is_uri(self.storage) else
                                        self.storage)
        if self.uri is not None or job.system_metrics:   # the driver's MLflow view, the trials' system metrics
            require("mlflow", "tracking (--tracking-uri none --no-system-metrics runs without it)")
        self.mlflow_experiment = job.experiment or f"ess-{job_kind}"
        self.runs = ExperimentRuns(self.uri, self.mlflow_experiment, job.name, self.root)
        self.runs.attempt("close the runs of dead drivers", self._close_stale)
        self.runs.open_parent(
            tags={"job": job_kind, "dataset": job.dataset, "storage": self.root, "modes": ",".join(job.modes),
                  "seeds": ",".join(map(str, job.seeds))},
            params=flat_params(config_to_dict(job)), resume=resume)
        if not is_uri(saved):
            self.runs.log_parent(files=[saved])

    def _close_stale(self) -> None:
        """Runs a killed driver of this host left RUNNING: KILLED now (``python -m ess.adapters.mlflow close``
        does it for a driver lost with its host)."""
        for name in close_stale(self.uri, self.mlflow_experiment):
            print(f"ess: the driver of experiment {name!r} is gone: its RUNNING runs are marked KILLED",
                  file=sys.stderr, flush=True)

    @property
    def parent_run_id(self) -> str | None:
        return self.runs.parent_id

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags of the parent run (the best genotype, the best cell ...)."""
        self.runs.log_parent(tags=tags)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.runs.log_parent(params=params)

    # -- the job's body --------------------------------------------------------------------------------
    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not issubclass(exc_type, ExperimentInterrupted):   # that one closed it
            self.runs.log_parent(status="KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
            self.runs.end()

    # -- what a stage's Tuner is built from ----------------------------------------------------------
    def spec(self, *, search: Any = None, train: Any = None, transfer: Any = None, **extra: Any) -> dict[str, Any]:
        """``config['ess']`` of every trial of a stage: a :class:`TrialSpec` of the run configs it uses and the
        stage's ``extra`` (genotypes, cells, their sources, ``retrain_seed``), as it crosses the Ray boundary
        (plain mappings); no MLflow address, since trials never talk to MLflow."""
        return TrialSpec(job=self.kind, experiment_name=self.job.name, mlflow_experiment=self.mlflow_experiment,
                         checkpoint_every=self.job.checkpoint_every, system_metrics=self.job.system_metrics,
                         system_metrics_interval=self.job.system_metrics_interval, search=search, train=train,
                         transfer=transfer, **extra).to_config()

    def resources(self) -> dict[str, float]:
        res = {"cpu": self.job.cpus_per_trial}
        if self.job.gpus_per_trial:
            res["gpu"] = self.job.gpus_per_trial
        return res

    def with_resources(self, trainable: Any) -> Any:
        return tune.with_resources(trainable, self.resources())

    def restored(self, stage: str, trainable: Any) -> Any:
        """The stage's Tuner restored from ``<root>/<stage>`` when resuming one that was saved, else None."""
        path = join(self.root, stage)
        if not (self.resume and tune.Tuner.can_restore(path)):
            return None
        print(f"restoring {path}", file=sys.stderr, flush=True)
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)

    def tune_config(self, **extra: Any) -> Any:
        return tune.TuneConfig(**{"max_concurrent_trials": self.job.max_concurrent_trials or None,
                                  "trial_name_creator": trial_name, "trial_dirname_creator": trial_name, **extra})

    def run_config(self, stage: str, callbacks: Sequence[Any] = ()) -> Any:
        view = [TrialRuns(self.uri, self.mlflow_experiment, self.job.name, self.root)] if self.uri else []
        if not self.job.verbose:   # Tune's own status tables off: one short line per trial and epoch instead
            view.append(ProgressLines(stage))
        return tune.RunConfig(
            name=stage, storage_path=self.root, verbose=self.job.verbose, callbacks=[*view, *callbacks],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=self.job.keep_checkpoints),
            failure_config=tune.FailureConfig(max_failures=self.job.max_failures))

    def stage(self, name: str, trainable: Any, spec: Mapping[str, Any], variants: Sequence[Mapping[str, Any]] = (),
              *, space: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (),
              **tune_config: Any) -> list[dict[str, Any]]:
        """One stage of the job: ``tune.Tuner(trainable, ...)`` over the grid ``variants`` (or the ``space`` a
        searcher samples ``num_samples`` times), restored from ``<root>/<name>`` when resuming; one row per
        trial (:func:`rows`), failed ones included. ``tune_config``: a searcher, a scheduler, their metric."""
        wrapped = self.with_resources(trainable)
        grid = {"variant": tune.grid_search([dict(v) for v in variants])} if variants else {}
        tuner = self.restored(name, wrapped) or tune.Tuner(
            wrapped, param_space={"ess": spec, **grid, **(space or {})},
            tune_config=self.tune_config(**tune_config), run_config=self.run_config(name, callbacks))
        return rows(self.fit(tuner, name, expected=len(variants) or tune_config.get("num_samples", 1)))

    def fit(self, tuner: Any, stage: str, *, expected: int) -> Any:
        """``tuner.fit()``; an experiment stopped before its ``expected`` trials finished is interrupted."""
        results = tuner.fit()
        path = join(self.root, stage)
        unfinished = unfinished_trials(path)
        done = len(results) - unfinished
        if unfinished or len(results) < expected:
            self.runs.interrupted()
            raise ExperimentInterrupted(
                f"{path}: stopped with {done} of {expected} trials finished; continue with --resume --name "
                f"{self.job.name} --storage-path {self.job.storage_path}")
        return results

    def finish(self, summary: dict[str, Any], files: Mapping[str, str] = ()) -> dict[str, Any]:
        """Write and log ``summary.json`` (and extra files), close the parent run."""
        summary = {"job": self.kind, "name": self.job.name, "experiment_dir": self.root,
                   "tracking_uri": self.uri, "mlflow_experiment": self.mlflow_experiment,
                   "parent_run_id": self.runs.parent_id, **summary}
        written = [write_text(join(self.root, "summary.json"), json.dumps(summary, indent=2, default=str) + "\n")]
        written += [write_text(join(self.root, name), text) for name, text in dict(files).items()]
        metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.runs.log_parent(files=[p for p in written if not is_uri(p)], metrics=metrics, status="FINISHED")
        self.runs.end()
        return summary


__all__ = ["Experiment", "ExperimentInterrupted", "check_resources", "ray_session", "rows"]
