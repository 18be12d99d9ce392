"""MLflow as the experiments' view: one parent run per experiment, one nested run per trial.

MLflow shows the record, it does not hold it: a trial's run directory (``metrics.jsonl``,
``genotypes/``, ``arch_weights/``, ``config.yaml``, ``system_metrics.jsonl``, checkpoints) is the record
(:mod:`~ess.adapters.mlflow.record`), and a run is brought up to date with it by
:class:`~ess.adapters.mlflow.view.RunView` (the Tune driver does it at each checkpoint;
``python -m ess.adapters.mlflow sync DIR`` does it afterwards).

Layout in MLflow, one experiment per job kind (``ess-joint_search``, ``ess-ablation`` ...): the
parent run (tag ``ess.role=parent``) holds the job config, the summary and the best genotype; each
nested trial run (tag ``mlflow.parentRunId``) holds the resolved config as params, per-epoch metrics
with ``step = epoch``, the genotype JSON and picture of each epoch under ``genotypes/``, the
architecture-weight tables, the final genotype and weights, tags for mode, seed, dataset, node counts
and git commit, and system metrics. ``python -m ess.adapters.mlflow ui`` opens a store.
"""

from ess.adapters.mlflow.client import (
    CONFIG_TAGS,
    DEFAULT_STORAGE,
    NAME_TAG,
    PARENT_TAG,
    PHASE_TAG,
    ROLE_TAG,
    TRIAL_TAG,
    config_tags,
    default_tracking_uri,
    find_runs,
    flat_params,
    get_or_create_experiment,
    git_commit,
    local_artifact_root,
    numeric_metrics,
    resolve_tracking_uri,
    sqlite_path,
    ui_command,
    ui_hint,
)
from ess.adapters.mlflow.record import RunRecord
from ess.adapters.mlflow.runs import (
    best_runs,
    child_runs,
    close_open_children,
    close_run,
    close_stale,
    download_artifact,
    find_parent,
    start_parent_run,
    trial_run,
)
from ess.adapters.mlflow.view import RunView

__all__ = [
    "CONFIG_TAGS", "DEFAULT_STORAGE", "NAME_TAG", "PARENT_TAG", "PHASE_TAG", "ROLE_TAG", "TRIAL_TAG", "RunRecord",
    "RunView", "best_runs", "child_runs", "close_open_children", "close_run", "close_stale", "config_tags",
    "default_tracking_uri", "download_artifact", "find_parent", "find_runs", "flat_params", "get_or_create_experiment",
    "git_commit", "local_artifact_root", "numeric_metrics", "resolve_tracking_uri", "start_parent_run", "sqlite_path",
    "trial_run", "ui_command", "ui_hint",
]
