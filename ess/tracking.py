"""Experiment tracking for the orchestration layer: a no-op :class:`Tracker` and an MLflow one.

The Ray adapters (:mod:`ess.tune`) log through a :class:`Tracker`, so code never branches on "is
tracking on?": with no tracking URI they get the base class, whose methods do nothing. MLflow is
imported only here (and only when a tracker is actually opened), never by the core.

Layout in MLflow, one experiment per job kind (``ess-joint_search``, ``ess-ablation`` ...):

- one *parent* run per Tune experiment (tag ``ess.role=parent``), holding the job config, the
  summary and the best genotype;
- one *nested* run per trial (tag ``mlflow.parentRunId``), holding the resolved config as params,
  per-epoch metrics with ``step = epoch``, the genotype JSON and picture of each epoch under
  ``genotypes/``, the architecture-weight tables, the final genotype and model weights, tags for
  mode, seed, dataset, node counts and git commit, and system metrics (CPU, memory, GPU when
  ``nvidia-ml-py`` is installed) sampled by MLflow's own monitor.

``python -m ess.tracking ui`` prints (and runs) the ``mlflow ui`` command for a store.
"""

from __future__ import annotations

import argparse
import functools
import json
import numbers
import os
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ess.cli import run_main
from ess.errors import ConfigError

T = TypeVar("T")

TRACKING_ENV = "MLFLOW_TRACKING_URI"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
DEFAULT_STORAGE = "runs/tune"
#: tags every trial run carries (when the config has the field), so runs can be filtered side by side
CONFIG_TAGS = ("mode", "seed", "dataset", "steps", "n_inter", "m", "genotype", "cell")
ROLE_TAG, NAME_TAG, TRIAL_TAG, PHASE_TAG = "ess.role", "ess.experiment", "ess.trial_id", "ess.phase"
PARENT_TAG = "mlflow.parentRunId"
NO_TRACKING = ("none", "off", "false", "no", "0")


# --------------------------------------------------------------------------------------------------
# URIs and small helpers


def default_tracking_uri(storage_path: str | os.PathLike = DEFAULT_STORAGE) -> str:
    """``sqlite:///<storage_path>/mlflow.db`` (absolute), the store used when none is configured."""
    return f"sqlite:///{Path(storage_path).expanduser().resolve() / DB_NAME}"


