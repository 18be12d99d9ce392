"""The MLflow runs of one experiment as its driver keeps them: the parent run, a nested run per trial, outages.

Trials never talk to MLflow. A trial writes its record (the run directory, which is also each of its
checkpoints) and reports rows; the driver shows the record: a nested run per trial, created when the
trial starts, brought up to date from each checkpoint (:class:`RunView`: each metric point and file
once), closed when the trial ends. Tune's events reach it through :class:`ess.adapters.ray.tracking.TrialRuns`;
``python -m ess.adapters.mlflow sync`` feeds it from the record instead. Nothing here is on a trial's
critical path.

When the store cannot be reached the experiment goes on, told once; whatever was not shown waits in
the record. At most every ``ESS_TRACKING_RETRY_S`` seconds (15) a later event checks whether the store
is back; then every run is brought up to date, told once more. ``python -m ess.adapters.mlflow sync
EXPERIMENT_DIR`` does the same afterwards.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ess.adapters.mlflow.client import (
    connect,
    is_unreachable,
    probe,
    retry,
    retry_interval,
    set_http_defaults,
    short_reason,
)
from ess.adapters.mlflow.record import RunRecord
from ess.adapters.mlflow.runs import close_open_children, start_parent_run, trial_run
from ess.adapters.mlflow.view import RunView
from ess.adapters.storage import is_uri, join, read_text, write_text
from ess.errors import ConfigError

PARENT_FILE = "parent.json"   # what the driver logged to the parent run, in the experiment directory
_LIVE: dict[str, ExperimentRuns] = {}   # the driver's one object per experiment directory (see live())


@dataclass
class TrialRun:
    identity: dict[str, Any]
    run_id: str | None = None
    view: Any = None
    checkpoint: Any = None                  # the latest registered checkpoint (a ray.tune.Checkpoint)
    status: str | None = None               # set when the trial has ended
    end_tags: dict[str, str] = field(default_factory=dict)
    diverged: bool = False
    starting: bool = False                  # started (again) and not yet matched with its run


class ExperimentRuns:
    """The parent run and the trial runs of one experiment, as the driver keeps them."""

    def __init__(self, uri: str | None, experiment: str, name: str, root: str, *,
                 say: Callable[[str], None] | None = None):
        self.uri, self.experiment, self.name, self.root = uri, experiment, name, root
        self.parent_id: str | None = None
        self.trials: dict[str, TrialRun] = {}
        self.down = False
        self._next_probe = 0.0
        self._interval = retry_interval()
        self._warned: set[str] = set()
        self._say = say or (lambda line: print(f"ess: {line}", file=sys.stderr, flush=True))
        self.parent = ParentRecord(join(root, PARENT_FILE))
        set_http_defaults(uri)
        _LIVE[root] = self

    # -- the store's reachability ----------------------------------------------------------------------
    def attempt(self, what: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` against the store unless it is known to be down; an outage is told once. True if it ran."""
        if self.uri is None:
            return False
        if self.down and not self._back():
            return False
        try:
            fn()
            return True
        except ConfigError:   # a wrong request (a command's argument): one line, not a warning
            raise
        except Exception as err:
            if not is_unreachable(err):   # tracking never stops the experiment: a refusal is one warning
                if what not in self._warned:
                    self._warned.add(what)
                    warnings.warn(f"MLflow {what} failed: {str(err).splitlines()[0][:200]}", RuntimeWarning,
                                  stacklevel=2)
                return False
            if not self.down:
                self.down = True
                self._say(f"MLflow at {self.uri} is unreachable ({short_reason(err)}); the experiment goes on and "
                          f"its record stays in {self.root}; the runs are brought up to date when it is back "
                          f"(or run: python -m ess.adapters.mlflow sync {self.root})")
            self._next_probe = time.monotonic() + self._interval
            return False

    def _back(self, force: bool = False) -> bool:
        """After an outage: whether the store answers again (asked at most every retry interval); if so, every
        run is brought up to date from the record first."""
        if not force and time.monotonic() < self._next_probe:
            return False
        self._next_probe = time.monotonic() + self._interval
        if not probe(self.uri):
            return False
        self.down = False
        try:
            self.sync_parent()
            for trial in self.trials.values():
                self.sync_trial(trial)
        except Exception as err:
            if not is_unreachable(err):
                raise
            self.down = True
            return False
        self._say(f"MLflow at {self.uri} is back: brought {len(self.trials)} trial runs and the parent run of "
                  f"{self.name} up to date")
        return True

    # -- the parent run --------------------------------------------------------------------------------
    def open_parent(self, *, tags: Mapping[str, Any], params: Mapping[str, Any], resume: bool) -> None:
        self.parent.update(tags=tags, params=params, status="RUNNING", resume=resume)
        self.attempt("start the parent run", self.sync_parent)

    def log_parent(self, **record: Any) -> None:
        """Tags, params, metrics, files or the final status of the parent run: recorded, then shown."""
        self.parent.update(**record)
        self.attempt("log to the parent run", self.sync_parent)

    def sync_parent(self) -> None:
        """The parent run (created, or found again when resuming) brought up to date with ``parent.json``."""
        data = self.parent.data
        if self.parent_id is None:
            self.parent_id = start_parent_run(self.uri, self.experiment, self.name, tags=data["tags"],
                                              params=data["params"], resume=bool(data.get("resume")))
            self.parent.update(resume=True)   # found again from here on, never a second one
        self.parent.show(self.uri, self.parent_id)

    # -- the trial runs --------------------------------------------------------------------------------
    def started(self, trial_id: str, identity: Mapping[str, Any]) -> None:
        """A trial (re)started; ``identity``: who it is, as its run names it (phase, run name, tags)."""
        trial = self.trials.setdefault(trial_id, TrialRun(dict(identity)))
        trial.status, trial.starting = None, True
        self.attempt("start a trial run", lambda: self._open(trial))

    def _open(self, trial: TrialRun) -> None:
        """Find or create the trial's run. A run found for a trial that was starting is a restart (a worker,
        a node or the driver was lost), counted in ``ess.restarts``."""
        if self.parent_id is None:
            self.sync_parent()
        ident = trial.identity
        run_id, found = trial_run(self.uri, self.parent_id, ident["trial_id"], run_name=ident["run_name"],
                                  tags=ident["tags"])
        trial.run_id, trial.view = run_id, RunView(self.uri, run_id)
        restarted, trial.starting = found and trial.starting, False
        if restarted:
            trial.view.set_tags({"ess.restarts": int(trial.view.tags.get("ess.restarts", "0")) + 1})

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        """A reported row: gets the run id (Tune lets callbacks add to it); a divergence is noted."""
        trial = self.trials.get(trial_id)
        if trial is None:
            return
        result["mlflow_run_id"] = trial.run_id or ""
        if result.get("diverged"):
            trial.diverged = True
            trial.end_tags.update({"ess.failure": "diverged", "ess.failure_reason": str(result.get("failure"))[:5000]})
        elif result.get("done"):   # the scheduler stopped the trial at this row
            trial.end_tags["ess.stopped_by_tune"] = "true"

    def checkpoint(self, trial_id: str, checkpoint: Any) -> None:
        trial = self.trials.get(trial_id)
        if trial is not None:
            trial.checkpoint = checkpoint
            self.attempt("log a checkpoint", lambda: self.sync_trial(trial))

    def ended(self, trial_id: str, status: str) -> None:
        trial = self.trials.get(trial_id)
        if trial is not None:
            trial.status = "FAILED" if trial.diverged else status
            self.attempt("close a trial run", lambda: self.sync_trial(trial))

    def sync_trial(self, trial: TrialRun) -> None:
        """A trial's run brought up to date with its latest checkpoint; closed, with its end tags, once it ended."""
        if trial.view is None:
            self._open(trial)
        final = trial.status == "FINISHED"
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as path:   # a local checkpoint is read in place
                trial.view.sync(RunRecord(path), final=final)
        if trial.status is not None:
            trial.view.set_tags(trial.end_tags)
            if trial.view.client.get_run(trial.run_id).info.status == "RUNNING":
                trial.view.finish(trial.status)

    def interrupted(self) -> None:
        """The stage stopped part way (Ctrl+C): the runs of its unfinished trials and the parent run, KILLED."""
        for trial in self.trials.values():
            if trial.status is None:
                trial.status = "KILLED"
                self.attempt("close a trial run", lambda trial=trial: self.sync_trial(trial))
        if self.parent_id is not None:   # runs of trials this process never saw (an earlier, killed driver's)
            self.attempt("close the trial runs", lambda: close_open_children(self.uri, self.parent_id, "KILLED"))
        self.log_parent(status="KILLED")
        self.end()

    def end(self) -> None:
        """The experiment is over: one more try to bring everything up to date, or one line on how to."""
        if self.down and not self._back(force=True):
            self._say(f"MLflow at {self.uri} is still unreachable; when it is back run: "
                      f"python -m ess.adapters.mlflow sync {self.root}")


