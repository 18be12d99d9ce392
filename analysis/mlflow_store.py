"""The MLflow reader: the trial runs of an experiment in an MLflow store as the flat frame.

``experiment`` is an MLflow experiment (``ess-ablation``: every trial run in it) or the name of one Tune
experiment (``ablation-smoke-20250101-120000``: the trial runs nested under its parent run); the runs are
those the Tune jobs log (:mod:`ess.adapters.mlflow`). The frame is :mod:`analysis.schema`'s.

MLflow is imported only inside :func:`load_mlflow`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from analysis.errors import (
    AnalysisError,
    AnalysisWarning,
    EmptyExperimentError,
    UnknownExperimentError,
)
from analysis.schema import (
    CONFIG_COLUMNS,
    RETRAIN_PREFIX,
    SOURCE_PREFIX,
    Trial,
    as_number,
    canonical_genotype,
    flat_frame,
    short_list,
)
from ess.adapters.mlflow import (
    CONFIG_TAGS,
    DEFAULT_STORAGE,
    NAME_TAG,
    PARENT_TAG,
    PHASE_TAG,
    ROLE_TAG,
    TRIAL_TAG,
    resolve_tracking_uri,
    sqlite_path,
)


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
        from mlflow import MlflowClient  # the mlflow extra: needed only to read an MLflow store
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
                    f"(known: {short_list(p.data.tags.get(NAME_TAG, p.info.run_name) for p in parents)})")
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
            f"MLflow experiments: {short_list(by_name)}; Tune experiments: "
            f"{short_list(p.data.tags.get(NAME_TAG) for p in known_parents)}")
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
        import mlflow.artifacts  # the mlflow extra: needed only to read an MLflow store

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


def _source_tags(client: Any, tags: Mapping[str, str]) -> dict[str, str]:
    """The run's ``source.*`` tags; a retrain job's genotype from an MLflow run (``source.source = mlflow:ID``)
    that does not name its search's seed gets it (and the mode) from that run."""
    out = {k: v for k, v in tags.items() if k.startswith(SOURCE_PREFIX)}
    ref = out.get(f"{SOURCE_PREFIX}source", "")
    if ref.startswith("mlflow:") and f"{SOURCE_PREFIX}seed" not in out:
        run_id = ref.removeprefix("mlflow:")
        out.setdefault(f"{SOURCE_PREFIX}search_run_id", run_id)
        try:
            found = client.get_run(run_id).data.tags
        except Exception:   # deleted, or in a store no longer reachable: the seed stays unknown
            return out
        out.update({f"{SOURCE_PREFIX}{k}": found[k] for k in ("seed", "mode") if found.get(k)})
    return out


def _mlflow_trial(client: Any, uri: str, experiment: str, run: Any, parent_names: Mapping[str, str],
                  genotypes: bool, tmp: Path) -> Trial:
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
    trial = Trial({
        "experiment": experiment, "parent": parent_names.get(parent_id, tags.get("ray.experiment")),
        "run_id": info.run_id, "run_name": info.run_name, "trial_id": tags.get(TRIAL_TAG),
        "status": info.status, "phase": tags.get(PHASE_TAG), "job": tags.get("job"), **config,
        **_source_tags(client, tags),
        "wall_seconds": (end - start) / 1000.0 if start and end else np.nan,
        "start_time": pd.Timestamp(start, unit="ms", tz="UTC") if start else pd.NaT,
        **{f"config.{k}": as_number(v) for k, v in run.data.params.items()},
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
                                   f"{' (parent runs: ' + short_list(parent_names.values()) + ')' if parents else ''}"
                                   "; did its job log to this store?")
    with tempfile.TemporaryDirectory(prefix="ess-analysis-") as tmp:
        loaded = [_mlflow_trial(client, uri, exp_name, r, parent_names, genotypes, Path(tmp)) for r in trials]
    jobs = {r.data.tags.get("job") for r in (*parents, *trials)} - {None, ""}   # the job kind, when one
    return flat_frame(loaded, {"kind": "mlflow", "tracking_uri": uri, "experiment": experiment,
                               "mlflow_experiment": exp_name, "parent": parent,
                               "job": jobs.pop() if len(jobs) == 1 else None})


__all__ = ["load_mlflow"]
