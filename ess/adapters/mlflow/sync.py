"""MLflow brought up to date with an experiment directory, or one run directory, after the fact.

What ``python -m ess.adapters.mlflow sync DIR`` runs: the same :class:`ExperimentRuns` the driver
keeps, fed from the record instead of from Tune (the parent run from ``job.yaml`` and
``parent.json``; each trial from its latest checkpoint, its last reported row and the saved
experiment state, all read by :mod:`ess.adapters.tune_files`). Every step is idempotent, so it is safe
to repeat, and safe while the driver runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from ess.adapters.mlflow.client import resolve_tracking_uri
from ess.adapters.mlflow.experiment_runs import ExperimentRuns, TrialRun
from ess.adapters.mlflow.record import TRIAL_FILE, RunRecord
from ess.adapters.mlflow.runs import find_parent
from ess.adapters.tune_files import checkpoints, result_rows, statuses, trial_dirs
from ess.config import parse_yaml
from ess.errors import ConfigError

_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}   # Tune's end states; others: still running


class LocalCheckpoint:
    """A checkpoint directory on this machine, read in place."""

    def __init__(self, path: Path):
        self.path = path

    def as_directory(self):
        return nullcontext(str(self.path))


def experiment_of(root: Path, tracking_uri: str | None = None) -> tuple[str, str, str]:
    """``(tracking URI, MLflow experiment, experiment name)`` of an experiment directory, from its ``job.yaml``."""
    saved = root / "job.yaml"
    if not saved.is_file():
        raise ConfigError(f"{root}: not an experiment directory (no job.yaml)")
    job = parse_yaml(saved.read_text(encoding="utf-8"), str(saved))
    if not isinstance(job, dict) or "job" not in job:
        raise ConfigError(f"{saved}: not a saved job config (no 'job' key)")
    uri = resolve_tracking_uri(tracking_uri or job.get("tracking_uri") or "", root.parent)
    if uri is None:
        raise ConfigError("tracking_uri: tracking is off (MLFLOW_TRACKING_URI=none); give --tracking-uri")
    return uri, job.get("experiment") or f"ess-{job['job']}", job.get("name") or root.name


def _trials(root: Path) -> list[TrialRun]:
    """Every trial of every stage of the experiment, as the driver would have kept it."""
    out, stages = [], {}
    for trial_dir in trial_dirs(root, max_depth=2):   # <experiment>/<stage>/<trial>
        saved = checkpoints(trial_dir)
        if not saved or not (saved[-1] / TRIAL_FILE).is_file():
            continue   # nothing recorded yet (failed before its first epoch ended)
        rows = result_rows(trial_dir)
        row = rows[-1] if rows else {}
        trial = TrialRun(RunRecord(saved[-1]).identity(), checkpoint=LocalCheckpoint(saved[-1]))
        trial.diverged = bool(row.get("diverged"))
        if trial.diverged:
            trial.end_tags = {"ess.failure": "diverged", "ess.failure_reason": str(row.get("failure"))[:5000]}
        stage = stages.setdefault(trial_dir.parent, statuses(trial_dir.parent))
        status = _STATUS.get(stage.get(trial.identity.get("trial_id", ""), ""))
        trial.status = "FAILED" if status and trial.diverged else status
        out.append(trial)
    return out


def sync_directory(path: str | Path, tracking_uri: str | None = None,
                   say: Callable[[str], None] = print) -> bool:
    """Bring MLflow up to date with an experiment directory (``job.yaml``) or one trial's run directory
    (``trial.json``); True when everything was shown, False when the store is down (told in one line)."""
    path = Path(path).expanduser().resolve()
    if (path / TRIAL_FILE).is_file() and not (path / "job.yaml").is_file():
        identity = RunRecord(path).identity()
        uri = resolve_tracking_uri(tracking_uri, "runs/tune")
        if uri is None:
            raise ConfigError("tracking_uri: tracking is off (MLFLOW_TRACKING_URI=none); give --tracking-uri")
        runs = ExperimentRuns(uri, identity.get("mlflow_experiment") or "", identity.get("experiment") or "",
                              str(path), say=lambda line: say(f"ess: {line}"))
        trials = [TrialRun(identity, checkpoint=LocalCheckpoint(path))]
        single = True
    else:
        uri, experiment, name = experiment_of(path, tracking_uri)
        runs = ExperimentRuns(uri, experiment, name, str(path), say=lambda line: say(f"ess: {line}"))
        trials = _trials(path)
        single = False

    def show() -> None:
        if single:   # a run directory names its experiment: its parent run must be there already
            runs.parent_id = find_parent(uri, runs.experiment, runs.name)
            if runs.parent_id is None:
                raise ConfigError(f"{path}: no parent run of experiment {runs.name!r} in {runs.experiment!r} at "
                                  f"{uri}; sync its experiment directory instead")
        else:
            runs.sync_parent()
        for trial in trials:
            runs.trials[trial.identity["trial_id"]] = trial
            runs.sync_trial(trial)

    done = runs.attempt("sync", show)
    if done:
        say(f"{runs.name}: {len(trials)} trial runs and the parent run are up to date in {uri}")
    return done


__all__ = ["LocalCheckpoint", "experiment_of", "sync_directory"]
