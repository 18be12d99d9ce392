"""The local spool that keeps MLflow records while the tracking server cannot be reached.

:class:`ess.adapters.mlflow.tracker.MLflowTracker` logs straight to MLflow while the server answers. When a call
fails because the server is unreachable (connection refused or reset, timeout, 5xx after MLflow's own
retries, a locked or vanished SQLite file), that record and every later one of the run are appended
to a spool file instead, each line fsynced before the log call returns, so that nothing a finished
epoch logged can be lost; training goes on. The spool is replayed in order when the server answers
again (checked at a later log call, at most every ``ESS_TRACKING_RETRY_S`` seconds, and at
``finish``), or by ``python -m ess.adapters.mlflow sync``.

Layout, one run per file, under the spool directory (``$ESS_TRACKING_SPOOL``, else the directory the
caller names, else ``~/.local/state/ess/mlflow-spool``)::

    <local_id>.jsonl    header line, then one JSON line per record, ack/run/rejected lines appended
    <local_id>.files/   copies of the artifact files, taken when they were logged (later writes to
                        the source do not change what is uploaded)
    <local_id>.lock     flock'ed by whoever appends or replays (a tracker, a trial flushing its
                        parent, ``sync``), so two processes never replay one file at once
    <local_id>.run      written when everything was uploaded: the MLflow run id (the .jsonl and the
                        copies are then removed)

Replay is idempotent: each uploaded record gets an ``ack`` line; metrics are additionally compared
with the run's metric history by (key, step, timestamp) before upload, because MLflow keeps
duplicate metric entries and a record whose upload failed half-way may have reached the server;
params, tags, artifacts (same path: overwritten) and the final status are idempotent by nature. A
run that could not even be created (server down at start) is created at replay, after looking for
it first: by the ``ess.local_id`` tag every ess run carries, by the run id a restarted trial kept,
or by its trial id under the same parent (``ess.trial_id`` + ``mlflow.parentRunId``). A trial whose
parent run was itself spooled refers to it as ``spool:<local_id>`` and resolves it at replay.

MLflow is imported lazily, only by the functions that talk to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ess.adapters.mlflow.client import (
    PARENT_TAG,
    connect,
    find_runs,
    get_or_create_experiment,
    is_unreachable,
    restarts,
    set_http_defaults,
    short_reason,
)
from ess.checkpoint import fsync_dir

SPOOL_ENV = "ESS_TRACKING_SPOOL"
LOCAL_TAG = "ess.local_id"
PENDING = "spool:"
FORMAT_VERSION = 1
class SpoolDeferred(Exception):
    """A spooled run cannot be resolved yet (its parent run or experiment is itself still spooled)."""


# --------------------------------------------------------------------------------------------------
# Small helpers


def default_spool_dir(near: str | os.PathLike | None = None) -> Path:
    """``$ESS_TRACKING_SPOOL``, else ``near`` (a job's storage), else ``~/.local/state/ess/mlflow-spool``."""
    env = os.environ.get(SPOOL_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    if near is not None:
        return Path(near).expanduser().resolve()
    state = os.environ.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
    return Path(state).expanduser().resolve() / "ess" / "mlflow-spool"


def new_local_id() -> str:
    return uuid.uuid4().hex


def is_pending(ref: str | None) -> bool:
    return isinstance(ref, str) and ref.startswith(PENDING)


def pending_ref(local_id: str) -> str:
    return f"{PENDING}{local_id}"


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in files:
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------------
# The spool file


@dataclass
class SpoolState:
    header: dict[str, Any]
    records: list[dict[str, Any]]
    acked: set[int]
    rejected: set[int]
    run_id: str | None

    @property
    def pending(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["seq"] not in self.acked and r["seq"] not in self.rejected]


class Spool:
    """One run's spool file (see the module docstring for the layout)."""

    def __init__(self, directory: str | os.PathLike, local_id: str):
        self.dir = Path(directory)
        self.local_id = local_id
        self.path = self.dir / f"{local_id}.jsonl"
        self.files = self.dir / f"{local_id}.files"
        self.lock_path = self.dir / f"{local_id}.lock"
        self.run_path = self.dir / f"{local_id}.run"

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> Spool:
        path = Path(path)
        return cls(path.parent, path.name.split(".")[0])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as fh:
            try:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - not POSIX: one process per spool file
                pass
            yield

    def resolved_run(self) -> str | None:
        """The run id once everything was uploaded (``<local_id>.run``), else None."""
        try:
            return self.run_path.read_text().strip() or None
        except OSError:
            return None

    def write(self, lines: list[dict[str, Any]], header: Mapping[str, Any] | None = None) -> None:
        """Append ``lines`` (the caller holds the lock), with ``header`` first if the file is new; fsync."""
        new = not self.path.exists()
        if new and header is None:
            raise FileNotFoundError(f"{self.path}: spool file is gone and no header was given")
        text = "".join(json.dumps(obj) + "\n" for obj in ([dict(header)] if new else []) + lines)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.dir)

    def copy_artifact(self, seq: int, source: Path) -> tuple[str, bool]:
        """Snapshot ``source`` (file or directory) under ``<local_id>.files/<seq>/``; fsynced."""
        dest = self.files / str(seq)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
            rel, is_dir = str(seq), True
        else:
            shutil.copy2(source, dest / source.name)
            rel, is_dir = f"{seq}/{source.name}", False
        _fsync_tree(dest)
        fsync_dir(dest)
        return rel, is_dir

    def read(self) -> SpoolState | None:
        """The parsed file (a torn last line from a crash is skipped), None when there is none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        header: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        acked: set[int] = set()
        rejected: set[int] = set()
        run_id = None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{self.path}:{number}: unreadable spool line skipped", RuntimeWarning, stacklevel=2)
                continue
            kind = obj.get("t")
            if kind == "header":
                header = obj
                run_id = run_id or obj.get("run_id")
            elif kind == "ack":
                acked.add(int(obj["seq"]))
            elif kind == "rejected":
                rejected.add(int(obj["seq"]))
            elif kind == "run":
                run_id = obj["run_id"]
            elif "seq" in obj:
                records.append(obj)
        return SpoolState(header, records, acked, rejected, run_id)

    def finalize(self, run_id: str) -> None:
        """Everything is uploaded: keep ``<local_id>.run``, drop the record file and the copies."""
        tmp = self.run_path.with_name(self.run_path.name + ".tmp")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, self.run_path)
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.files, ignore_errors=True)
        fsync_dir(self.dir)


def spool_files(directory: str | os.PathLike) -> list[Path]:
    """The spool files with records (oldest first) under ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))


