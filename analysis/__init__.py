"""Analysis of the jobs' runs: pandas tables, statistics, figures, a report.

    from analysis import load_runs, trial_summary, aggregate, compare_arms
    runs = load_runs("ess-ablation", tracking_uri="sqlite:///runs/tune/mlflow.db")   # or ray_results="runs/tune/NAME"
    trials = trial_summary(runs)
    aggregate(trials, "test_ppl")            # mean, std, 95% CI and count over seeds per arm
    compare_arms(trials, "test_ppl")         # Welch t-test per pair of arms, p-values and effect sizes

Modules: :mod:`analysis.load` (MLflow and Ray Tune results to a flat frame, per-trial summary; the readers
:mod:`analysis.mlflow_store` and :mod:`analysis.ray_results`, the frame's columns :mod:`analysis.schema`),
:mod:`analysis.stats` (per-arm statistics, tests, curves over epochs; the arms themselves in :mod:`analysis.arms`),
:mod:`analysis.genotypes` (genotype ranking, op and predecessor frequencies),
:mod:`analysis.trials` (a search joined with its retrain), :mod:`analysis.figures` (PNG and SVG figures) and
:mod:`analysis.report` (``python -m analysis.report``: per job kind, :mod:`analysis.jobs`; its sections
:mod:`analysis.sections` on the page of :mod:`analysis.page`).
Ray is never imported; MLflow only when loading from an MLflow store.
"""

# The extra is checked before the modules that need it are imported (so the imports below come after code).
# ruff: noqa: E402
from ess.extras import require

require("analysis", "python -m analysis (report, results)")

from analysis.arms import ARM
from analysis.errors import (
    AnalysisError,
    AnalysisWarning,
    EmptyExperimentError,
    MissingMetricError,
    UnknownExperimentError,
)
from analysis.genotypes import op_frequencies, predecessor_frequencies, rank_genotypes
from analysis.load import load_runs, trial_summary
from analysis.mlflow_store import load_mlflow
from analysis.ray_results import load_ray_results
from analysis.stats import aggregate, aggregate_many, compare_arms, epoch_curves, evolution, welch_t_test

__all__ = [
    "ARM", "AnalysisError", "AnalysisWarning", "EmptyExperimentError", "MissingMetricError", "UnknownExperimentError",
    "aggregate", "aggregate_many", "compare_arms", "epoch_curves", "evolution", "load_mlflow", "load_ray_results",
    "load_runs", "op_frequencies", "predecessor_frequencies", "rank_genotypes", "trial_summary", "welch_t_test",
]
