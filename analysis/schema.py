"""The schema of the flat frame of runs (one row per trial, stage, epoch).

:mod:`analysis.mlflow_store` and :mod:`analysis.ray_results` both return this frame:

* identity: ``experiment``, ``parent`` (the Tune experiment), ``run_id``, ``run_name``, ``trial_id``,
  ``status`` (MLflow's FINISHED / FAILED / KILLED / RUNNING), ``phase``, ``job`` (the job kind that ran it);
* where a retrain's genotype came from, as ``source.<key>`` columns (``source.search_run_id``,
  ``source.seed``, ``source.mode`` of the search that found it; ``source.source`` of a retrain job);
* the arm and seed: ``mode``, ``seed``, ``dataset``, ``steps``, ``n_inter``, ``m`` (and ``genotype_label``,
  ``cell``, ``task`` for retrain and transfer jobs), numbers where they are numbers;
* ``stage`` (``search``, ``retrain`` or ``transfer``) and ``epoch`` (the stage's own epoch, from 1);
* every per-epoch metric under its own name (``valid/ppl``, ``arch/entropy``,
  ``genotype/identity_share``, ``train/tokens_per_s``, ``retrain/valid/ppl``, ``retrain/test/ppl`` ...);
* ``genotype``: the genotype derived at that search epoch (canonical JSON), for retrain rows the
  genotype retrained; ``timestamp`` (seconds since the epoch) of the row;
* per trial, repeated on its rows: ``wall_seconds``, ``final_genotype``, ``start_time``;
* the resolved config as ``config.<key>`` columns (``config.search.lr``, ``config.retrain.epochs``),
  the names :func:`ess.adapters.mlflow.flat_params` gives the MLflow params.

:class:`Trial` collects one trial's rows while a reader loads it; :func:`flat_frame` turns the trials
into the frame.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ess.space.refs import load_genotype

#: identity columns of every row
IDENTITY = ("experiment", "parent", "run_id", "run_name", "trial_id", "status", "phase", "job")
#: prefix of the columns naming a retrain's source (``source.search_run_id`` ...): tags ``source.<key>``
SOURCE_PREFIX = "source."
#: the trial's arm, seed and data: tags of the MLflow run (``genotype`` of retrain runs is ``genotype_label``)
CONFIG_COLUMNS = ("mode", "seed", "dataset", "steps", "n_inter", "m", "genotype_label", "cell", "task", "arm")
#: per trial, repeated on every row of the trial
TRIAL_COLUMNS = ("wall_seconds", "final_genotype", "start_time")
STAGES = ("search", "retrain", "transfer")
RETRAIN_PREFIX = "retrain/"
#: the columns :func:`analysis.load.trial_summary` derives (see its docstring)
SUMMARY_VALUES = ("epochs", "final_valid_ppl", "best_valid_ppl", "retrain_valid_ppl", "test_ppl",
                  "final_arch_entropy", "final_identity_share", "search_seconds", "tokens_per_s",
                  "wall_seconds", "params")
_LIST_LIMIT = 20


# --------------------------------------------------------------------------------------------------
# Small helpers


def canonical_genotype(text: Any) -> str | None:
    """Genotype JSON in one canonical compact form (so equal genotypes compare equal); None if empty.

    Text that is not a genotype reference (:func:`ess.space.refs.load_genotype`) is returned unchanged.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    if isinstance(text, Mapping):
        text = json.dumps(text)
    text = str(text).strip()
    if not text:
        return None
    try:
        return load_genotype(text).to_json(None)
    except Exception:
        return text


def as_number(value: Any) -> Any:
    """``value`` as int or float when it is a number (tags and params are strings), else unchanged."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return value


def short_list(names: Iterable[str]) -> str:
    names = sorted({str(n) for n in names if n is not None and str(n) != ""})
    if not names:
        return "(none)"
    more = f" ... ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
    return ", ".join(names[:_LIST_LIMIT]) + more


def is_metric(key: str, value: Any) -> bool:
    """A per-epoch metric of a reported row: a finite-or-not number under a ``part/name`` key."""
    if "/" not in key or isinstance(value, bool) or key.startswith("system/"):
        return False
    return isinstance(value, (int, float, np.integer, np.floating))


class Trial:
    """One trial while loading: its info (identity, config, per-trial values) and epoch rows."""

    def __init__(self, info: dict[str, Any]):
        self.info = info
        self.epochs: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, stage: str, epoch: Any, values: Mapping[str, Any]) -> None:
        """Merge ``values`` into the row of (stage, epoch): a restarted trial re-reporting an epoch wins."""
        try:
            epoch = int(epoch)
        except (TypeError, ValueError):
            epoch = 0
        row = self.epochs.setdefault((stage, epoch), {})
        row.update({k: v for k, v in values.items() if v is not None})

    def rows(self) -> list[dict[str, Any]]:
        if not self.epochs:
            return [{**self.info, "stage": None, "epoch": np.nan}]
        order = {s: i for i, s in enumerate(STAGES)}
        keys = sorted(self.epochs, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
        return [{**self.info, "stage": stage, "epoch": epoch, **self.epochs[(stage, epoch)]}
                for stage, epoch in keys]


def flat_frame(trials: Sequence[Trial], source: Mapping[str, Any]) -> pd.DataFrame:
    """The flat frame of ``trials`` with the columns in a stable order and numbers as numbers."""
    rows = [row for t in trials for row in t.rows()]
    frame = pd.DataFrame(rows)
    for col in (*IDENTITY, "stage", "epoch"):
        if col not in frame:
            frame[col] = None
    for col in [*CONFIG_COLUMNS, *(c for c in frame.columns if str(c).startswith(SOURCE_PREFIX))]:
        if col in frame and not str(col).endswith(("run_id", ".source")):
            frame[col] = _numeric_column(frame[col])
    metrics = [c for c in frame.columns if "/" in c and not c.startswith("config.")]
    search_metrics = sorted(c for c in metrics if not c.startswith(RETRAIN_PREFIX))
    retrain_metrics = sorted(c for c in metrics if c.startswith(RETRAIN_PREFIX))
    config = sorted(c for c in frame.columns if c.startswith("config."))
    sources = sorted(c for c in frame.columns if str(c).startswith(SOURCE_PREFIX))
    first = [*IDENTITY, *[c for c in CONFIG_COLUMNS if c in frame], *sources, "stage", "epoch"]
    middle = [*search_metrics, *retrain_metrics, *[c for c in ("genotype", "timestamp") if c in frame]]
    last = [c for c in TRIAL_COLUMNS if c in frame]
    rest = [c for c in frame.columns if c not in {*first, *middle, *last, *config}]
    frame = frame[[*first, *middle, *rest, *last, *config]]
    frame["epoch"] = pd.to_numeric(frame["epoch"], errors="coerce")
    for col in metrics:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame.attrs["source"] = dict(source)
    return frame.reset_index(drop=True)


def _numeric_column(column: pd.Series) -> pd.Series:
    """Tags arrive as strings: a column whose values all parse as numbers becomes numeric."""
    values = [as_number(v) for v in column]
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                       for v in present):
        if all(float(v).is_integer() for v in present):
            return pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                             for v in values], dtype="Int64")
        return pd.to_numeric(pd.Series(values, index=column.index), errors="coerce")
    return column.astype(object).where(column.notna(), None)


__all__ = [
    "CONFIG_COLUMNS", "IDENTITY", "RETRAIN_PREFIX", "SOURCE_PREFIX", "STAGES", "SUMMARY_VALUES", "TRIAL_COLUMNS",
    "Trial", "as_number", "canonical_genotype", "flat_frame", "is_metric", "short_list",
]
