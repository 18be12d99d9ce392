"""Load the runs of an experiment into pandas: one flat table, and one row per trial.

Two sources, one shape:

* :func:`load_mlflow`: the MLflow store the Tune jobs log to (:mod:`ess.adapters.mlflow`). ``experiment``
  is an MLflow experiment (``ess-ablation``: every trial run in it) or the name of one Tune
  experiment (``ablation-smoke-20250101-120000``: the trial runs nested under its parent run).
* :func:`load_ray_results`: Ray Tune's result folders, for jobs run without MLflow. Each trial
  folder holds ``params.json`` (the trial's config) and ``result.json`` (one JSON line per reported
  row; Tune's ``progress.csv`` is only a fallback because it keeps the columns of the first row).

Both return the *flat* frame: one row per trial, stage and epoch with

* identity: ``experiment``, ``parent`` (the Tune experiment), ``run_id``, ``run_name``, ``trial_id``,
  ``status`` (MLflow's FINISHED / FAILED / KILLED / RUNNING), ``phase``;
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

:func:`trial_summary` turns it into one row per trial: final and best search valid perplexity,
retrain valid and test perplexity when the trial was retrained, search time and parameters.

MLflow is imported only inside :func:`load_mlflow`; Ray is never imported (the result folders are
read as plain JSON), so the Ray loader works with pandas alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import (
    AnalysisError,
    AnalysisWarning,
    EmptyExperimentError,
    UnknownExperimentError,
)
from ess.adapters.mlflow import (
    CONFIG_TAGS,
    DEFAULT_STORAGE,
    NAME_TAG,
    PARENT_TAG,
    PHASE_TAG,
    ROLE_TAG,
    TRIAL_TAG,
    flat_params,
    resolve_tracking_uri,
    sqlite_path,
)

#: identity columns of every row
IDENTITY = ("experiment", "parent", "run_id", "run_name", "trial_id", "status", "phase")
#: the trial's arm, seed and data: tags of the MLflow run (``genotype`` of retrain runs is ``genotype_label``)
CONFIG_COLUMNS = ("mode", "seed", "dataset", "steps", "n_inter", "m", "genotype_label", "cell", "task", "arm")
#: per trial, repeated on every row of the trial
TRIAL_COLUMNS = ("wall_seconds", "final_genotype", "start_time")
STAGES = ("search", "retrain", "transfer")
RETRAIN_PREFIX = "retrain/"
#: the columns :func:`trial_summary` derives (see its docstring)
SUMMARY_VALUES = ("epochs", "final_valid_ppl", "best_valid_ppl", "retrain_valid_ppl", "test_ppl",
                  "final_arch_entropy", "final_identity_share", "search_seconds", "tokens_per_s",
                  "wall_seconds", "params")
_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED", "RUNNING": "RUNNING", "PENDING": "RUNNING",
           "PAUSED": "RUNNING"}
_LIST_LIMIT = 20


# --------------------------------------------------------------------------------------------------
# Small helpers


def canonical_genotype(text: Any) -> str | None:
    """Genotype JSON in one canonical compact form (so equal genotypes compare equal); None if empty.

    Text that is not a genotype reference (:func:`ess.space.genotype.load_genotype`) is returned unchanged.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    if isinstance(text, Mapping):
        text = json.dumps(text)
    text = str(text).strip()
    if not text:
        return None
    try:
        from ess.space.genotype import load_genotype

        return load_genotype(text).to_json(None)
    except Exception:
        return text


def _number(value: Any) -> Any:
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


def _short_list(names: Iterable[str]) -> str:
    names = sorted({str(n) for n in names if n is not None and str(n) != ""})
    if not names:
        return "(none)"
    more = f" ... ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
    return ", ".join(names[:_LIST_LIMIT]) + more


def _is_metric(key: str, value: Any) -> bool:
    """A per-epoch metric of a reported row: a finite-or-not number under a ``part/name`` key."""
    if "/" not in key or isinstance(value, bool) or key.startswith("system/"):
        return False
    return isinstance(value, (int, float, np.integer, np.floating))


class _Trial:
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