def resolve_tracking_uri(uri: str | None, storage_path: str | os.PathLike = DEFAULT_STORAGE) -> str | None:
    """The flag, else ``$MLFLOW_TRACKING_URI``, else a SQLite file under ``storage_path``; ``none``: off.

    A relative ``sqlite:///file.db`` is made absolute, because Ray runs trials in their own working
    directories and a relative path would name a different file in each.
    """
    uri = (uri or "").strip() or os.environ.get(TRACKING_ENV, "").strip()
    if uri.lower() in NO_TRACKING:
        return None
    if not uri:
        if "://" in str(storage_path):
            raise ConfigError(f"tracking_uri: storage {storage_path} is not a local path; give --tracking-uri "
                              "(an MLflow server, e.g. http://HEAD_IP:5000)")
        return default_tracking_uri(storage_path)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().resolve()}"
    if "://" not in uri and ":" not in uri[:3]:  # a plain directory: MLflow's file store, made absolute
        return str(Path(uri).expanduser().resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def local_artifact_root(uri: str, experiment: str) -> str | None:
    """Artifact location for a new experiment in a local store: ``<db dir>/mlartifacts/<experiment>``.

    Absolute, so that trials (which run in other working directories) and ``mlflow ui`` agree.
    Servers (``http://``) choose their own location: None.
    """
    db = sqlite_path(uri)
    if db is None:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return str(db.parent / ARTIFACTS_DIR / safe)


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line that serves ``uri`` (bound to 127.0.0.1 unless asked)."""
    return ["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def ui_hint(uri: str | None) -> str:
    """One line telling the user how to look at the runs."""
    if uri is None:
        return "tracking is off"
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {uri}"
    return "MLflow UI: " + shlex.join(ui_command(uri)) + "  (then open http://127.0.0.1:5000)"


@functools.lru_cache(maxsize=8)
def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding ``path`` (this package by default), ``+dirty`` if modified."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a flat row (bools as 0/1); strings, None, lists are left out."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, numbers.Real):
            out[key] = float(value)
    return out


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved config as MLflow params: nested keys joined with ``.``, values as strings."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = "" if value is None else str(value)
    return out


def config_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """Tags for filtering: mode, seed, dataset, node counts (and genotype/cell for retraining)."""
    return {key: str(config[key]) for key in CONFIG_TAGS if key in config and config[key] is not None}


def arch_weight_rows(weights: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The architecture-weight tables (``arch_weights.json``) as one long table.

    One row per (part, node/edge, branch, op) with the softmax weight, so the MLflow table view can
    sort and filter it; parts fixed in the search mode contribute no rows.
    """
    rows: list[dict[str, Any]] = []
    for part in ("intra", "history", "input"):
        table = weights.get(part)
        if not isinstance(table, Mapping) or not table.get("searched"):
            continue
        columns = list(table.get("columns") or weights.get("columns") or [])
        if "rows" in table and "weights" in table:
            for edge, values in zip(table["rows"], table["weights"]):
                for op, w in zip(columns, values):
                    rows.append({"part": part, "edge": str(edge), "branch": "", "op": op, "weight": float(w)})
        for branch in table.get("branches", []) or []:
            for source, values in zip(branch.get("rows", []), branch.get("weights", [])):
                for op, w in zip(columns, values):
                    rows.append({"part": part, "edge": f"node {branch.get('node')} <- {source}",
                                 "branch": str(branch.get("branch", "")), "op": op, "weight": float(w)})
    return rows


def _retry(fn: Callable[[], T], what: str, attempts: int = 6) -> T:
    """Call ``fn``, retrying on a locked SQLite database or a dropped connection (several writers)."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # MLflow wraps sqlite/HTTP errors in several types
            text = str(err).lower()
            transient = any(s in text for s in ("locked", "busy", "timed out", "connection", "temporarily"))
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------
# Trackers


class Tracker:
    """The no-op tracker: every method accepts its arguments and does nothing."""

    run_id: str | None = None
    uri: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        return None

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        return None

    def log_dict(self, data: Any, artifact_file: str) -> None:
        return None

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        return None

    def finish(self, status: str = "FINISHED") -> None:
        return None

    @property
    def artifact_uri(self) -> str | None:
        return None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED"))


class MLflowTracker(Tracker):
    """Logs to one MLflow run through an ``MlflowClient`` (no global active-run state).

    Failures to log never stop training: a transient error (locked SQLite, dropped connection) is
    retried, anything else is reported once as a warning.
    """

    def __init__(self, uri: str, run_id: str, *, system_metrics: bool = False,
                 system_metrics_interval: float = 10.0, resume_system_metrics: bool = False):
        from mlflow import MlflowClient

        self.uri, self.run_id = uri, run_id
        self.client = MlflowClient(uri)
        self._finished = False
        self._warned: set[str] = set()
        self._monitor = None
        if system_metrics:
            self._monitor = _start_system_metrics(uri, run_id, system_metrics_interval, resume_system_metrics)

    def _safe(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return _retry(fn, what)
        except Exception as err:
            if what not in self._warned:
                self._warned.add(what)
                warnings.warn(f"MLflow {what} failed for run {self.run_id}: {str(err).splitlines()[0][:200]}",
                              RuntimeWarning, stacklevel=3)
            return None

    @property
    def artifact_uri(self) -> str | None:
        run = self._safe("get_run", lambda: self.client.get_run(self.run_id))
        return run.info.artifact_uri if run is not None else None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's log_batch takes at most 100 params at once
            chunk = items[start:start + 100]
            self._safe("log_params", lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)[:8000]) for k, v in tags.items() if v is not None]
        if items:
            self._safe("set_tags", lambda: self.client.log_batch(self.run_id, tags=items))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in numeric_metrics(metrics).items()]
        if items:
            self._safe("log_metrics", lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            return
        if path.is_dir():
            self._safe("log_artifacts", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path))
        else:
            self._safe("log_artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._safe("log_dict", lambda: self.client.log_dict(self.run_id, data, artifact_file))

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        if not rows:
            return
        import pandas as pd

        frame = pd.DataFrame(rows)
        self._safe("log_table", lambda: self.client.log_table(self.run_id, frame, artifact_file))

    def finish(self, status: str = "FINISHED") -> None:
        if self._finished:
            return
        self._finished = True
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # the monitor is best effort
                pass
        self._safe("set_terminated", lambda: self.client.set_terminated(self.run_id, status))


def _start_system_metrics(uri: str, run_id: str, interval: float, resume: bool) -> Any:
    """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPU with nvidia-ml-py)."""
    try:
        import psutil  # noqa: F401  (MLflow's monitor needs it; say so instead of failing silently)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as err:
        warnings.warn(f"system metrics are off: {err} (pip install psutil; nvidia-ml-py for GPUs)",
                      RuntimeWarning, stacklevel=3)
        return None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                   resume_logging=resume, tracking_uri=uri)
    monitor.start()
    return monitor


# --------------------------------------------------------------------------------------------------
# Experiments, parent runs and trial runs


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def get_or_create_experiment(uri: str, name: str) -> str:
    """The id of MLflow experiment ``name`` (created, with a local artifact root, when missing)."""
    client = _client(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    experiment = _retry(lambda: client.get_experiment_by_name(name), "get_experiment")
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            _retry(lambda: client.restore_experiment(experiment.experiment_id), "restore_experiment")
        return experiment.experiment_id
    try:
        return _retry(lambda: client.create_experiment(name, artifact_location=local_artifact_root(uri, name)),
                      "create_experiment")
    except Exception:
        experiment = client.get_experiment_by_name(name)  # created concurrently by another process
        if experiment is None:
            raise
        return experiment.experiment_id


def find_runs(uri: str, experiment_id: str, tags: Mapping[str, str], *, order_by: list[str] | None = None,
              max_results: int = 1000) -> list[Any]:
    """Runs of an experiment whose tags equal ``tags``."""
    def quote(value: str) -> str:
        return "'" + str(value).replace("'", "\\'") + "'"

    filt = " and ".join(f"tags.`{k}` = {quote(v)}" for k, v in tags.items())
    client = _client(uri)
    return _retry(lambda: client.search_runs([experiment_id], filter_string=filt, order_by=order_by,
                                             max_results=max_results), "search_runs")


def start_parent_run(uri: str | None, experiment: str, name: str, *, tags: Mapping[str, Any] | None = None,
                     params: Mapping[str, Any] | None = None, resume: bool = False) -> Tracker:
    """The experiment's parent run (a no-op tracker when ``uri`` is None).

    With ``resume``, the parent run of the same experiment name is reopened, so a resumed Tune
    experiment keeps one parent run; otherwise a new one is created.
    """
    if uri is None:
        return Tracker()
    experiment_id = get_or_create_experiment(uri, experiment)
    client = _client(uri)
    run_id = None
    if resume:
        found = find_runs(uri, experiment_id, {ROLE_TAG: "parent", NAME_TAG: name},
                          order_by=["attributes.start_time DESC"])
        if found:
            run_id = found[0].info.run_id
            _retry(lambda: client.update_run(run_id, status="RUNNING"), "update_run")
    all_tags = {ROLE_TAG: "parent", NAME_TAG: name, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    commit = git_commit()
    if commit:
        all_tags.setdefault("git_commit", commit)
        all_tags.setdefault("mlflow.source.git.commit", commit.split("+")[0])
    if run_id is None:
        run = _retry(lambda: client.create_run(experiment_id, run_name=name, tags=all_tags), "create_run")
        run_id = run.info.run_id
        tracker = MLflowTracker(uri, run_id)
        if params:
            tracker.log_params(params)
        return tracker
    tracker = MLflowTracker(uri, run_id)
    tracker.set_tags(all_tags)
    return tracker


def start_trial_run(uri: str | None, experiment_id: str, parent_run_id: str | None, trial_id: str, *,
                    run_name: str, tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
                    run_id: str | None = None, system_metrics: bool = True,
                    system_metrics_interval: float = 10.0) -> Tracker:
    """The nested run of one trial; a restarted trial gets its old run back.

    The run is found by ``run_id`` (kept in the trial checkpoint) or by the trial id tag under the
    same parent; params are logged only when the run is new (MLflow params cannot change).
    """
    if uri is None:
        return Tracker()
    client = _client(uri)
    if run_id is None:
        search = {TRIAL_TAG: trial_id, **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
        found = find_runs(uri, experiment_id, search, order_by=["attributes.start_time DESC"])
        run_id = found[0].info.run_id if found else None
    resumed = run_id is not None
    all_tags = {TRIAL_TAG: trial_id, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    commit = git_commit()
    if commit:
        all_tags.setdefault("git_commit", commit)
        all_tags.setdefault("mlflow.source.git.commit", commit.split("+")[0])
    if resumed:
        _retry(lambda: client.update_run(run_id, status="RUNNING"), "update_run")
    else:
        run = _retry(lambda: client.create_run(experiment_id, run_name=run_name, tags=all_tags), "create_run")
        run_id = run.info.run_id
    tracker = MLflowTracker(uri, run_id, system_metrics=system_metrics,
                            system_metrics_interval=system_metrics_interval, resume_system_metrics=resumed)
    if resumed:
        tracker.set_tags({**all_tags, "ess.restarts": _restarts(client, run_id) + 1})
    elif params:
        tracker.log_params(params)
    return tracker


def _restarts(client: Any, run_id: str) -> int:
    try:
        return int(client.get_run(run_id).data.tags.get("ess.restarts", "0"))
    except Exception:
        return 0


def close_open_children(uri: str | None, experiment: str, parent_run_id: str | None, status: str = "KILLED") -> int:
    """Mark the parent's nested runs still RUNNING (trials interrupted with the driver) as ``status``."""
    if uri is None or parent_run_id is None:
        return 0
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = find_runs(uri, exp.experiment_id, {PARENT_TAG: parent_run_id})
    n = 0
    for run in runs:
        if run.info.status == "RUNNING":
            _retry(lambda run=run: client.set_terminated(run.info.run_id, status), "set_terminated")
            n += 1
    return n


