"""The trackers the trials log through: a no-op one, and one MLflow run that falls back to the spool.

Code never branches on "is tracking on?": with no tracking URI it gets the base :class:`Tracker`,
whose methods do nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ess.adapters.mlflow import client as store
from ess.adapters.mlflow.client import (
    is_http,
    is_unreachable,
    numeric_metrics,
    probe,
    retry,
    set_http_defaults,
    short_reason,
    sqlite_path,
)
from ess.adapters.mlflow.spool import (
    Spool,
    SpoolDeferred,
    apply_record,
    default_spool_dir,
    new_local_id,
    pending_ref,
    record_kind,
    replay,
)


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
    of the run, goes to a local spool (:mod:`ess.adapters.mlflow.spool`, one fsynced JSON line each, artifact
    files copied) and the user is told once, in one line, where it is. At a later log call (at most
    every ``$ESS_TRACKING_RETRY_S`` seconds, 15 by default) and at :meth:`finish`, a cheap probe checks
    whether the server is back; if so the spool is uploaded in order and the user is told once more.
    What is still spooled when the process ends is uploaded by ``python -m ess.adapters.mlflow sync``. A
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
        self._interval = store.retry_interval() if retry_interval is None else float(retry_interval)
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
                  f"to {self.spool.path}; it is uploaded when the server is back (or run: python -m "
                  f"ess.adapters.mlflow sync --spool {self.spool.dir})")

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
                        retry(lambda: apply_record(self.client, self._run_id, rec), record_kind(rec))
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


__all__ = ["MLflowTracker", "Tracker"]
