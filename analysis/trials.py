"""One row per trial across stages: a search joined with the retrain of the genotype it found.

:func:`analysis.load.trial_summary` gives one row per run. A joint search retrains its best genotypes
in runs of their own (phase ``retrain``), each naming its search by the tags ``source.search_run_id``,
``source.seed`` and ``source.mode`` (:func:`ess.adapters.ray.grid.trial_identity`). :func:`join_stages`
puts each such retrain on its search's row (the search's seed stays the trial's ``seed``; the retrain's
is ``retrain_seed``), so a trial is counted once and its arm is its search's. A retrain whose search is not
among the runs (``tune_jobs/retrain.py``: built-ins, files, another experiment's runs) stays a row of its
own, its ``seed`` the search's (``source.seed``) when known, else empty; a retrain that names no source at
all (a study's baseline, seeded as its replicate) keeps its own seed.

:func:`expected` says which trials should carry a metric: retrain metrics only trials that were
retrained, search metrics only trials that searched, so a search the job never meant to retrain is
not a run missing a metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.arms import is_missing
from analysis.schema import RETRAIN_PREFIX, SOURCE_PREFIX

#: the per-trial values of a retrain (:func:`analysis.load.trial_summary`), besides the ``retrain/*`` metrics
RETRAIN_VALUES = ("retrain_valid_ppl", "test_ppl", "params")
#: the per-trial values of a search
SEARCH_VALUES = ("epochs", "final_valid_ppl", "best_valid_ppl", "final_arch_entropy", "final_identity_share",
                 "search_seconds", "tokens_per_s")
#: columns :func:`join_stages` adds: the retrain's run, status and seed (and ``trial``, a unique name)
RETRAIN_COLUMNS = ("retrain_run", "retrain_run_id", "retrain_status", "retrain_seed")
_SEARCH_PHASES = ("search", "search+retrain")


def is_retrain_run(summary: pd.DataFrame) -> pd.Series:
    """Runs that only retrained (phase ``retrain``; without a phase: no search epoch but a genotype label)."""
    phase = summary["phase"] if "phase" in summary else pd.Series(None, index=summary.index, dtype=object)
    label = summary["genotype_label"] if "genotype_label" in summary else pd.Series(None, index=summary.index)
    epochs = pd.to_numeric(summary["epochs"], errors="coerce").fillna(0) if "epochs" in summary else 0
    unknown = phase.isna() & label.notna() & (epochs == 0)
    return (phase == "retrain") | unknown


def _source_run_id(row: pd.Series) -> str | None:
    """The MLflow run id of the search a retrain's genotype came from (``source.search_run_id``, or a retrain
    job's ``source.source = mlflow:<id>``)."""
    value = row.get(f"{SOURCE_PREFIX}search_run_id")
    if not is_missing(value) and str(value):
        return str(value)
    source = row.get(f"{SOURCE_PREFIX}source")
    if isinstance(source, str) and source.startswith("mlflow:"):
        return source.removeprefix("mlflow:")
    return None


def _retrain_columns(summary: pd.DataFrame) -> list[str]:
    return [c for c in summary.columns if c in RETRAIN_VALUES or str(c).startswith(RETRAIN_PREFIX)]