def child_runs(uri: str, experiment: str, parent_run_id: str) -> list[Any]:
    """The nested runs of a parent run."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else find_runs(uri, exp.experiment_id, {PARENT_TAG: parent_run_id})


def best_runs(uri: str, experiment: str, *, metric: str = "valid/ppl", k: int = 1,
              phases: Iterable[str] = ("search",), parent_name: str | None = None) -> list[Any]:
    """The ``k`` finished trial runs of ``experiment`` (optionally of one parent) with the lowest ``metric``."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"source_experiment: no MLflow experiment {experiment!r} in {uri}")
    extra: dict[str, str] = {}
    if parent_name:
        parents = find_runs(uri, exp.experiment_id, {ROLE_TAG: "parent", NAME_TAG: parent_name},
                            order_by=["attributes.start_time DESC"])
        if not parents:
            raise ConfigError(f"source_run: no parent run named {parent_name!r} in experiment {experiment!r}")
        extra[PARENT_TAG] = parents[0].info.run_id
    runs = []
    for phase in phases:
        runs += [r for r in find_runs(uri, exp.experiment_id, {PHASE_TAG: phase, **extra})
                 if r.info.status == "FINISHED" and metric in r.data.metrics]
    if not runs:
        raise ConfigError(f"source_experiment: no finished runs ({', '.join(phases)}) with metric {metric!r} "
                          f"in {experiment!r}")
    return sorted(runs, key=lambda r: r.data.metrics[metric])[:k]


