"""The driver's side of a job: the Ray session, the experiment directory, its parent run, its Tuners.

An :class:`Experiment` is a context manager: a job that raises inside it ends its parent run
FAILED (or KILLED, when interrupted) exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.grid import trial_name
from ess.adapters.ray.storage import exists, filesystem, is_uri, join, storage_root, write_text
from ess.config import config_to_dict
from ess.errors import ConfigError, ESSError


class ExperimentInterrupted(ESSError):
    """The Tune run stopped before all its trials finished (Ctrl+C, SIGINT): resume it."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


@contextmanager
def ray_session(job: JobConfig) -> Iterator[None]:
    """Connect to ``job.address`` or start a local Ray; shut down only what this call started."""
    import ray

    # Tune warns on every forced experiment snapshot when few checkpoints are kept: noise for short epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
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
        ray.init(num_cpus=job.num_cpus or None, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def check_resources(job: JobConfig) -> None:
    """Fail early (one line) when a local Ray can never place a trial (before anything is written)."""
    import ray

    if job.address:
        return  # an autoscaling cluster may add the nodes
    have = ray.cluster_resources()
    if job.gpus_per_trial > have.get("GPU", 0):
        raise ConfigError(f"gpus_per_trial: {job.gpus_per_trial} asked for but the local Ray has "
                          f"{have.get('GPU', 0):g} GPUs (use --gpus-per-trial 0 or --address a GPU cluster)")
    if job.cpus_per_trial > have.get("CPU", 0):
        raise ConfigError(f"cpus_per_trial: {job.cpus_per_trial} asked for but the local Ray has "
                          f"{have.get('CPU', 0):g} CPUs")


def reachable_uri(uri: str | None, cluster: bool = False) -> str | None:
    """A ``localhost`` MLflow server URI as trials on other nodes must see it: the driver node's IP.

    Rewritten on a cluster (``--address``: workers may join later, autoscaled) or when Ray already
    has several nodes; a purely local run keeps ``127.0.0.1`` (a server bound there is not
    reachable on the external address).
    """
    if uri is None or not uri.startswith(("http://", "https://")):
        return uri
    import ray

    try:
        multi = len([n for n in ray.nodes() if n.get("Alive")]) > 1
    except Exception:
        multi = False
    if not (cluster or multi):
        return uri
    ip = ray.util.get_node_ip_address()
    for host in ("127.0.0.1", "localhost", "0.0.0.0"):
        uri = uri.replace(f"://{host}:", f"://{ip}:").replace(f"://{host}/", f"://{ip}/")
    return uri


class TrialRunStatus(Callback):
    """A Tune callback closing a trial's MLflow run when Tune ends the trial (driver side).

    Needed for trials that never return normally: stopped early by ASHA, or failed for good after
    ``max_failures`` restarts (a killed worker cannot close its own run). Picklable: Tune keeps it
    in ``tuner.pkl`` for ``Tuner.restore``.
    """

    def __init__(self, uri: str | None):
        self.uri = uri

    def _close(self, trial: Any, status: str) -> None:
        run_id = (getattr(trial, "last_result", None) or {}).get("mlflow_run_id")
        if not self.uri or not run_id:
            return
        try:
            from ess.adapters.mlflow import close_run

            close_run(self.uri, run_id, status)   # quiet while the server is down: the trial's spool has it
        except Exception as err:  # tracking never stops the experiment
            print(f"warning: could not close MLflow run {run_id}: {err}", file=sys.stderr)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")


def unfinished_trials(path: str) -> int:
    """Trials the saved experiment state does not hold as finished (TERMINATED or ERROR).

    After Ctrl+C, ``Tuner.fit()`` returns normally and its ResultGrid shows the stopped trials as
    TERMINATED; the state it saved for ``Tuner.restore`` still says RUNNING/PENDING/PAUSED. That
    saved state decides whether the experiment is complete.
    """
    if is_uri(path):
        import pyarrow.fs

        fs, p = filesystem(path)
        infos = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(p)) if i.base_name.startswith("experiment_state")]
        if not infos:
            return 0
        newest = max(infos, key=lambda i: i.base_name)   # Tune picks the newest by the time stamp in the name
        with fs.open_input_stream(newest.path) as f:
            state = json.loads(f.read().decode("utf-8"))
    else:
        files = sorted(Path(path).glob("experiment_state*.json"), key=lambda f: f.name)
        if not files:
            return 0
        state = json.loads(files[-1].read_text(encoding="utf-8"))
    unfinished = 0
    for item in state.get("trial_data", []):
        text = item[0] if isinstance(item, (list, tuple)) else item
        try:
            status = json.loads(text).get("status") if isinstance(text, str) else None
        except json.JSONDecodeError:
            status = None
        if status not in ("TERMINATED", "ERROR"):
            unfinished += 1
    return unfinished


def _resolve_data_dir() -> Path:
    from ess.data import resolve_data_dir

    return resolve_data_dir(None).resolve()