def _frame(trials: Sequence[_Trial], source: Mapping[str, Any]) -> pd.DataFrame:
    """The flat frame of ``trials`` with the columns in a stable order and numbers as numbers."""
    rows = [row for t in trials for row in t.rows()]
    frame = pd.DataFrame(rows)
    for col in (*IDENTITY, "stage", "epoch"):
        if col not in frame:
            frame[col] = None
    for col in CONFIG_COLUMNS:
        if col in frame:
            frame[col] = _numeric_column(frame[col])
    metrics = [c for c in frame.columns if "/" in c and not c.startswith("config.")]
    search_metrics = sorted(c for c in metrics if not c.startswith(RETRAIN_PREFIX))
    retrain_metrics = sorted(c for c in metrics if c.startswith(RETRAIN_PREFIX))
    config = sorted(c for c in frame.columns if c.startswith("config."))
    first = [*IDENTITY, *[c for c in CONFIG_COLUMNS if c in frame], "stage", "epoch"]
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
    values = [_number(v) for v in column]
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                       for v in present):
        if all(float(v).is_integer() for v in present):
            return pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                             for v in values], dtype="Int64")
        return pd.to_numeric(pd.Series(values, index=column.index), errors="coerce")
    return column.astype(object).where(column.notna(), None)


# --------------------------------------------------------------------------------------------------
# MLflow


def _mlflow_client(tracking_uri: str | None, storage_path: str | os.PathLike) -> tuple[Any, str]:
    uri = resolve_tracking_uri(tracking_uri, storage_path)
    if uri is None:
        raise AnalysisError("tracking_uri: tracking is off (MLFLOW_TRACKING_URI=none); pass --tracking-uri "
                            "or load Ray Tune results with --ray-results DIR")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():   # MlflowClient would create an empty database
        raise UnknownExperimentError(f"{db}: no MLflow database there (run a job first, or pass --tracking-uri "
                                     "URI or --ray-results DIR)")
    if "://" not in uri and not Path(uri).is_dir():
        raise UnknownExperimentError(f"{uri}: no MLflow file store there (pass --tracking-uri URI)")
    try:
        from mlflow import MlflowClient
    except ImportError as err:
        raise AnalysisError(f"mlflow is not installed ({err}); pip install mlflow, or load Ray Tune "
                            "results with --ray-results DIR") from None
    return MlflowClient(uri), uri