def download_artifact(uri: str, run_id: str, artifact_path: str, dst: str | os.PathLike) -> Path:
    import mlflow.artifacts

    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                    dst_path=str(dst), tracking_uri=uri))


# --------------------------------------------------------------------------------------------------
# Command line


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ess.tracking", description="MLflow helpers for ess runs")
    sub = parser.add_subparsers(dest="command", required=True)
    ui = sub.add_parser("ui", help="print and run the `mlflow ui` command for a tracking store")
    ui.add_argument("--tracking-uri", default="", help="else $MLFLOW_TRACKING_URI, else STORAGE/mlflow.db")
    ui.add_argument("--storage-path", default=DEFAULT_STORAGE, help="where the jobs keep mlflow.db")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--print", dest="print_only", action="store_true", help="print the command, do not run it")
    runs = sub.add_parser("runs", help="list the runs of an experiment with their main metric")
    runs.add_argument("experiment")
    runs.add_argument("--tracking-uri", default="")
    runs.add_argument("--storage-path", default=DEFAULT_STORAGE)
    runs.add_argument("--metric", default="valid/ppl")
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    uri = resolve_tracking_uri(args.tracking_uri, args.storage_path)
    if uri is None:
        raise ConfigError("tracking_uri: tracking is off (MLFLOW_TRACKING_URI=none)")
    if args.command == "ui":
        if uri.startswith(("http://", "https://")):
            print(f"the store is an MLflow server: open {uri}")
            return 0
        db = sqlite_path(uri)
        if db is not None and not db.exists():
            raise ConfigError(f"{db}: no MLflow database yet (run a job first, or pass --tracking-uri)")
        command = ui_command(uri, args.host, args.port)
        print(shlex.join(command), flush=True)
        if args.print_only:
            return 0
        os.execvp(command[0], command)
    exp = _client(uri).get_experiment_by_name(args.experiment)
    if exp is None:
        raise ConfigError(f"experiment: no MLflow experiment {args.experiment!r} in {uri}")
    for run in _client(uri).search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        tags = run.data.tags
        print(json.dumps({"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                          "role": tags.get(ROLE_TAG, "trial"), "phase": tags.get(PHASE_TAG),
                          "mode": tags.get("mode"), "seed": tags.get("seed"),
                          args.metric: run.data.metrics.get(args.metric)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CONFIG_TAGS", "MLflowTracker", "Tracker", "arch_weight_rows", "best_runs", "child_runs", "close_open_children",
    "config_tags", "default_tracking_uri", "download_artifact", "find_runs", "flat_params",
    "get_or_create_experiment", "git_commit", "local_artifact_root", "numeric_metrics", "resolve_tracking_uri",
    "start_parent_run", "start_trial_run", "ui_command", "ui_hint",
]