def join_stages(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with each retrain run joined onto its search's row (see the module docstring).

    A retrain finds its search by ``source.search_run_id`` (or ``source.source``), else by its genotype
    label being the search run's name in the same Tune experiment. Adds ``retrain_run``,
    ``retrain_run_id``, ``retrain_status``, ``retrain_seed`` and ``retrained`` (the trial was retrained).
    """
    out = summary.copy()
    for col in RETRAIN_COLUMNS:
        out[col] = pd.Series([None] * len(out), index=out.index, dtype=object)
    retrains = is_retrain_run(out)
    phase = out["phase"] if "phase" in out else pd.Series(None, index=out.index, dtype=object)
    out["retrained"] = (phase == "search+retrain") | retrains
    searches = out[~retrains]
    by_id = {str(r): i for i, r in searches["run_id"].items() if not is_missing(r)}
    by_name = {(str(p), str(n)): i for i, (p, n) in searches[["parent", "run_name"]].iterrows()
               if not is_missing(n)} if "parent" in searches else {}
    if "mode" not in out:
        out["mode"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    values, joined, drop = _retrain_columns(out), set(), []
    for index, row in out[retrains].iterrows():
        target = by_id.get(_source_run_id(row) or "")
        if target is None and not is_missing(row.get("genotype_label")):
            target = by_name.get((str(row.get("parent")), str(row.get("genotype_label"))))
        own = {"retrain_run": row.get("run_name"), "retrain_run_id": row.get("run_id"),
               "retrain_status": row.get("status"), "retrain_seed": row.get("seed")}
        if target is None or target in joined:   # a retrain of its own (or a second retrain of one search)
            for key, value in own.items():
                out.at[index, key] = value
            if any(str(k).startswith(SOURCE_PREFIX) and not is_missing(v) for k, v in row.items()):
                out.at[index, "seed"] = _source(row, "seed")   # a found genotype: its search's seed, if any
                if is_missing(row.get("mode")):
                    out.at[index, "mode"] = _source(row, "mode")
            continue
        joined.add(target)
        drop.append(index)
        for col in values:
            out.at[target, col] = row.get(col)
        for key, value in own.items():
            out.at[target, key] = value
        out.at[target, "retrained"] = True
    out = out.drop(index=drop).reset_index(drop=True)
    own = out["retrain_run_id"].notna() & (out["retrain_run_id"] == out["run_id"])
    out.loc[own, [c for c in SEARCH_VALUES if c in out]] = np.nan   # a retrain of its own searched nothing
    out["trial"] = trial_labels(out)
    if "seed" in out:
        out["seed"] = _integers(out["seed"])
    out["retrain_seed"] = _integers(out["retrain_seed"])
    out.attrs = dict(summary.attrs)
    return out


def trial_labels(table: pd.DataFrame) -> list[str]:
    """A name per row, unique: the run name, with the Tune trial id where two runs share it (a hyperparameter
    search names its trials by their fixed values)."""
    names = table["run_name"].astype(str).tolist() if "run_name" in table else [str(i) for i in table.index]
    ids = table["trial_id"].tolist() if "trial_id" in table else list(table.index)
    counts = pd.Series(names).value_counts()
    return [f"{n} ({i})" if counts[n] > 1 else n for n, i in zip(names, ids)]


def _source(row: pd.Series, key: str) -> Any:
    value = row.get(f"{SOURCE_PREFIX}{key}")
    return None if is_missing(value) else value


def _integers(column: pd.Series) -> pd.Series:
    """Seeds as nullable integers when every present one is a whole number, else as they are."""
    values = pd.to_numeric(column, errors="coerce")
    present = values.dropna()
    if len(present) == column.notna().sum() and (present == np.floor(present)).all():
        return values.astype("Int64")
    return column


def expected(summary: pd.DataFrame, metric: str) -> pd.Series:
    """The trials that should have ``metric``: a retrain value those retrained, a search value those that
    searched, a transfer metric transfer runs, anything else every trial."""
    index = summary.index
    phase = summary["phase"] if "phase" in summary else pd.Series(None, index=index, dtype=object)
    searched = ~is_retrain_run(summary) & (phase != "transfer")
    if metric in RETRAIN_VALUES or metric.startswith(RETRAIN_PREFIX):
        retrained = summary["retrained"].fillna(False).astype(bool) if "retrained" in summary else \
            phase.isin(("search+retrain", "retrain")) | phase.isna()
        return retrained | (phase == "transfer") if metric == "params" else retrained   # a tagger has parameters
    if metric in SEARCH_VALUES or metric.startswith(("valid/", "arch/", "genotype/", "train/")):
        return searched
    if metric.startswith(("dev/", "test/")):
        return (phase == "transfer") | (phase.isna() & searched)
    return pd.Series(True, index=index)


__all__ = ["RETRAIN_COLUMNS", "RETRAIN_VALUES", "SEARCH_VALUES", "expected", "is_retrain_run", "join_stages",
           "trial_labels"]
