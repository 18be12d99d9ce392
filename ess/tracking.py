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

When the store cannot be reached, trackers keep every record in a local spool and upload it when
the server is back (:mod:`ess.tracking_spool`); ``python -m ess.tracking sync`` uploads what is left.

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
from ess.tracking_spool import (
    LOCAL_TAG,
    Spool,
    SpoolDeferred,
    apply_record,
    default_spool_dir,
    is_http,
    is_pending,
    is_unreachable,
    new_local_id,
    pending_ref,
    probe,
    record_kind,
    replay,
    resolve_ref,
    set_http_defaults,
    short_reason,
    spool_files,
)
from ess.tracking_spool import retry_interval as tracking_retry_interval

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
    """Call ``fn``, retrying on a locked SQLite database or a dropped database connection (several writers).

    HTTP errors are not retried here: MLflow's client already retried them (``MLFLOW_HTTP_REQUEST_*``),
    and retrying again would stall training for minutes when the server is down.
    """
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # MLflow wraps sqlite/HTTP errors in several types
            text = str(err).lower()
            transient = any(s in text for s in ("locked", "busy", "timed out", "connection", "temporarily"))
            if not transient or "api request to" in text or attempt == attempts - 1:
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
    experiment_id: str | None = None

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

    Logging never stops training. A locked SQLite database is retried; when the store cannot be
    reached (server down, connection refused or reset, timeout) the record, and every later record
    of the run, goes to a local spool (:mod:`ess.tracking_spool`, one fsynced JSON line each, artifact
    files copied) and the user is told once, in one line, where it is. At a later log call (at most
    every ``$ESS_TRACKING_RETRY_S`` seconds, 15 by default) and at :meth:`finish`, a cheap probe checks
    whether the server is back; if so the spool is uploaded in order and the user is told once more.
    What is still spooled when the process ends is uploaded by ``python -m ess.tracking sync``. A
    record MLflow refuses (not an outage) is reported once per operation as a warning.

    The spool directory is ``$ESS_TRACKING_SPOOL`` if set, else ``spool_dir`` (a job passes
    ``<storage>/<name>/mlflow-spool``), else ``mlflow-spool`` next to a SQLite store, else
    ``~/.local/state/ess/mlflow-spool``.

    ``run_id`` None with a ``create`` spec: the run could not be created yet (server down at start);
    it is created, or found again, when the spool is first uploaded; until then :attr:`run_id` is the
    placeholder ``spool:<local_id>``, which :func:`start_trial_run` accepts as a parent or run id.
    """

    def __init__(self, uri: str, run_id: str | None = None, *, system_metrics: bool = False,
                 system_metrics_interval: float = 10.0, resume_system_metrics: bool = False,
                 spool_dir: str | os.PathLike | None = None, create: Mapping[str, Any] | None = None,
                 local_id: str | None = None, label: str | None = None, experiment_id: str | None = None,
                 retry_interval: float | None = None, unreachable: BaseException | None = None):
        from mlflow import MlflowClient

        set_http_defaults(uri)
        if run_id is None and create is None:
            raise ValueError("MLflowTracker needs a run_id or a create spec")
        self.uri = uri
        self._run_id = run_id
        self.experiment_id = experiment_id or (create or {}).get("experiment_id") or None
        self.client = MlflowClient(uri)
        self.local_id = local_id or new_local_id()
        db = sqlite_path(uri)
        near = spool_dir if spool_dir is not None else (db.parent / "mlflow-spool" if db is not None else None)
        self.spool = Spool(default_spool_dir(near), self.local_id)
        self.label = label or (create or {}).get("run_name") or run_id or self.local_id
        self._create = dict(create) if create is not None else None
        self._interval = tracking_retry_interval() if retry_interval is None else float(retry_interval)
        self._seq = 0
        self._offline = False
        self._next_probe = 0.0
        self._finished = False
        self._warned: set[str] = set()
        self._system_metrics = (system_metrics, system_metrics_interval)
        self._monitor = None
        self.outages = 0                 # outages seen by this tracker
        self.spooled = 0                 # records written to the spool
        if run_id is None:
            self._go_offline(unreachable, at_start=True)
        elif system_metrics:
            self._monitor = _start_system_metrics(uri, run_id, system_metrics_interval, resume_system_metrics)

    # -- state ---------------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:  # type: ignore[override]
        """The MLflow run id, or ``spool:<local_id>`` while the run is not created yet."""
        return self._run_id or pending_ref(self.local_id)

    @property
    def offline(self) -> bool:
        """True while records go to the spool."""
        return self._offline

    def _header(self) -> dict[str, Any]:
        return {"t": "header", "v": 1, "local_id": self.local_id, "uri": self.uri, "run_id": self._run_id,
                "label": self.label, "create": self._create, "experiment_id": self.experiment_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _say(self, line: str) -> None:
        print(f"ess: {line}", file=sys.stderr, flush=True)

    def _go_offline(self, err: BaseException | None, *, at_start: bool = False) -> None:
        if at_start:   # the run's creation spec is on disk before the constructor returns
            try:
                with self.spool.locked():
                    self.spool.write([], self._header())
            except OSError as spool_err:
                self._warn("spool", spool_err)
        self._offline = True
        self._next_probe = time.monotonic() + self._interval
        self.outages += 1
        self._say(f"MLflow at {self.uri} is unreachable ({short_reason(err)}"
                  f"{', run not created yet' if at_start else ''}); run {self.label} keeps training and logs "
                  f"to {self.spool.path}; it is uploaded when the server is back (or run: python -m ess.tracking "
                  f"sync --spool {self.spool.dir})")

    def _spool(self, rec: dict[str, Any]) -> None:
        self._seq += 1
        rec = {**rec, "seq": self._seq}
        with self.spool.locked():
            if rec["t"] == "artifact":
                rec["file"], rec["is_dir"] = self.spool.copy_artifact(self._seq, Path(rec["path"]))
            self.spool.write([rec], self._header())
        self.spooled += 1

    def _recover(self, force: bool = False) -> bool:
        """Upload the spool if the server is back (checked at most every retry interval unless ``force``)."""
        now = time.monotonic()
        if not force and now < self._next_probe:
            return False
        self._next_probe = now + self._interval
        if not probe(self.uri):
            return False
        try:
            result = replay(self.spool, self.client, uri=self.uri)
        except Exception as err:
            if is_unreachable(err) or isinstance(err, SpoolDeferred):
                return False
            self._warn("upload the spool", err)
            return False
        if result.run_id is None and self._run_id is None:   # the spool vanished before the run was made
            return False
        self._run_id = result.run_id or self._run_id
        self._offline = False
        self._say(f"MLflow at {self.uri} is back: uploaded {result.uploaded} spooled records of run {self.label} "
                  f"(run id {self._run_id})")
        kind, interval = self._system_metrics
        if kind and not self._finished and not _monitor_alive(self._monitor):
            self._monitor = _start_system_metrics(self.uri, self._run_id, interval, True)
        return True

    def _warn(self, what: str, err: BaseException) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"MLflow {what} failed for run {self.run_id}: {str(err).splitlines()[0][:200]}",
                          RuntimeWarning, stacklevel=4)

    def _submit(self, rec: dict[str, Any]) -> None:
        """Send one record, or spool it (see the class docstring); never raises."""
        try:
            if not self._offline:
                try:
                    if is_http(self.uri):
                        apply_record(self.client, self._run_id, rec)
                    else:
                        _retry(lambda: apply_record(self.client, self._run_id, rec), record_kind(rec))
                    return
                except Exception as err:
                    if not is_unreachable(err):
                        self._warn(record_kind(rec), err)
                        return
                    self._go_offline(err)
            self._spool(rec)
            self._recover()
        except Exception as err:  # a full disk while spooling: say so, never stop training
            self._warn(f"{record_kind(rec)} (spool)", err)

    # -- the Tracker interface -----------------------------------------------------------------------
    @property
    def artifact_uri(self) -> str | None:
        if self._offline:
            return None
        try:
            return self.client.get_run(self._run_id).info.artifact_uri
        except Exception as err:
            if not is_unreachable(err):
                self._warn("get_run", err)
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        values = {str(k): str(v)[:6000] for k, v in params.items()}
        if values:
            self._submit({"t": "params", "params": values})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {str(k): str(v)[:8000] for k, v in tags.items() if v is not None}
        if values:
            self._submit({"t": "tags", "tags": values})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [[k, v, now, int(step or 0)] for k, v in numeric_metrics(metrics).items()]
        if items:
            self._submit({"t": "metrics", "metrics": items})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            return
        self._submit({"t": "artifact", "path": str(path.resolve()), "artifact_path": artifact_path,
                      "is_dir": path.is_dir()})

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._submit({"t": "dict", "data": json.loads(json.dumps(data, default=str)), "artifact_file": artifact_file})

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        if not rows:
            return
        self._submit({"t": "table", "rows": json.loads(json.dumps(rows, default=str)), "artifact_file": artifact_file})

    def flush(self) -> bool:
        """Try to upload what is spooled now (ignoring the retry interval); True when nothing is left."""
        return not self._offline or self._recover(force=True)

    def finish(self, status: str = "FINISHED") -> None:
        if self._finished:
            return
        self._finished = True
        _stop_monitor(self._monitor, flush=not self._offline)
        self._monitor = None
        self._submit({"t": "terminate", "status": status, "end_time": int(time.time() * 1000)})
        if self._offline:
            self._recover(force=True)


def _monitor_alive(monitor: Any) -> bool:
    thread = getattr(monitor, "_process", None)
    return thread is not None and thread.is_alive()


def _stop_monitor(monitor: Any, flush: bool = True) -> None:
    """Stop MLflow's system-metrics thread; offline, without its final upload (which would only fail)."""
    if monitor is None:
        return
    try:
        if flush:
            monitor.finish()
        else:
            event = getattr(monitor, "_shutdown_event", None)
            if event is not None:
                event.set()
            thread = getattr(monitor, "_process", None)
            if thread is not None:
                thread.join(timeout=5)
    except Exception:  # the monitor is best effort
        pass


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