# --------------------------------------------------------------------------------------------------
# Applying records to MLflow (straight, or replayed from the spool)


def record_kind(rec: Mapping[str, Any]) -> str:
    """The MLflow operation a record stands for (used in warnings and in the sync summary)."""
    return {"metrics": "log_metrics", "params": "log_params", "tags": "set_tags", "artifact": "log_artifact",
            "dict": "log_dict", "table": "log_table", "terminate": "set_terminated"}.get(rec.get("t", ""), "log")


def _metric_history(client: Any, run_id: str, key: str, cache: dict[str, set[tuple[int, int]]]) -> set:
    if key not in cache:
        cache[key] = {(int(m.step), int(m.timestamp)) for m in client.get_metric_history(run_id, key)}
    return cache[key]


def apply_record(client: Any, run_id: str, rec: Mapping[str, Any], *, files: Path | None = None,
                 seen: dict[str, set[tuple[int, int]]] | None = None) -> int:
    """Send one record to MLflow; returns the number of items sent (0: all were there already).

    ``files``: the spool's copy directory (replay) -- artifacts come from there, and a table
    replaces the artifact instead of appending to it (MLflow's ``log_table`` appends, which a replay
    of a half-done upload would duplicate). ``seen``: per-key (step, timestamp) pairs already in the
    run, fetched on first use, to skip metrics a failed upload may have delivered after all.
    """
    from mlflow.entities import Metric, Param, RunTag

    kind = rec["t"]
    if kind == "metrics":
        items = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in rec["metrics"]]
        if seen is not None:
            items = [m for m in items if (m.step, m.timestamp) not in _metric_history(client, run_id, m.key, seen)]
        for start in range(0, len(items), 1000):  # MLflow's log_batch limit
            client.log_batch(run_id, metrics=items[start:start + 1000])
        if seen is not None:
            for m in items:
                seen.setdefault(m.key, set()).add((m.step, m.timestamp))
        return len(items)
    if kind in ("params", "tags"):
        values = rec[kind]
        items = [Param(str(k), str(v)) for k, v in values.items()] if kind == "params" else \
            [RunTag(str(k), str(v)) for k, v in values.items()]
        for start in range(0, len(items), 100):
            chunk = items[start:start + 100]
            client.log_batch(run_id, **{kind: chunk})
        return len(items)
    if kind == "artifact":
        path = (files / rec["file"]) if files is not None else Path(rec["path"])
        if rec.get("is_dir"):
            client.log_artifacts(run_id, str(path), rec.get("artifact_path"))
        else:
            client.log_artifact(run_id, str(path), rec.get("artifact_path"))
        return 1
    if kind == "dict":
        client.log_dict(run_id, rec["data"], rec["artifact_file"])
        return 1
    if kind == "table":
        import pandas as pd

        frame = pd.DataFrame(rec["rows"])
        if files is None:
            client.log_table(run_id, frame, rec["artifact_file"])
        else:
            _replace_table(client, run_id, frame, rec["artifact_file"])
        return 1
    if kind == "terminate":
        client.set_terminated(run_id, rec["status"], end_time=rec.get("end_time"))
        return 1
    raise ValueError(f"unknown spool record type {kind!r}")


