"""Loading the runs of an experiment into pandas: the flat frame, one row per trial.

Two sources, one shape (:mod:`analysis.schema`):

* :func:`~analysis.mlflow_store.load_mlflow`: the MLflow store the Tune jobs log to (:mod:`ess.adapters.mlflow`).
* :func:`~analysis.ray_results.load_ray_results`: Ray Tune's result folders, for jobs run without MLflow.

:func:`load_runs` picks one. :func:`trial_summary` turns the flat frame into one row per trial: final and
best search valid perplexity, retrain valid and test perplexity when the trial was retrained, search time
and parameters.

MLflow is imported only inside :func:`~analysis.mlflow_store.load_mlflow`; Ray is never imported (the result
folders are read as plain JSON), so the Ray loader works with pandas alone.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import EmptyExperimentError
from analysis.mlflow_store import load_mlflow
from analysis.ray_results import load_ray_results
from analysis.schema import CONFIG_COLUMNS, IDENTITY, SOURCE_PREFIX
from ess.adapters.mlflow import DEFAULT_STORAGE


def load_runs(experiment: str | None = None, *, tracking_uri: str | None = None,
              ray_results: str | os.PathLike | None = None, parent: str | None = None, genotypes: bool = True,
              storage_path: str | os.PathLike = DEFAULT_STORAGE) -> pd.DataFrame:
    """:func:`load_ray_results` when ``ray_results`` is given, else :func:`load_mlflow`."""
    if ray_results is not None and str(ray_results) != "":
        return load_ray_results(ray_results, experiment)
    return load_mlflow(experiment or "", tracking_uri, parent=parent, genotypes=genotypes,
                       storage_path=storage_path)


# --------------------------------------------------------------------------------------------------
# Per-trial summary


def _last(values: pd.Series) -> Any:
    values = values.dropna()
    return values.iloc[-1] if len(values) else np.nan


def _col(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows else pd.Series(dtype=float)


def trial_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial of a flat frame from :func:`load_mlflow` / :func:`load_ray_results`.

    Columns: the identity, config and ``source.*`` columns, then

    * ``epochs``: search epochs reported; ``final_valid_ppl``: search valid perplexity at the last
      epoch; ``best_valid_ppl``: the lowest over the search epochs;
    * ``retrain_valid_ppl``: the retrained model's best valid perplexity (``retrain/valid/best_ppl``),
      ``test_ppl``: its test perplexity (``retrain/test/ppl``), ``params``: its parameter count
      (``retrain/params``), NaN when the trial was not retrained;
    * ``final_arch_entropy`` (``arch/entropy``, nats) and ``final_identity_share``
      (``genotype/identity_share``) at the last search epoch;
    * ``search_seconds``: training time of the search summed over epochs (``train/seconds``; excludes
      evaluation and checkpoints), ``tokens_per_s``: mean search throughput, ``wall_seconds``: the
      run's wall time (MLflow end minus start; Tune's ``time_total_s``), search and retrain together;
    * a tagger run (stage ``transfer``): ``epochs`` its own, ``params`` the tagger's, ``best_epoch`` (of dev F1);
    * ``genotype``: the final genotype (canonical JSON);
    * the last value of every metric under its own name (``valid/ppl``, ``retrain/test/ppl``, ``dev/f1`` ...).
    """
    if frame is None or not len(frame):
        raise EmptyExperimentError("no runs to summarise (the frame is empty)")
    config = [c for c in CONFIG_COLUMNS if c in frame] + [c for c in frame.columns if c.startswith(SOURCE_PREFIX)]
    metrics = [c for c in frame.columns if "/" in c and not c.startswith("config.")]
    out = []
    for _, rows in frame.groupby("run_id", sort=False, dropna=False):
        first = rows.iloc[0]
        search = rows[rows["stage"] == "search"].sort_values("epoch")
        retrain = rows[rows["stage"] == "retrain"].sort_values("epoch")
        valid = _col(search, "valid/ppl")
        row: dict[str, Any] = {k: first.get(k) for k in (*IDENTITY, *config)}
        row.update({
            "epochs": int(search["epoch"].max()) if len(search) and search["epoch"].notna().any() else 0,
            "final_valid_ppl": _last(valid),
            "best_valid_ppl": valid.min() if valid.notna().any() else np.nan,
            "retrain_valid_ppl": _last(_col(retrain, "retrain/valid/best_ppl")),
            "test_ppl": _last(_col(retrain, "retrain/test/ppl")),
            "final_arch_entropy": _last(_col(search, "arch/entropy")),
            "final_identity_share": _last(_col(search, "genotype/identity_share")),
            "search_seconds": _col(search, "train/seconds").sum(min_count=1),
            "tokens_per_s": _col(search, "train/tokens_per_s").mean(),
            "wall_seconds": first.get("wall_seconds", np.nan),
            "params": _last(_col(retrain, "retrain/params")),
            "genotype": first.get("final_genotype"),
        })
        if pd.isna(row["retrain_valid_ppl"]):
            row["retrain_valid_ppl"] = _col(retrain, "retrain/valid/ppl").min()
        transfer = rows[rows["stage"] == "transfer"].sort_values("epoch")
        if len(transfer):   # a tagger run: its own epochs, parameters and best dev epoch
            row["epochs"] = int(transfer["epoch"].max()) if transfer["epoch"].notna().any() else 0
            row["params"] = _last(_col(transfer, "params"))
            row["best_epoch"] = _last(_col(transfer, "best_epoch"))
        ordered = rows.sort_values(["epoch"], kind="stable")
        for name in metrics:
            row[name] = _last(ordered[name])
        out.append(row)
    summary = pd.DataFrame(out)
    summary.attrs["source"] = dict(frame.attrs.get("source", {}))
    return summary


def describe_source(frame: pd.DataFrame) -> str:
    """One line naming where a frame was loaded from."""
    src = frame.attrs.get("source") or {}
    if src.get("kind") == "mlflow":
        what = src.get("mlflow_experiment") or src.get("experiment")
        sel = f", Tune experiment {src['experiment']!r}" if src.get("experiment") != what else ""
        return f"MLflow store {src.get('tracking_uri')}, experiment {what!r}{sel}"
    if src.get("kind") == "ray":
        return f"Ray Tune results {src.get('path')}"
    return "a data frame"


__all__ = ["describe_source", "load_runs", "trial_summary"]