def _commit_tags(tags: dict[str, str]) -> dict[str, str]:
    commit = git_commit()
    if commit:
        tags.setdefault("git_commit", commit)
        tags.setdefault("mlflow.source.git.commit", commit.split("+")[0])
    return tags


def _deferrable(err: BaseException) -> bool:
    """The server (or a spooled parent run) is not there yet: spool instead of failing."""
    return isinstance(err, SpoolDeferred) or is_unreachable(err)


def start_parent_run(uri: str | None, experiment: str, name: str, *, tags: Mapping[str, Any] | None = None,
                     params: Mapping[str, Any] | None = None, resume: bool = False,
                     spool_dir: str | os.PathLike | None = None) -> Tracker:
    """The experiment's parent run (a no-op tracker when ``uri`` is None).

    With ``resume``, the parent run of the same experiment name is reopened, so a resumed Tune
    experiment keeps one parent run; otherwise a new one is created. When the store cannot be
    reached the tracker spools (see :class:`MLflowTracker`) and the run is created, or found again,
    when the spool is uploaded; ``spool_dir``: where (default ``$ESS_TRACKING_SPOOL``, else
    ``~/.local/state/ess/mlflow-spool``).
    """
    if uri is None:
        return Tracker()
    set_http_defaults(uri)
    local_id = new_local_id()
    all_tags = _commit_tags({ROLE_TAG: "parent", NAME_TAG: name,
                             **{k: str(v) for k, v in (tags or {}).items() if v is not None}})
    experiment_id = None
    try:
        experiment_id = get_or_create_experiment(uri, experiment)
        client = _client(uri)
        run_id = None
        if resume:
            found = find_runs(uri, experiment_id, {ROLE_TAG: "parent", NAME_TAG: name},
                              order_by=["attributes.start_time DESC"])
            if found:
                run_id = found[0].info.run_id
                _retry(lambda: client.update_run(run_id, status="RUNNING"), "update_run")
        if run_id is None:
            run = _retry(lambda: client.create_run(experiment_id, run_name=name,
                                                   tags={**all_tags, LOCAL_TAG: local_id}), "create_run")
            tracker = MLflowTracker(uri, run.info.run_id, spool_dir=spool_dir, local_id=local_id, label=name,
                                    experiment_id=experiment_id)
            if params:
                tracker.log_params(params)
            return tracker
    except Exception as err:
        if not _deferrable(err):
            raise
        create = {"experiment_id": experiment_id, "experiment_name": experiment, "run_name": name, "tags": all_tags,
                  "params": {str(k): str(v)[:6000] for k, v in (params or {}).items()},
                  "find": {ROLE_TAG: "parent", NAME_TAG: name} if resume else {},
                  "start_time": int(time.time() * 1000)}
        return MLflowTracker(uri, None, spool_dir=spool_dir, create=create, local_id=local_id, label=name,
                             unreachable=err)
    tracker = MLflowTracker(uri, run_id, spool_dir=spool_dir, local_id=local_id, label=name,
                            experiment_id=experiment_id)
    tracker.set_tags(all_tags)
    return tracker


