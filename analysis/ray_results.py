"""The Ray Tune reader: the trials of Tune's result folders as the flat frame.

For jobs run without MLflow. Each trial folder holds ``params.json`` (the trial's config) and
``result.json`` (one JSON line per reported row; Tune's ``progress.csv`` is only a fallback because it
keeps the columns of the first row), read by :mod:`ess.adapters.tune_files` as the MLflow sync reads
them. The frame is :mod:`analysis.schema`'s.

Ray is never imported: the result folders are read as plain JSON, so this reader works with pandas alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.errors import AnalysisError, EmptyExperimentError, UnknownExperimentError
from analysis.schema import (
    CONFIG_COLUMNS,
    RETRAIN_PREFIX,
    SOURCE_PREFIX,
    Trial,
    as_number,
    canonical_genotype,
    flat_frame,
    is_metric,
    short_list,
)
from ess.adapters import tune_files
from ess.adapters.mlflow import flat_params

#: Tune trial status -> MLflow run status
_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED", "RUNNING": "RUNNING", "PENDING": "RUNNING",
           "PAUSED": "RUNNING"}
_RAY_MAX_DEPTH = 4


def _result_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """The reported rows of a trial: ``result.json`` (:func:`ess.adapters.tune_files.result_rows`), else Tune's
    ``progress.csv``."""
    rows = tune_files.result_rows(trial_dir)
    csv = trial_dir / tune_files.PROGRESS_FILE
    if rows or not csv.is_file() or not csv.stat().st_size:
        return rows
    try:
        return pd.read_csv(csv).to_dict(orient="records")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return []


def _job_experiment(trial_dir: Path, job: str | None) -> str:
    """The MLflow experiment the job would have logged to: ``job.yaml``'s ``experiment`` or ``ess-<job>``."""
    for parent in list(trial_dir.parents)[:3]:
        saved = parent / "job.yaml"
        if saved.is_file():
            try:
                data = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
            except Exception:
                data = {}
            if data.get("experiment"):
                return str(data["experiment"])
            if data.get("job"):
                return f"ess-{data['job']}"
    return f"ess-{job}" if job else trial_dir.parent.name


