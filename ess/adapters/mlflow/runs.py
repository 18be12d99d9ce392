"""The MLflow runs of an experiment: its parent run, one nested run per trial, the best of them.

Runs are found again by their tags (the parent by ``ess.role=parent`` + ``ess.experiment``; a trial
by ``ess.trial_id`` under its parent), so creating one is safe to repeat: after a restart, a resume,
or from a record when the store was down while the experiment ran.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ess.adapters.mlflow.client import (
    NAME_TAG,
    PARENT_TAG,
    PHASE_TAG,
    ROLE_TAG,
    TRIAL_TAG,
    commit_tags,
    connect,
    find_runs,
    get_or_create_experiment,
    is_unreachable,
    retry,
    short_reason,
)
from ess.errors import ConfigError

DRIVER_TAG = "ess.driver"


def driver_id() -> str:
    """``host:pid:start`` of this process: tells a live driver from a dead one with the same pid."""
    import psutil  # the mlflow extra: this package is imported without it too

    return f"{socket.gethostname()}:{os.getpid()}:{int(psutil.Process().create_time())}"


def _driver_alive(driver: str) -> bool | None:
    """Whether the driver a tag names still runs; None when it ran on another host (unknowable here)."""
    import psutil  # the mlflow extra: this package is imported without it too

    host, _, rest = driver.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        return int(psutil.Process(int(pid)).create_time()) == int(start or 0)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _newest(uri: str, experiment_id: str, tags: Mapping[str, str]) -> Any | None:
    found = find_runs(uri, experiment_id, tags, order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def find_parent(uri: str, experiment: str, name: str) -> str | None:
    """The newest parent run of experiment ``name`` in MLflow experiment ``experiment``, if any."""
    exp = retry(lambda: connect(uri).get_experiment_by_name(experiment), "get_experiment")
    run = _newest(uri, exp.experiment_id, {ROLE_TAG: "parent", NAME_TAG: name}) if exp is not None else None
    return run.info.run_id if run is not None else None


def start_parent_run(uri: str, experiment: str, name: str, *, tags: Mapping[str, Any] | None = None,
                     params: Mapping[str, Any] | None = None, resume: bool = False) -> str:
    """The experiment's parent run, RUNNING and tagged with this driver: reopened when resuming, else new."""
    from mlflow.entities import Param, RunTag  # the mlflow extra: this package is imported without it too

    client = connect(uri)
    experiment_id = get_or_create_experiment(uri, experiment)
    all_tags = commit_tags({ROLE_TAG: "parent", NAME_TAG: name, DRIVER_TAG: driver_id(),
                            **{k: str(v) for k, v in (tags or {}).items() if v is not None}})
    found = _newest(uri, experiment_id, {ROLE_TAG: "parent", NAME_TAG: name}) if resume else None
    if found is not None:
        run_id = found.info.run_id
        retry(lambda: client.update_run(run_id, status="RUNNING"), "update_run")
        retry(lambda: client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()]), "log_batch")
        return run_id
    run_id = retry(lambda: client.create_run(experiment_id, run_name=name, tags=all_tags), "create_run").info.run_id
    items = [Param(str(k), str(v)[:6000]) for k, v in (params or {}).items()]
    for start in range(0, len(items), 100):
        retry(lambda start=start: client.log_batch(run_id, params=items[start:start + 100]), "log_batch")
    return run_id