def _all_pages(fetch) -> list[Any]:
    """Every item of a paged MLflow search (``fetch(page_token)`` returns a PagedList)."""
    out: list[Any] = []
    token = None
    while True:
        page = fetch(token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _search_runs(client: Any, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    if not experiment_ids:
        return []
    return _all_pages(lambda token: client.search_runs(experiment_ids, filter_string=filter_string,
                                                       max_results=1000, page_token=token,
                                                       order_by=["attributes.start_time ASC"]))


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def _resolve_mlflow(client: Any, uri: str, name: str, parent: str | None) -> tuple[str, list[Any], list[Any]]:
    """The MLflow experiment name, its runs, and its parent runs (selected by ``name`` / ``parent``)."""
    experiments = _all_pages(lambda token: client.search_experiments(max_results=1000, page_token=token))
    by_name = {e.name: e for e in experiments}
    exp = by_name.get(name)
    if exp is not None:
        runs = _search_runs(client, [exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "parent"]
        if parent is not None:
            chosen = [p for p in parents if p.data.tags.get(NAME_TAG, p.info.run_name) == parent]
            if not chosen:
                raise UnknownExperimentError(
                    f"parent: no Tune experiment {parent!r} in MLflow experiment {name!r} "
                    f"(known: {_short_list(p.data.tags.get(NAME_TAG, p.info.run_name) for p in parents)})")
            ids = {p.info.run_id for p in chosen}
            runs = [r for r in runs if r.data.tags.get(PARENT_TAG) in ids]
            parents = chosen
        return name, runs, parents
    # not an MLflow experiment: the name of a Tune experiment (its parent run)?
    ids = [e.experiment_id for e in experiments]
    parents = _search_runs(client, ids, f"tags.`{NAME_TAG}` = {_quote(name)}")
    parents = [p for p in parents if p.data.tags.get(ROLE_TAG) == "parent"]
    if not parents:
        known_parents = _search_runs(client, ids, f"tags.`{ROLE_TAG}` = 'parent'")
        raise UnknownExperimentError(
            f"experiment: no MLflow experiment or Tune experiment named {name!r} in {uri}; "
            f"MLflow experiments: {_short_list(by_name)}; Tune experiments: "
            f"{_short_list(p.data.tags.get(NAME_TAG) for p in known_parents)}")
    exp_ids = sorted({p.info.experiment_id for p in parents})
    names = {e.experiment_id: e.name for e in experiments}
    parent_ids = {p.info.run_id for p in parents}
    runs = [r for r in _search_runs(client, exp_ids) if r.data.tags.get(PARENT_TAG) in parent_ids]
    return ", ".join(names[i] for i in exp_ids), runs, parents


def _history(client: Any, run_id: str, key: str) -> list[Any]:
    """The metric's history, one value per step: a restarted trial re-logging a step keeps the latest."""
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return list({m.step: m for m in points}.values())


def _local_artifact_dir(run: Any) -> Path | None:
    """The run's artifact folder when the store keeps artifacts on this machine's disk, else None."""
    uri = str(run.info.artifact_uri or "")
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        uri = unquote(urlparse(uri).path)
    elif "://" in uri or not uri:
        return None
    path = Path(uri)
    return path if path.is_dir() else None


@contextlib.contextmanager
def _quiet_downloads():
    """MLflow's artifact progress bars off while downloading (one bar per small JSON file otherwise)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _read_artifact(uri: str, run: Any, path: str, tmp: Path) -> str | None:
    """The text of one artifact file: read in place from a local store, else downloaded."""
    local = _local_artifact_dir(run)
    try:
        if local is not None:
            return (local / path).read_text(encoding="utf-8")
        import mlflow.artifacts

        with _quiet_downloads():
            got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path,
                                                      dst_path=str(tmp / run.info.run_id), tracking_uri=uri)
        return Path(got).read_text(encoding="utf-8")
    except Exception as err:
        warnings.warn(f"run {run.info.run_name} ({run.info.run_id}): could not read artifact {path}: "
                      f"{str(err).splitlines()[0][:200]}", AnalysisWarning, stacklevel=4)
        return None


def _list_artifacts(client: Any, run: Any, path: str) -> list[tuple[str, bool]]:
    """``(path, is_dir)`` of the artifacts under ``path`` (empty when there are none)."""
    local = _local_artifact_dir(run)
    try:
        if local is not None:
            base = local / path
            return [(f"{path}/{p.name}", p.is_dir()) for p in sorted(base.iterdir())] if base.is_dir() else []
        return [(f.path, f.is_dir) for f in client.list_artifacts(run.info.run_id, path)]
    except Exception:
        return []


def _epoch_genotypes(client: Any, uri: str, run: Any, tmp: Path) -> dict[int, str]:
    """``{epoch: genotype JSON}`` from the run's ``genotypes/epoch_NNN.json`` artifacts."""
    out = {}
    for path, is_dir in _list_artifacts(client, run, "genotypes"):
        match = re.fullmatch(r"(?:.*/)?epoch_(\d+)\.json", path)
        if match and not is_dir:
            text = _read_artifact(uri, run, path, tmp)
            if text is not None:
                out[int(match.group(1))] = canonical_genotype(text)
    return out


def _mlflow_trial(client: Any, uri: str, experiment: str, run: Any, parent_names: Mapping[str, str],
                  genotypes: bool, tmp: Path) -> _Trial:
    tags, info = run.data.tags, run.info
    config = {k: tags[k] for k in CONFIG_COLUMNS if k in tags and k in CONFIG_TAGS and k != "genotype"}
    if "genotype" in tags:
        config["genotype_label"] = tags["genotype"]
    for key in ("task", "cell"):
        if key in tags:
            config[key] = tags[key]
    parent_id = tags.get(PARENT_TAG)
    start, end = info.start_time, info.end_time
    final = canonical_genotype(tags.get("ess.genotype"))
    trial = _Trial({
        "experiment": experiment, "parent": parent_names.get(parent_id, tags.get("ray.experiment")),
        "run_id": info.run_id, "run_name": info.run_name, "trial_id": tags.get(TRIAL_TAG),
        "status": info.status, "phase": tags.get(PHASE_TAG), **config,
        "wall_seconds": (end - start) / 1000.0 if start and end else np.nan,
        "start_time": pd.Timestamp(start, unit="ms", tz="UTC") if start else pd.NaT,
        **{f"config.{k}": _number(v) for k, v in run.data.params.items()},
    })
    stage_of_key = "transfer" if tags.get(PHASE_TAG) == "transfer" else "search"
    stamps: dict[tuple[str, int], float] = {}
    for key in sorted(run.data.metrics):
        if key.startswith("system/") or key in ("epoch", "final", "retrain/epoch"):
            continue
        stage = "retrain" if key.startswith(RETRAIN_PREFIX) else stage_of_key
        for point in _history(client, info.run_id, key):
            trial.add(stage, point.step, {key: point.value})
            slot = (stage, int(point.step))
            stamps[slot] = max(stamps.get(slot, 0.0), point.timestamp / 1000.0)
    for (stage, epoch), stamp in stamps.items():
        trial.add(stage, epoch, {"timestamp": stamp})
    per_epoch = _epoch_genotypes(client, uri, run, tmp) if genotypes else {}
    if final is None and per_epoch:
        final = per_epoch[max(per_epoch)]
    if final is None and genotypes and tags.get("genotype"):
        final = _retrained_genotype(client, uri, run, tmp) or canonical_genotype(tags["genotype"])
    for (stage, epoch), row in trial.epochs.items():
        if stage == "search" and epoch in per_epoch:
            row["genotype"] = per_epoch[epoch]
        elif stage == "retrain" and final is not None:
            row["genotype"] = final
    trial.info["final_genotype"] = final
    return trial


def _retrained_genotype(client: Any, uri: str, run: Any, tmp: Path) -> str | None:
    """The genotype a retrain-only run trained (``retrain/genotype.json``), when it logged one."""
    if ("retrain/genotype.json", False) not in _list_artifacts(client, run, "retrain"):
        return None
    text = _read_artifact(uri, run, "retrain/genotype.json", tmp)
    return canonical_genotype(text) if text else None


def load_mlflow(experiment: str, tracking_uri: str | None = None, *, parent: str | None = None,
                genotypes: bool = True, storage_path: str | os.PathLike = DEFAULT_STORAGE) -> pd.DataFrame:
    """The trial runs of ``experiment`` in an MLflow store as the flat frame (see the module docstring).

    ``experiment`` is an MLflow experiment name (every trial run in it; ``parent`` keeps those of one
    Tune experiment) or a Tune experiment name (the runs nested under its parent run).
    ``tracking_uri`` is resolved like the jobs do (the flag, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///<storage_path>/mlflow.db``). ``genotypes=False`` skips reading the per-epoch genotype
    artifacts (the final genotype still comes from the run's ``ess.genotype`` tag).

    Raises :class:`UnknownExperimentError` (listing the known experiments) and
    :class:`EmptyExperimentError` (no trial runs) with one-line messages.
    """
    if not experiment:
        raise AnalysisError("experiment: give an MLflow experiment (ess-ablation) or a Tune experiment name")
    client, uri = _mlflow_client(tracking_uri, storage_path)
    exp_name, runs, parents = _resolve_mlflow(client, uri, experiment, parent)
    parent_names = {p.info.run_id: p.data.tags.get(NAME_TAG, p.info.run_name) for p in parents}
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) != "parent"]
    if not trials:
        what = f"Tune experiment {experiment!r}" if exp_name != experiment else f"MLflow experiment {experiment!r}"
        raise EmptyExperimentError(f"{what} in {uri} has no trial runs"
                                   f"{' (parent runs: ' + _short_list(parent_names.values()) + ')' if parents else ''}"
                                   "; did its job log to this store?")
    with tempfile.TemporaryDirectory(prefix="ess-analysis-") as tmp:
        loaded = [_mlflow_trial(client, uri, exp_name, r, parent_names, genotypes, Path(tmp)) for r in trials]
    return _frame(loaded, {"kind": "mlflow", "tracking_uri": uri, "experiment": experiment,
                           "mlflow_experiment": exp_name, "parent": parent})


# --------------------------------------------------------------------------------------------------
# Ray Tune result folders


_RAY_MAX_DEPTH = 4


def _trial_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included, at most 4 levels down) that hold a Tune trial."""
    found = []
    for path, dirs, files in os.walk(root):
        depth = len(Path(path).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "checkpoint_")) and depth < _RAY_MAX_DEPTH)
        if "params.json" in files and ("result.json" in files or "progress.csv" in files):
            found.append(Path(path))
            dirs[:] = []
    return found


def _ray_statuses(tune_dir: Path) -> dict[str, str]:
    """``{trial folder name: status}`` from the newest ``experiment_state-*.json`` of a Tune experiment."""
    files = sorted(tune_dir.glob("experiment_state*.json"), key=lambda f: f.name)
    if not files:
        return {}
    try:
        state = json.loads(files[-1].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for item in state.get("trial_data", []):
        text = item[0] if isinstance(item, (list, tuple)) else item
        try:
            data = json.loads(text) if isinstance(text, str) else dict(text)
        except (json.JSONDecodeError, TypeError, ValueError):
            continue
        status = _STATUS.get(str(data.get("status")), str(data.get("status")))
        for key in ("relative_logdir", "custom_dirname", "trial_id"):
            if data.get(key):
                out[str(data[key])] = status
    return out


def _result_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """The reported rows of a trial: ``result.json`` lines (a half-written last line is skipped)."""
    path = trial_dir / "result.json"
    rows: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if rows:
            return rows
    csv = trial_dir / "progress.csv"
    if csv.is_file() and csv.stat().st_size:
        try:
            return pd.read_csv(csv).to_dict(orient="records")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            return []
    return rows


def _job_experiment(trial_dir: Path, job: str | None) -> str:
    """The MLflow experiment the job would have logged to: ``job.yaml``'s ``experiment`` or ``ess-<job>``."""
    for parent in list(trial_dir.parents)[:3]:
        saved = parent / "job.yaml"
        if saved.is_file():
            try:
                import yaml

                data = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
            except Exception:
                data = {}
            if data.get("experiment"):
                return str(data["experiment"])
            if data.get("job"):
                return f"ess-{data['job']}"
    return f"ess-{job}" if job else trial_dir.parent.name