class ParentRecord:
    """What the parent run shows, kept in ``parent.json`` of the experiment directory (the record)."""

    def __init__(self, path: str):
        self.path = path
        self.data: dict[str, Any] = {"tags": {}, "params": {}, "metrics": {}, "files": [], "status": None}
        try:
            self.data.update(json.loads(read_text(path)))
        except (OSError, ValueError):
            pass
        self._sent: dict[str, Any] = {}

    def update(self, *, tags: Mapping[str, Any] = (), params: Mapping[str, Any] = (),
               metrics: Mapping[str, Any] = (), files: list[str] = (), **fields: Any) -> None:
        self.data["tags"].update({str(k): str(v) for k, v in dict(tags).items() if v is not None})
        self.data["params"].update({str(k): str(v) for k, v in dict(params).items()})
        self.data["metrics"].update({str(k): float(v) for k, v in dict(metrics).items()})
        self.data["files"] += [f for f in files if f not in self.data["files"]]
        self.data.update(fields)
        write_text(self.path, json.dumps(self.data, indent=1) + "\n")

    def show(self, uri: str, run_id: str) -> None:
        """Send what the parent run does not have yet (each item once per process; all of them are idempotent)."""
        from mlflow.entities import Metric, Param, RunTag  # the mlflow extra: this package is imported without it


        client, now = connect(uri), int(time.time() * 1000)
        run = retry(lambda: client.get_run(run_id), "get_run")
        tags = [RunTag(k, v[:8000]) for k, v in self.data["tags"].items() if run.data.tags.get(k) != v]
        params = [Param(k, v[:6000]) for k, v in self.data["params"].items() if k not in run.data.params]
        metrics = [Metric(k, v, now, 0) for k, v in self.data["metrics"].items() if k not in run.data.metrics]
        for start in range(0, max(len(tags), len(params), len(metrics)), 100):
            retry(lambda start=start: client.log_batch(run_id, metrics=metrics[start:start + 100],
                                                       params=params[start:start + 100],
                                                       tags=tags[start:start + 100]), "log_batch")
        for name in self.data["files"]:
            if not is_uri(name) and Path(name).is_file() and self._sent.get(name) != Path(name).stat().st_mtime_ns:
                retry(lambda name=name: client.log_artifact(run_id, name), "log_artifact")
                self._sent[name] = Path(name).stat().st_mtime_ns
        status = self.data.get("status")
        if status and status != run.info.status:
            if status == "RUNNING":
                retry(lambda: client.update_run(run_id, status="RUNNING"), "update_run")
            else:
                retry(lambda: client.set_terminated(run_id, status), "set_terminated")


def live(uri: str | None, experiment: str, name: str, root: str) -> ExperimentRuns:
    """The driver's :class:`ExperimentRuns` of experiment directory ``root``, made on first use."""
    return _LIVE.get(root) or ExperimentRuns(uri, experiment, name, root)


__all__ = ["PARENT_FILE", "ExperimentRuns", "ParentRecord", "TrialRun", "live"]