def _replace_table(client: Any, run_id: str, frame: Any, artifact_file: str) -> None:
    """What ``MlflowClient.log_table`` does for a new table, overwriting instead of appending."""
    import posixpath
    import tempfile

    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    directory, name = posixpath.split(posixpath.normpath(artifact_file))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / name
        if name.endswith(".parquet"):
            frame.to_parquet(local, index=False)
        else:
            frame.to_json(local, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(local), directory or None)
    tags = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in tags:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*tags, entry]))


# --------------------------------------------------------------------------------------------------
# Resolving the run of a spool, replaying it


def _find(uri: str, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    found = find_runs(uri, experiment_id, tags, order_by=["attributes.start_time DESC"])
    return found[0].info.run_id if found else None


def resolve_ref(ref: str, client: Any, uri: str, spool_dir: Path, experiment_id: str | None) -> str:
    """The MLflow run id a ``spool:<local_id>`` reference stands for (replaying its spool if needed)."""
    if not is_pending(ref):
        return ref
    other = Spool(spool_dir, ref[len(PENDING):])
    run_id = other.resolved_run()
    if run_id:
        return run_id
    if other.path.exists():
        return replay(other, client, uri=uri, spool_dir=spool_dir).run_id
    if experiment_id:
        run_id = _find(uri, experiment_id, {LOCAL_TAG: other.local_id})
        if run_id:
            return run_id
    raise SpoolDeferred(f"run {ref} is not in MLflow yet and its spool is not in {spool_dir}")


def _reattach(client: Any, run_id: str, tags: Mapping[str, str], count_restarts: bool) -> None:
    from mlflow.entities import RunTag

    client.update_run(run_id, status="RUNNING")
    items = {k: v for k, v in tags.items() if k != LOCAL_TAG}
    if count_restarts:
        items["ess.restarts"] = str(restarts(client, run_id) + 1)
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in items.items()])


