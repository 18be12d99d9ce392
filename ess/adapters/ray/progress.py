"""The console while a job runs: one short line per trial epoch instead of Tune's status tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from ray.tune import Callback

from ess.adapters.ray.grid import trial_label
from ess.adapters.ray.spec import TrialSpec

WIDTH = 100


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(label: str, result: Mapping[str, Any], epochs: Mapping[str, int], started: float,
                  now: float) -> str | None:
    """``label  stage k/N  valid ppl P  elapsed E  ETA T`` for one reported row (None: nothing to say).

    ``epochs``: the planned epochs of each stage of the trial (``search``, ``retrain``); the ETA assumes the
    remaining epochs take as long as the done ones did.
    """
    if result.get("final"):   # the closing row repeats the last epoch's
        return None
    if "retrain/epoch" in result:
        stage, k, ppl = "retrain", int(result["retrain/epoch"]), result.get("retrain/valid/ppl")
    elif "epoch" in result:
        stage, k, ppl = "search", int(result["epoch"]), result.get("valid/ppl")
    else:
        return None
    done = k + (epochs.get("search", 0) if stage == "retrain" else 0)
    total = sum(epochs.values()) or done
    elapsed = now - started
    eta = elapsed / done * (total - done) if done else float("nan")
    ppl_text = f"valid ppl {float(ppl):8.1f}" if isinstance(ppl, (int, float)) else "valid ppl        -"
    line = (f"{label[:34]:<34} {stage} {k}/{epochs.get(stage, k)}  {ppl_text}  {_duration(elapsed)} elapsed"
            f"  ETA {_duration(eta) if done < total else 'done'}")
    return line[:WIDTH]


class ProgressLines(Callback):
    """Prints :func:`progress_line` for every result Tune receives (the job runs Tune at ``verbose=0``)."""

    def __init__(self, stage: str, out: TextIO | None = None):
        self.stage, self.out = stage, out
        self._started: dict[str, float] = {}
        self._specs: dict[str, TrialSpec] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.setdefault(trial.trial_id, time.time())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        spec = self._specs.get(trial.trial_id) or self._specs.setdefault(
            trial.trial_id, TrialSpec.from_config(trial.config["ess"], f"trial {trial.trial_id}"))
        epochs = {stage: cfg.epochs for stage, cfg in (("search", spec.search), ("retrain", spec.train)) if cfg}
        started = self._started.setdefault(trial.trial_id, time.time() - float(result.get("time_total_s", 0.0)))
        line = progress_line(trial_label(trial.config, trial.trial_id), result, epochs, started, time.time())
        if line:
            print(line, file=self.out or sys.stdout, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = sum(t.status == "TERMINATED" for t in trials if t is not trial) + 1
        label = trial_label(trial.config, trial.trial_id)
        print(f"{self.stage}: {done}/{len(trials)} trials finished ({label})"[:WIDTH], file=self.out or sys.stdout,
              flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self.stage}: trial {trial_label(trial.config, trial.trial_id)} failed (its error file: Tune's "
              f"trial folder)"[:WIDTH], file=self.out or sys.stdout, flush=True)


__all__ = ["ProgressLines", "progress_line"]
