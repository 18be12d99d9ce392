"""The MLflow runs of an experiment: its parent run, one nested run per trial, the best of them."""

from __future__ import annotations

import os
import sys
import time
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
    restarts,
    retry,
    set_http_defaults,
    short_reason,
)
from ess.adapters.mlflow.spool import (
    LOCAL_TAG,
    SpoolDeferred,
    default_spool_dir,
    is_pending,
    new_local_id,
    resolve_ref,
)
from ess.adapters.mlflow.tracker import MLflowTracker, Tracker
from ess.errors import ConfigError


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
    all_tags = commit_tags({ROLE_TAG: "parent", NAME_TAG: name,
                             **{k: str(v) for k, v in (tags or {}).items() if v is not None}})
    experiment_id = None
    try:
        experiment_id = get_or_create_experiment(uri, experiment)
        client = connect(uri)
        run_id = None
        if resume:
            found = find_runs(uri, experiment_id, {ROLE_TAG: "parent", NAME_TAG: name},
                              order_by=["attributes.start_time DESC"])
            if found:
                run_id = found[0].info.run_id
                retry(lambda: client.update_run(run_id, status="RUNNING"), "update_run")
        if run_id is None:
            run = retry(lambda: client.create_run(experiment_id, run_name=name,
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
    commit_tags(all_tags)
    opts = dict(system_metrics=system_metrics, system_metrics_interval=system_metrics_interval,
                spool_dir=spool_dir, local_id=local_id, label=label)
    try:
        client = connect(uri)
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
            retry(lambda: client.update_run(run_id, status="RUNNING"), "update_run")
        else:
            run = retry(lambda: client.create_run(experiment_id, run_name=run_name,
                                                   tags={**all_tags, LOCAL_TAG: local_id}), "create_run")
            run_id = run.info.run_id
        restart_count = restarts(client, run_id) if resumed else 0
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
        tracker.set_tags({**all_tags, "ess.restarts": restart_count + 1})
    elif params:
        tracker.log_params(params)
    return tracker


def close_run(uri: str | None, run_id: str | None, status: str = "FINISHED") -> bool:
    """Mark ``run_id`` ``status`` if it is still RUNNING; quietly False when the store cannot be reached
    or the run is a ``spool:`` placeholder (its own tracker, or ``sync``, sets the status)."""
    if uri is None or not run_id or is_pending(run_id):
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


def close_open_children(uri: str | None, experiment: str, parent_run_id: str | None, status: str = "KILLED") -> int:
    """Mark the parent's nested runs still RUNNING (trials interrupted with the driver) as ``status``.

    Returns 0 without raising when the store cannot be reached (the trials' spools keep their status).
    """
    if uri is None or parent_run_id is None or is_pending(parent_run_id):
        return 0
    client = connect(uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return 0
        runs = find_runs(uri, exp.experiment_id, {PARENT_TAG: parent_run_id})
        n = 0
        for run in runs:
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


def child_runs(uri: str, experiment: str, parent_run_id: str) -> list[Any]:
    """The nested runs of a parent run."""
    client = connect(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else find_runs(uri, exp.experiment_id, {PARENT_TAG: parent_run_id})


def best_runs(uri: str, experiment: str, *, metric: str = "valid/ppl", k: int = 1,
              phases: Iterable[str] = ("search",), parent_name: str | None = None) -> list[Any]:
    """The ``k`` finished trial runs of ``experiment`` (optionally of one parent) with the lowest ``metric``."""
    client = connect(uri)
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


__all__ = [
    "best_runs", "child_runs", "close_open_children", "close_run", "download_artifact", "start_parent_run",
    "start_trial_run",
]
