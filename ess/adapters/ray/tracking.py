"""The Tune callback that shows a stage's trials in MLflow, through the driver's ExperimentRuns."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from ess.adapters.mlflow.experiment_runs import ExperimentRuns, live
from ess.adapters.ray.grid import trial_identity


class TrialRuns(Callback):
    """Tune's trial events handed to :class:`~ess.adapters.mlflow.experiment_runs.ExperimentRuns`. Picklable
    (Tune keeps it for ``Tuner.restore``): it holds only how to find the driver's live object again, or make one."""

    def __init__(self, uri: str | None, experiment: str, name: str, root: str):
        self.args = (uri, experiment, name, root)

    @property
    def runs(self) -> ExperimentRuns:
        return live(*self.args)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.started(trial.trial_id, trial_identity(trial.config, trial.trial_id, str(trial)))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.runs.result(trial.trial_id, result)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.runs.checkpoint(trial.trial_id, checkpoint)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.ended(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.ended(trial.trial_id, "FAILED")


__all__ = ["TrialRuns"]
