"""The analysis package's errors, its warning too.

Every error a user can cause (an unknown or empty experiment, a metric no run has, a folder that
holds no Tune results) is an :class:`ess.errors.ESSError`, so the report command prints one line
(:func:`ess.cli.run_main`) instead of a traceback.
"""

from __future__ import annotations

from ess.errors import ESSError


class AnalysisError(ESSError):
    """Base class of the analysis errors."""


class UnknownExperimentError(AnalysisError):
    """No MLflow experiment, Tune experiment or result folder of that name; the message lists the known ones."""


class EmptyExperimentError(AnalysisError):
    """The experiment exists but holds no trial runs (or none that can be analysed)."""


class MissingMetricError(AnalysisError):
    """A metric the analysis needs is missing; the message names the run and the metric."""


class AnalysisWarning(UserWarning):
    """Something was left out of an analysis (a run without the metric, an arm with one seed ...)."""


__all__ = ["AnalysisError", "AnalysisWarning", "EmptyExperimentError", "MissingMetricError",
           "UnknownExperimentError"]