def start_trial_run(uri: str | None, experiment_id: str | None, parent_run_id: str | None, trial_id: str, *,
                    run_name: str, tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
                    run_id: str | None = None, system_metrics: bool = True,
                    system_metrics_interval: float = 10.0, experiment_name: str | None = None,
                    spool_dir: str | os.PathLike | None = None) -> Tracker:
    """The nested run of one trial; a restarted trial gets its old run back.

    The run is found by ``run_id`` (kept in the trial checkpoint) or by the trial id tag under the
    same parent; params are logged only when the run is new (MLflow params cannot change). When the
    store cannot be reached the run is created (or found again the same way) when the spool is
    uploaded; ``parent_run_id`` and ``run_id`` may be ``spool:<local_id>`` placeholders of runs that
    were spooled themselves. ``experiment_name`` is used when ``experiment_id`` is not known (the
    driver could not reach the server either).
    """
    if uri is None:
        return Tracker()
    set_http_defaults(uri)
    local_id = new_local_id()
    label = run_name or trial_id
    all_tags = {TRIAL_TAG: trial_id, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    _commit_tags(all_tags)
    opts = dict(system_metrics=system_metrics, system_metrics_interval=system_metrics_interval,
                spool_dir=spool_dir, local_id=local_id, label=label)
    try:
        client = _client(uri)
        spool_root = default_spool_dir(spool_dir)
        if not experiment_id:
            if not experiment_name:
                raise SpoolDeferred("the MLflow experiment is not known yet")
            experiment_id = get_or_create_experiment(uri, experiment_name)
        if is_pending(parent_run_id):
            parent_run_id = resolve_ref(parent_run_id, client, uri, spool_root, experiment_id)
            all_tags[PARENT_TAG] = parent_run_id
        if is_pending(run_id):
            try:
                run_id = resolve_ref(run_id, client, uri, spool_root, experiment_id)
            except SpoolDeferred:
                run_id = None
        if run_id is None:
            search = {TRIAL_TAG: trial_id, **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
            found = find_runs(uri, experiment_id, search, order_by=["attributes.start_time DESC"])
            run_id = found[0].info.run_id if found else None
        resumed = run_id is not None
        if resumed:
            _retry(lambda: client.update_run(run_id, status="RUNNING"), "update_run")
        else:
            run = _retry(lambda: client.create_run(experiment_id, run_name=run_name,
                                                   tags={**all_tags, LOCAL_TAG: local_id}), "create_run")
            run_id = run.info.run_id
        restarts = _restarts(client, run_id) if resumed else 0
    except Exception as err:
        if not _deferrable(err):
            raise
        find = {TRIAL_TAG: trial_id, **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
        create = {"experiment_id": experiment_id or None, "experiment_name": experiment_name, "run_name": run_name,
                  "tags": all_tags, "params": {str(k): str(v)[:6000] for k, v in (params or {}).items()},
                  "run_ref": run_id, "count_restarts": True, "find": find, "start_time": int(time.time() * 1000)}
        return MLflowTracker(uri, None, create=create, unreachable=err, **opts)
    tracker = MLflowTracker(uri, run_id, resume_system_metrics=resumed, experiment_id=experiment_id, **opts)
    if resumed:
        tracker.set_tags({**all_tags, "ess.restarts": restarts + 1})
    elif params:
        tracker.log_params(params)
    return tracker


def _restarts(client: Any, run_id: str) -> int:
    try:
        return int(client.get_run(run_id).data.tags.get("ess.restarts", "0"))
    except Exception as err:
        if is_unreachable(err):
            raise
        return 0


def close_run(uri: str | None, run_id: str | None, status: str = "FINISHED") -> bool:
    """Mark ``run_id`` ``status`` if it is still RUNNING; quietly False when the store cannot be reached
    or the run is a ``spool:`` placeholder (its own tracker, or ``sync``, sets the status)."""
    if uri is None or not run_id or is_pending(run_id):
        return False
    client = _client(uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        _retry(lambda: client.set_terminated(run_id, status), "set_terminated")
        return True
    except Exception as err:
        if is_unreachable(err):
            return False
        raise


def close_open_children(uri: str | None, experiment: str, parent_run_id: str | None, status: str = "KILLED") -> int:
    """Mark the parent's nested runs still RUNNING (trials interrupted with the driver) as ``status``.

    Returns 0 without raising when the store cannot be reached (the trials' spools keep their status).
    """
    if uri is None or parent_run_id is None or is_pending(parent_run_id):
        return 0
    client = _client(uri)
    try:
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
    except Exception as err:
        if not is_unreachable(err):
            raise
        print(f"ess: MLflow at {uri} is unreachable ({short_reason(err)}); interrupted trial runs were not "
              f"marked {status}", file=sys.stderr, flush=True)
        return 0


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
    upload = sub.add_parser("sync", help="upload what runs spooled while the MLflow server was unreachable")
    upload.add_argument("--spool", default="", help="spool directory (else $ESS_TRACKING_SPOOL, else "
                                                    "~/.local/state/ess/mlflow-spool)")
    upload.add_argument("--tracking-uri", default="",
                        help="upload there instead of the store each run was logging to")
    return parser.parse_args(argv)


def sync(spool_dir: str | os.PathLike | None = None, tracking_uri: str | None = None,
         echo: Callable[[str], None] = print) -> int:
    """Upload every spool file under ``spool_dir`` (idempotent); returns how many files are left."""
    directory = Path(spool_dir).expanduser().resolve() if spool_dir else default_spool_dir()
    files = spool_files(directory)
    if not files:
        echo(f"nothing to upload in {directory}")
        return 0

    def waits_for_parent(path: Path) -> bool:  # parents first: their children name them by spool id
        state = Spool.from_path(path).read()
        create = (state.header.get("create") if state else None) or {}
        return is_pending((create.get("tags") or {}).get(PARENT_TAG))

    left = 0
    for path in sorted(files, key=waits_for_parent):
        spool = Spool.from_path(path)
        state = spool.read()
        if state is None:       # uploaded meanwhile (as the parent of another run, or by its tracker)
            continue
        uri = tracking_uri or state.header.get("uri")
        label = state.header.get("label") or spool.local_id
        if not uri:
            echo(f"{path}: no tracking URI in the spool; pass --tracking-uri")
            left += 1
            continue
        set_http_defaults(uri)
        try:
            result = replay(spool, _client(uri), uri=uri, spool_dir=directory)
        except SpoolDeferred as err:
            echo(f"{label}: not uploaded yet: {err}")
            left += 1
            continue
        except Exception as err:
            if not is_unreachable(err):
                raise
            echo(f"{label}: MLflow at {uri} is unreachable ({short_reason(err)}); {len(state.pending)} records "
                 f"stay in {path}")
            left += 1
            continue
        detail = ", ".join(f"{n} {what}" for what, n in sorted(result.counts.items())) or "nothing new"
        extra = f"; {result.skipped} metric values were there already" if result.skipped else ""
        extra += f"; {len(result.rejected)} refused by MLflow" if result.rejected else ""
        echo(f"{label}: uploaded {result.uploaded} records to run {result.run_id} at {uri} ({detail}{extra})")
    return left


@run_main
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.command == "sync":
        override = resolve_tracking_uri(args.tracking_uri, DEFAULT_STORAGE) if args.tracking_uri else None
        left = sync(args.spool or None, override)
        if left:
            print(f"error: {left} spool file(s) could not be uploaded yet; run this again later", file=sys.stderr)
        return 1 if left else 0
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
    "close_run", "sync",
    "config_tags", "default_tracking_uri", "download_artifact", "find_runs", "flat_params",
    "get_or_create_experiment", "git_commit", "local_artifact_root", "numeric_metrics", "resolve_tracking_uri",
    "start_parent_run", "start_trial_run", "ui_command", "ui_hint",
]