class Experiment:
    """One job run: experiment directory, saved config, MLflow parent run, Tune stages."""

    def __init__(self, job_kind: str, job: JobConfig, *, resume: bool = False):
        from ess.adapters.mlflow import flat_params, resolve_tracking_uri, start_parent_run

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
        self.mlflow_experiment = job.experiment or f"ess-{job_kind}"
        # records the MLflow server could not take wait here (python -m ess.adapters.mlflow sync --spool ...)
        self.spool_dir = None if is_uri(self.root) else str(Path(self.root) / "mlflow-spool")
        self.parent = start_parent_run(
            self.uri, self.mlflow_experiment, job.name, resume=resume, spool_dir=self.spool_dir,
            tags={"job": job_kind, "dataset": job.dataset, "storage": self.root,
                  "modes": ",".join(job.modes), "seeds": ",".join(map(str, job.seeds))},
            params=flat_params(config_to_dict(job)))
        if not is_uri(saved):
            self.parent.log_artifact(saved)
        self.experiment_id = self.parent.experiment_id   # None while the server is unreachable

    # -- the job's body --------------------------------------------------------------------------------
    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not issubclass(exc_type, ExperimentInterrupted):   # that one closed it
            self.parent.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # -- what a stage's Tuner is built from ----------------------------------------------------------
    def tracking_spec(self) -> dict[str, Any]:
        return {"uri": reachable_uri(self.uri, cluster=bool(self.job.address)), "experiment_id": self.experiment_id,
                "parent_run_id": self.parent.run_id, "system_metrics": self.job.system_metrics,
                "system_metrics_interval": self.job.system_metrics_interval,
                "experiment_name": self.mlflow_experiment, "spool_dir": self.spool_dir}

    def spec(self, *, search: Any = None, train: Any = None, transfer: Any = None, **extra: Any) -> dict[str, Any]:
        """``config['ess']`` of every trial of a stage: the run configs it uses (typed here, plain mappings
        across the Ray boundary), tracking, and the stage's ``extra`` (genotypes, cells ...)."""
        configs = {"search": search, "train": train, "transfer": transfer}
        return {"job": self.kind, "experiment_name": self.job.name, "tracking": self.tracking_spec(),
                "checkpoint_every": self.job.checkpoint_every,
                **{k: None if v is None else config_to_dict(v) for k, v in configs.items()}, **extra}

    def resources(self) -> dict[str, float]:
        res = {"cpu": self.job.cpus_per_trial}
        if self.job.gpus_per_trial:
            res["gpu"] = self.job.gpus_per_trial
        return res

    def with_resources(self, trainable: Any) -> Any:
        from ray import tune

        return tune.with_resources(trainable, self.resources())

    def restored(self, stage: str, trainable: Any) -> Any:
        """The stage's Tuner restored from ``<root>/<stage>`` when resuming one that was saved, else None."""
        from ray import tune

        path = join(self.root, stage)
        if not (self.resume and tune.Tuner.can_restore(path)):
            return None
        print(f"restoring {path}", file=sys.stderr, flush=True)
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)

    def tune_config(self, **extra: Any) -> Any:
        from ray import tune

        return tune.TuneConfig(**{"max_concurrent_trials": self.job.max_concurrent_trials or None,
                                  "trial_name_creator": trial_name, "trial_dirname_creator": trial_name, **extra})

    def run_config(self, stage: str, callbacks: Sequence[Any] = ()) -> Any:
        from ray import tune

        return tune.RunConfig(
            name=stage, storage_path=self.root, verbose=self.job.verbose,
            callbacks=[TrialRunStatus(self.uri), *callbacks],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=self.job.keep_checkpoints),
            failure_config=tune.FailureConfig(max_failures=self.job.max_failures))

    def fit(self, tuner: Any, stage: str, *, expected: int) -> Any:
        """``tuner.fit()``; an experiment stopped before its ``expected`` trials finished is interrupted."""
        results = tuner.fit()
        path = join(self.root, stage)
        unfinished = unfinished_trials(path)
        done = len(results) - unfinished
        if unfinished or len(results) < expected:
            from ess.adapters.mlflow import close_open_children

            close_open_children(self.uri, self.mlflow_experiment, self.parent.run_id, "KILLED")
            self.parent.finish("KILLED")
            raise ExperimentInterrupted(
                f"{path}: stopped with {done} of {expected} trials finished; continue with --resume --name "
                f"{self.job.name} --storage-path {self.job.storage_path}")
        return results

    def finish(self, summary: dict[str, Any], files: Mapping[str, str] = ()) -> dict[str, Any]:
        """Write and log ``summary.json`` (and extra files), close the parent run."""
        summary = {"job": self.kind, "name": self.job.name, "experiment_dir": self.root,
                   "tracking_uri": self.uri, "mlflow_experiment": self.mlflow_experiment,
                   "parent_run_id": self.parent.run_id, **summary}
        path = write_text(join(self.root, "summary.json"), json.dumps(summary, indent=2, default=str) + "\n")
        if not is_uri(path):
            self.parent.log_artifact(path)
            for name, text in dict(files).items():
                self.parent.log_artifact(write_text(join(self.root, name), text))
        metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.parent.log_metrics(metrics)
        self.parent.finish("FINISHED")
        return summary


__all__ = ["Experiment", "ExperimentInterrupted", "TrialRunStatus", "check_resources", "ray_session",
           "reachable_uri", "unfinished_trials"]