def _ray_trial(trial_dir: Path, statuses: Mapping[str, str]) -> _Trial:
    try:
        config = json.loads((trial_dir / "params.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
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
    if variant.get("cell_label") is not None:
        info_config["cell"] = variant["cell_label"]
    trial_id = str(last.get("trial_id") or trial_dir.name.rsplit("_", 1)[-1])
    status = statuses.get(trial_dir.name) or statuses.get(trial_id)
    if status is None:
        status = "FAILED" if (trial_dir / "error.txt").exists() else ("FINISHED" if rows else "RUNNING")
    run_id = next((r.get("mlflow_run_id") for r in reversed(rows) if r.get("mlflow_run_id")), None)
    trial = _Trial({
        "experiment": _job_experiment(trial_dir, spec.get("job")),
        "parent": spec.get("experiment_name") or trial_dir.parent.parent.name,
        "run_id": run_id or f"{trial_dir.parent.name}/{trial_dir.name}",
        "run_name": trial_dir.name.removesuffix(f"_{trial_id}"),   # the variant label, as the MLflow run name
        "trial_id": trial_id, "status": status, "phase": phase, **info_config,
        "wall_seconds": float(last["time_total_s"]) if last.get("time_total_s") is not None else np.nan,
        "start_time": (pd.Timestamp(rows[0]["timestamp"] - rows[0].get("time_total_s", 0), unit="s", tz="UTC")
                       if rows and rows[0].get("timestamp") is not None else pd.NaT),
        **{f"config.{k}": _number(v) for k, v in params.items()},
    })
    final = None
    for row in rows:
        metrics = {k: v for k, v in row.items() if _is_metric(k, v)}
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
    dirs = _trial_dirs(root)
    if not dirs:
        raise EmptyExperimentError(f"{root}: no Ray Tune trial folders (params.json with result.json) in it or "
                                   f"{_RAY_MAX_DEPTH} levels below")
    statuses: dict[Path, dict[str, str]] = {}
    trials = []
    for d in dirs:
        if d.parent not in statuses:
            statuses[d.parent] = _ray_statuses(d.parent)
        trials.append(_ray_trial(d, statuses[d.parent]))
    if keep is not None:
        kept = [t for t in trials if keep in (t.info.get("parent"), t.info.get("experiment"))]
        if not kept:
            raise UnknownExperimentError(
                f"experiment: no Tune experiment {keep!r} under {root} (known: "
                f"{_short_list(t.info.get('parent') for t in trials)}; or give its folder as --ray-results)")
        trials = kept
    return _frame(trials, {"kind": "ray", "path": str(root.resolve()), "experiment": experiment})


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

    Columns: the identity and config columns, then

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
    * ``genotype``: the final genotype (canonical JSON);
    * the last value of every metric under its own name (``valid/ppl``, ``retrain/test/ppl``, ``dev/f1`` ...).
    """
    if frame is None or not len(frame):
        raise EmptyExperimentError("no runs to summarise (the frame is empty)")
    config = [c for c in CONFIG_COLUMNS if c in frame]
    metrics = [c for c in frame.columns if "/" in c and not c.startswith("config.")]
    out = []
    for _, rows in frame.groupby("run_id", sort=False, dropna=False):
        first = rows.iloc[0]
        search = rows[rows["stage"] == "search"].sort_values("epoch")
        retrain = rows[rows["stage"] == "retrain"].sort_values("epoch")
        valid = _col(search, "valid/ppl")
        row: dict[str, Any] = {k: first[k] for k in (*IDENTITY, *config)}
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


__all__ = [
    "CONFIG_COLUMNS", "IDENTITY", "STAGES", "SUMMARY_VALUES", "TRIAL_COLUMNS", "canonical_genotype",
    "describe_source", "load_mlflow", "load_ray_results", "load_runs", "trial_summary",
]
