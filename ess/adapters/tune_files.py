"""Tune's files in an experiment folder, read as plain JSON without importing Ray.

Each stage of a job is a Tune experiment folder ``<experiment>/<stage>/``: its saved state
``experiment_state-<time>.json`` (the newest is the current one; Tune picks it by the time in the name) and
one folder per trial holding ``params.json`` (the trial's config), ``result.json`` (one JSON line per reported
row; Tune's ``progress.csv`` keeps only the first row's columns) and ``checkpoint_<n>/`` (the run directory as
it was at that report). The driver reads the state to tell a finished stage from an interrupted one, the MLflow
sync brings runs up to date from the rows and checkpoints, and ``analysis`` turns them into its frame.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ess.adapters.storage import filesystem, is_uri

STATE_PREFIX = "experiment_state"
FINISHED = ("TERMINATED", "ERROR")   # Tune's end states; the others (RUNNING, PENDING, PAUSED) are unfinished
CONFIG_FILE, RESULT_FILE, PROGRESS_FILE = "params.json", "result.json", "progress.csv"


def _newest_state(stage: str | os.PathLike) -> str | None:
    """The text of the newest saved experiment state of ``stage`` (a local folder or a URI); None if there is none."""
    if is_uri(str(stage)):
        import pyarrow.fs  # a remote store only (s3://, gs://): pyarrow comes with Ray

        fs, path = filesystem(str(stage))
        infos = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(path)) if i.base_name.startswith(STATE_PREFIX)]
        if not infos:
            return None
        with fs.open_input_stream(max(infos, key=lambda i: i.base_name).path) as f:
            return f.read().decode("utf-8")
    files = sorted(Path(stage).glob(f"{STATE_PREFIX}*.json"), key=lambda f: f.name)
    return files[-1].read_text(encoding="utf-8") if files else None


def trial_states(stage: str | os.PathLike) -> list[dict[str, Any] | None]:
    """One entry per trial of the newest saved state of ``stage``: its saved fields (``trial_id``, ``status``,
    ``relative_logdir`` ...), or None where an entry cannot be read. No state yet: no trials. A state file that is
    not JSON raises (``ValueError``)."""
    text = _newest_state(stage)
    if text is None:
        return []
    out: list[dict[str, Any] | None] = []
    for item in json.loads(text).get("trial_data", []):
        data = item[0] if isinstance(item, (list, tuple)) else item   # [trial JSON, its runtime metadata]
        try:
            data = json.loads(data) if isinstance(data, str) else data
        except json.JSONDecodeError:
            data = None
        out.append(dict(data) if isinstance(data, Mapping) else None)
    return out


def unfinished_trials(stage: str | os.PathLike) -> int:
    """Trials the saved state of ``stage`` does not hold as finished (:data:`FINISHED`).

    After Ctrl+C, ``Tuner.fit()`` returns normally and its ResultGrid shows the stopped trials as
    TERMINATED; the state it saved for ``Tuner.restore`` still says RUNNING/PENDING/PAUSED. That
    saved state decides whether a stage is complete.
    """
    return sum(1 for trial in trial_states(stage) if (trial or {}).get("status") not in FINISHED)


def statuses(stage: str | os.PathLike) -> dict[str, str]:
    """``{key: Tune status}`` of the trials of ``stage``, each under its trial id and its folder names
    (``relative_logdir``, ``custom_dirname``); empty when no state can be read."""
    try:
        states = trial_states(stage)
    except (OSError, ValueError):
        return {}
    out: dict[str, str] = {}
    for trial in states:
        for key in ("trial_id", "relative_logdir", "custom_dirname"):
            if trial and trial.get(key):
                out[str(trial[key])] = str(trial.get("status"))
    return out


def is_trial_dir(path: Path) -> bool:
    """Whether ``path`` is a Tune trial folder: its config, and its rows (or Tune's CSV of them)."""
    return (path / CONFIG_FILE).is_file() and ((path / RESULT_FILE).is_file() or (path / PROGRESS_FILE).is_file())


def trial_dirs(root: str | os.PathLike, max_depth: int = 4) -> list[Path]:
    """The trial folders under ``root`` (itself included, at most ``max_depth`` levels down), in sorted order;
    checkpoints and hidden folders are not entered."""
    root = Path(root)
    found = []
    for path, dirs, _ in os.walk(root):
        here = Path(path)
        depth = len(here.relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "checkpoint_")) and depth < max_depth)
        if is_trial_dir(here):
            found.append(here)
            dirs[:] = []
    return found


def trial_config(trial_dir: Path) -> dict[str, Any]:
    """The trial's config (``params.json``): ``ess``, the stage's spec, and its own values; ``ValueError`` or
    ``OSError`` when it cannot be read."""
    data = json.loads((Path(trial_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{Path(trial_dir) / CONFIG_FILE}: not a mapping")
    return data


def result_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """The rows the trial reported, in order (``result.json``; a line torn by a killed driver is skipped)."""
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def checkpoints(trial_dir: Path) -> list[Path]:
    """The trial's checkpoint folders, oldest first (the last holds its latest run directory)."""
    return sorted(Path(trial_dir).glob("checkpoint_*"), key=lambda p: p.name)


__all__ = ["CONFIG_FILE", "FINISHED", "PROGRESS_FILE", "RESULT_FILE", "checkpoints", "is_trial_dir", "result_rows",
           "statuses", "trial_config", "trial_dirs", "trial_states", "unfinished_trials"]