def _ray_trial(trial_dir: Path, statuses: Mapping[str, str]) -> Trial:
    try:
        config = tune_files.trial_config(trial_dir)
    except (OSError, ValueError) as err:
        raise AnalysisError(f"{trial_dir / 'params.json'}: not a Tune trial config ({err})") from None
    spec = config.get("ess") if isinstance(config.get("ess"), Mapping) else {}
    variant = {**(config.get("variant") or {}), **{k: v for k, v in config.items() if k not in ("ess", "variant")}}
    rows = _result_rows(trial_dir)
    last = rows[-1] if rows else {}
    phase = next((r.get("phase") for r in reversed(rows) if r.get("phase")), None)
    values: dict[str, Any] = {}
    params: dict[str, str] = {}
    if spec.get("search"):
        search = {**spec["search"], **{k: v for k, v in variant.items() if k in spec["search"]}}
        values.update(search)
        params.update(flat_params(search, "search."))
        if spec.get("train"):
            params.update(flat_params(spec["train"], "retrain."))
    elif spec.get("transfer"):
        transfer = {**spec["transfer"], **{k: v for k, v in variant.items() if k in spec["transfer"]}}
        values.update({k: transfer.get(k) for k in ("seed", "task", "dataset")})
        params.update(flat_params(transfer, "transfer."))
    elif spec.get("train"):
        train = {**spec["train"], **{k: v for k, v in variant.items() if k in spec["train"] and k != "genotype"}}
        values.update({k: v for k, v in train.items() if k != "genotype"})
        params.update(flat_params(train, "retrain."))
    info_config = {k: values[k] for k in CONFIG_COLUMNS if k in values and values[k] is not None}
    if variant.get("genotype_label") is not None:
        info_config["genotype_label"] = variant["genotype_label"]
        source = (spec.get("genotype_info") or {}).get(variant["genotype_label"]) or {}
        info_config.update({f"{SOURCE_PREFIX}{k}": v for k, v in source.items() if v is not None})
    if variant.get("cell_label") is not None:
        info_config["cell"] = variant["cell_label"]
        source = (spec.get("cell_info") or {}).get(variant["cell_label"]) or {}
        info_config.update({f"{SOURCE_PREFIX}{k}": v for k, v in source.items() if v is not None})
    trial_id = str(last.get("trial_id") or trial_dir.name.rsplit("_", 1)[-1])
    status = statuses.get(trial_dir.name) or statuses.get(trial_id)
    status = _STATUS.get(status, status) if status is not None else None
    if status is None:
        status = "FAILED" if (trial_dir / "error.txt").exists() else ("FINISHED" if rows else "RUNNING")
    run_id = next((r.get("mlflow_run_id") for r in reversed(rows) if r.get("mlflow_run_id")), None)
    trial = Trial({
        "experiment": _job_experiment(trial_dir, spec.get("job")),
        "parent": spec.get("experiment_name") or trial_dir.parent.parent.name,
        "run_id": run_id or f"{trial_dir.parent.name}/{trial_dir.name}",
        "run_name": trial_dir.name.removesuffix(f"_{trial_id}"),   # the variant label, as the MLflow run name
        "trial_id": trial_id, "status": status, "phase": phase, "job": spec.get("job"), **info_config,
        "wall_seconds": float(last["time_total_s"]) if last.get("time_total_s") is not None else np.nan,
        "start_time": (pd.Timestamp(rows[0]["timestamp"] - rows[0].get("time_total_s", 0), unit="s", tz="UTC")
                       if rows and rows[0].get("timestamp") is not None else pd.NaT),
        **{f"config.{k}": as_number(v) for k, v in params.items()},
    })
    final = None
    for row in rows:
        metrics = {k: v for k, v in row.items() if is_metric(k, v)}
        retrain = {k: v for k, v in metrics.items() if k.startswith(RETRAIN_PREFIX)}
        genotype = canonical_genotype(row.get("genotype"))
        extra = {"timestamp": float(row["timestamp"])} if row.get("timestamp") is not None else {}
        if retrain:
            epoch = retrain.get("retrain/epoch", row.get("epoch"))
            trial.add("retrain", epoch, {**{k: v for k, v in retrain.items() if k != "retrain/epoch"},
                                         "genotype": genotype, **extra})
        else:
            stage = "transfer" if phase == "transfer" else "search"
            trial.add(stage, row.get("epoch"), {**metrics, "genotype": genotype, **extra})
        if genotype is not None:
            final = genotype
    trial.info["final_genotype"] = final
    return trial


def load_ray_results(path: str | os.PathLike, experiment: str | None = None) -> pd.DataFrame:
    """The trials of Ray Tune result folders as the flat frame (see the module docstring).

    ``path`` is a Tune experiment folder (``<storage>/<name>/ablation``), a job folder holding
    several (``<storage>/<name>``: search and retrain stages), or the storage root; with
    ``experiment``, ``path/experiment`` is used when it exists, else the trials of the Tune
    experiment (job name) ``experiment`` are kept.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise UnknownExperimentError(f"{root}: no such Ray Tune results folder")
    if not root.is_dir():
        raise AnalysisError(f"{root}: not a folder (give the Tune experiment folder, e.g. runs/tune/NAME)")
    if experiment and (root / experiment).is_dir():
        root, keep = root / experiment, None
    else:
        keep = experiment or None
    dirs = tune_files.trial_dirs(root, _RAY_MAX_DEPTH)
    if not dirs:
        raise EmptyExperimentError(f"{root}: no Ray Tune trial folders (params.json with result.json) in it or "
                                   f"{_RAY_MAX_DEPTH} levels below")
    statuses: dict[Path, dict[str, str]] = {}
    trials = []
    for d in dirs:
        if d.parent not in statuses:
            statuses[d.parent] = tune_files.statuses(d.parent)
        trials.append(_ray_trial(d, statuses[d.parent]))
    if keep is not None:
        kept = [t for t in trials if keep in (t.info.get("parent"), t.info.get("experiment"))]
        if not kept:
            raise UnknownExperimentError(
                f"experiment: no Tune experiment {keep!r} under {root} (known: "
                f"{short_list(t.info.get('parent') for t in trials)}; or give its folder as --ray-results)")
        trials = kept
    jobs = {t.info.get("job") for t in trials} - {None, ""}   # the job kind, when one
    return flat_frame(trials, {"kind": "ray", "path": str(root.resolve()), "experiment": experiment,
                               "job": jobs.pop() if len(jobs) == 1 else None})


__all__ = ["load_ray_results"]