def resolve_run(client: Any, uri: str, header: Mapping[str, Any], spool: Spool, spool_dir: Path) -> tuple[str, bool]:
    """The run the spool's records belong to, found or created; ``(run_id, created_now)``."""
    if header.get("run_id"):
        return header["run_id"], False
    done = spool.resolved_run()
    if done:
        return done, False
    create = header.get("create")
    if not create:
        raise SpoolDeferred(f"{spool.path}: neither a run id nor how to create the run")
    from mlflow.entities import Param

    tags = {k: str(v) for k, v in (create.get("tags") or {}).items()}
    experiment_id = create.get("experiment_id") or None
    if not experiment_id and create.get("experiment_name"):
        experiment_id = get_or_create_experiment(uri, create["experiment_name"])
    parent = tags.get(PARENT_TAG)
    if parent:
        parent = resolve_ref(parent, client, uri, spool_dir, experiment_id)
        tags[PARENT_TAG] = parent
        if not experiment_id:
            experiment_id = client.get_run(parent).info.experiment_id
    if not experiment_id:
        raise SpoolDeferred(f"{spool.path}: the MLflow experiment of the run is not known yet")
    tags[LOCAL_TAG] = spool.local_id
    run_id = _find(uri, experiment_id, {LOCAL_TAG: spool.local_id})
    if run_id:
        return run_id, False
    ref = create.get("run_ref")
    if ref:
        try:
            run_id = resolve_ref(ref, client, uri, spool_dir, experiment_id)
        except SpoolDeferred:
            run_id = None
        if run_id:
            _reattach(client, run_id, tags, bool(create.get("count_restarts")))
            return run_id, False
    find = {k: (parent if k == PARENT_TAG else str(v)) for k, v in (create.get("find") or {}).items()}
    if find:
        run_id = _find(uri, experiment_id, find)
        if run_id:
            _reattach(client, run_id, tags, bool(create.get("count_restarts")))
            return run_id, False
    run = client.create_run(experiment_id, start_time=create.get("start_time"), tags=tags,
                            run_name=create.get("run_name"))
    params = [Param(str(k), str(v)[:6000]) for k, v in (create.get("params") or {}).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start:start + 100])
    return run.info.run_id, True


@dataclass
class ReplayResult:
    run_id: str | None
    counts: dict[str, int] = field(default_factory=dict)   # records uploaded, by operation
    skipped: int = 0                                         # metric entries already in the run
    rejected: list[str] = field(default_factory=list)       # records MLflow refused (warned)

    @property
    def uploaded(self) -> int:
        return sum(self.counts.values())


def replay(spool: Spool, client: Any, *, uri: str, spool_dir: str | os.PathLike | None = None) -> ReplayResult:
    """Upload the spool's pending records in order; raises if the server is (again) unreachable.

    Under the spool's lock; every uploaded record is acknowledged in the file, so an interrupted
    replay continues where it stopped. A record MLflow refuses (not an outage: e.g. a param changed
    value) is marked rejected with a warning and skipped. When nothing is left the spool is finalized.
    """
    spool_dir = Path(spool_dir) if spool_dir is not None else spool.dir
    with spool.locked():
        state = spool.read()
        if state is None:
            return ReplayResult(spool.resolved_run())
        result = ReplayResult(state.run_id)
        if result.run_id is None:
            result.run_id, created = resolve_run(client, uri, state.header, spool, spool_dir)
            spool.write([{"t": "run", "run_id": result.run_id}], state.header)
        else:
            created = False
        seen: dict[str, set[tuple[int, int]]] = {} if not created else _EmptyHistory()
        for rec in state.pending:
            try:
                sent = apply_record(client, result.run_id, rec, files=spool.files, seen=seen)
            except Exception as err:
                if is_unreachable(err) or isinstance(err, SpoolDeferred):
                    raise
                what = record_kind(rec)
                message = (str(err).splitlines() or [type(err).__name__])[0][:200]
                spool.write([{"t": "rejected", "seq": rec["seq"], "error": message}], state.header)
                result.rejected.append(f"{what}: {message}")
                warnings.warn(f"MLflow {what} refused a spooled record of run {result.run_id}: {message}",
                              RuntimeWarning, stacklevel=2)
                continue
            spool.write([{"t": "ack", "seq": rec["seq"]}], state.header)
            kind = record_kind(rec)
            result.counts[kind] = result.counts.get(kind, 0) + 1
            if rec["t"] == "metrics":
                result.skipped += len(rec["metrics"]) - sent
        spool.finalize(result.run_id)
        return result


class _EmptyHistory(dict):
    """A run created by this replay has no metric history: nothing to fetch."""

    def __missing__(self, key: str) -> set:
        value: set = set()
        self[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return True


# --------------------------------------------------------------------------------------------------
# Uploading what is left


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
            result = replay(spool, connect(uri), uri=uri, spool_dir=directory)
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


__all__ = [
    "LOCAL_TAG", "PENDING", "SPOOL_ENV", "ReplayResult", "Spool", "SpoolDeferred", "SpoolState", "apply_record",
    "default_spool_dir", "is_pending", "new_local_id", "pending_ref", "record_kind", "replay", "resolve_ref",
    "resolve_run", "spool_files", "sync",
]