def trial_run(uri: str, parent_run_id: str, trial_id: str, *, run_name: str,
              tags: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """The nested run of one trial under ``parent_run_id``, found by its trial id or created; ``(run id, found)``.

    A run found again is set RUNNING (the trial is running again).
    """
    client = connect(uri)
    experiment_id = retry(lambda: client.get_run(parent_run_id), "get_run").info.experiment_id
    found = _newest(uri, experiment_id, {TRIAL_TAG: trial_id, PARENT_TAG: parent_run_id})
    if found is not None:
        if found.info.status != "RUNNING":
            retry(lambda: client.update_run(found.info.run_id, status="RUNNING"), "update_run")
        return found.info.run_id, True
    all_tags = commit_tags({TRIAL_TAG: trial_id, PARENT_TAG: parent_run_id,
                            **{k: str(v) for k, v in (tags or {}).items() if v is not None}})
    run = retry(lambda: client.create_run(experiment_id, run_name=run_name, tags=all_tags), "create_run")
    return run.info.run_id, False


def close_run(uri: str | None, run_id: str | None, status: str = "FINISHED") -> bool:
    """Mark ``run_id`` ``status`` if it is still RUNNING; quietly False when the store cannot be reached."""
    if uri is None or not run_id:
        return False
    client = connect(uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        retry(lambda: client.set_terminated(run_id, status), "set_terminated")
        return True
    except Exception as err:
        if is_unreachable(err):
            return False
        raise


def close_open_children(uri: str | None, parent_run_id: str | None, status: str = "KILLED") -> int:
    """Mark the parent's nested runs still RUNNING (trials stopped with the driver) ``status``; how many."""
    if uri is None or parent_run_id is None:
        return 0
    client = connect(uri)
    try:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        n = 0
        for run in find_runs(uri, experiment_id, {PARENT_TAG: parent_run_id}):
            if run.info.status == "RUNNING":
                retry(lambda run=run: client.set_terminated(run.info.run_id, status), "set_terminated")
                n += 1
        return n
    except Exception as err:
        if not is_unreachable(err):
            raise
        print(f"ess: MLflow at {uri} is unreachable ({short_reason(err)}); interrupted trial runs were not "
              f"marked {status}", file=sys.stderr, flush=True)
        return 0


def close_stale(uri: str, experiment: str, *, name: str | None = None, force: bool = False) -> list[str]:
    """Parent runs left RUNNING by a driver that is gone, marked KILLED with their RUNNING trial runs.

    A parent qualifies when its ``ess.driver`` tag names a process of this host that no longer runs;
    with ``force`` (a named experiment whose driver is known to be gone, e.g. on a lost head node),
    whatever its driver. Returns the names of the experiments closed.
    """
    client = connect(uri)
    exp = retry(lambda: client.get_experiment_by_name(experiment), "get_experiment")
    if exp is None:
        return []
    closed = []
    tags = {ROLE_TAG: "parent", **({NAME_TAG: name} if name else {})}
    for run in find_runs(uri, exp.experiment_id, tags):
        if run.info.status != "RUNNING":
            continue
        alive = _driver_alive(run.data.tags.get(DRIVER_TAG, ""))
        if alive or (alive is None and not force):
            continue
        close_open_children(uri, run.info.run_id, "KILLED")
        retry(lambda run=run: client.set_terminated(run.info.run_id, "KILLED"), "set_terminated")
        closed.append(run.data.tags.get(NAME_TAG, run.info.run_id))
    return closed


def child_runs(uri: str, experiment: str, parent_run_id: str) -> list[Any]:
    """The nested runs of a parent run."""
    exp = connect(uri).get_experiment_by_name(experiment)
    return [] if exp is None else find_runs(uri, exp.experiment_id, {PARENT_TAG: parent_run_id})


def best_runs(uri: str, experiment: str, *, metric: str = "valid/ppl", k: int = 1,
              phases: Iterable[str] = ("search",), parent_name: str | None = None) -> list[Any]:
    """The ``k`` finished trial runs of ``experiment`` (optionally of one parent) with the lowest ``metric``."""
    exp = connect(uri).get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"source_experiment: no MLflow experiment {experiment!r} in {uri}")
    extra: dict[str, str] = {}
    if parent_name:
        parent = _newest(uri, exp.experiment_id, {ROLE_TAG: "parent", NAME_TAG: parent_name})
        if parent is None:
            raise ConfigError(f"source_run: no parent run named {parent_name!r} in experiment {experiment!r}")
        extra[PARENT_TAG] = parent.info.run_id
    runs = []
    for phase in phases:
        runs += [r for r in find_runs(uri, exp.experiment_id, {PHASE_TAG: phase, **extra})
                 if r.info.status == "FINISHED" and metric in r.data.metrics]
    if not runs:
        raise ConfigError(f"source_experiment: no finished runs ({', '.join(phases)}) with metric {metric!r} "
                          f"in {experiment!r}")
    return sorted(runs, key=lambda r: r.data.metrics[metric])[:k]


def download_artifact(uri: str, run_id: str, artifact_path: str, dst: str | os.PathLike) -> Path:
    import mlflow.artifacts  # the mlflow extra: this package is imported without it too

    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                    dst_path=str(dst), tracking_uri=uri))


__all__ = [
    "DRIVER_TAG", "best_runs", "child_runs", "close_open_children", "close_run", "close_stale", "download_artifact",
    "driver_id", "find_parent", "start_parent_run", "trial_run",
]
