"""A study's raw data: the per-seed rows ``docs/results.md`` is written from, in a folder committed beside it.

``python -m analysis.results --study EXPERIMENT_DIR`` reads the study's experiment folder once (``summary.json``,
its MLflow store, its Tune result files, its retrained genotypes) into :class:`StudyData`, writes the folder
(:func:`write_data`), reads it back (:func:`read_data`) and renders results.md from what it read, so that
``python -m analysis.results --data FOLDER`` rewrites the same file byte for byte on any machine. Paths of the
machine the study ran on are not written: a trial's checkpoint folder and the data and storage folders of its
config are dropped, the experiment folder and the tracking URI are kept as names only.

Files: ``summary.json`` (the job's summary), ``trials.csv`` (one row per trial and stage,
:func:`analysis.load.trial_summary`), ``epochs.csv`` (one row per trial, stage and epoch), ``cost.json``
(trials, trial-minutes per stage, busy hours), ``genotypes.json`` (the retrained genotype per search arm and
seed), and ``discussion.md`` where the study has a hand-written discussion (``--notes``). The summary's search
trials gain their ranking's seconds and candidates where they ranked (:func:`with_ranking`), and the summary the
planned seeds and budget of every stage from the study's ``job.yaml`` (:func:`with_budget`).
"""

from __future__ import annotations

import io
import json
import math
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.load import load_runs, trial_summary
from ess.adapters import tune_files
from ess.checkpoint import atomic_write_text
from ess.config import load_yaml
from ess.errors import ConfigError
from ess.space.genotype import ESSGenotype
from ess.space.refs import load_genotype

FILES = ("summary.json", "trials.csv", "epochs.csv", "cost.json", "genotypes.json")
DISCUSSION = "discussion.md"   # optional: the hand-written discussion, so that the folder alone rewrites the page


@dataclass(frozen=True)
class Cost:
    """What a study cost, from its Tune result files: trials, trial-minutes per stage, hours of wall time in which
    at least one trial ran (the union of the reported iterations: stops between sessions not counted)."""

    trials: int = 0
    minutes: dict[str, float] = field(default_factory=dict)
    busy_hours: float = 0.0


@dataclass(frozen=True)
class StudyData:
    """Everything results.md is rendered from."""

    summary: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    cost: Cost
    genotypes: dict[tuple[str, int], ESSGenotype]
    discussion: str = ""


def tune_cost(experiment_dir: str | Path) -> Cost:
    """:class:`Cost` from the Tune result files under ``experiment_dir`` (``<stage>/<trial>/``)."""
    minutes: dict[str, float] = {}
    spans, trials = [], 0
    for path in sorted(Path(experiment_dir).glob(f"*/*/{tune_files.RESULT_FILE}")):
        rows = tune_files.result_rows(path.parent)
        if not rows:
            continue
        trials += 1
        stage = path.parent.parent.name
        minutes[stage] = minutes.get(stage, 0.0) + rows[-1].get("time_total_s", 0.0) / 60
        spans += [(r["timestamp"] - r.get("time_this_iter_s", 0.0), r["timestamp"]) for r in rows]
    busy, end = 0.0, -math.inf
    for start, stop in sorted(spans):
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return Cost(trials, minutes, busy / 3600)


def retrained_genotypes(summary: Mapping[str, Any]) -> dict[tuple[str, int], ESSGenotype]:
    """Per (search arm, seed): the genotype its retrain trained (``retrain/genotype.json`` of the trial's
    checkpoint, else the summary's ``genotype``), which a derivation other than the last epoch's argmax
    (``joint-pt``, ``joint-rank``) makes different from the epoch rows' ``genotype/*``."""
    out = {}
    for t in summary["trials"]:
        if t.get("kind") != "search":
            continue
        path = Path(t.get("checkpoint") or "", "retrain", "genotype.json")
        ref = str(path) if t.get("checkpoint") and path.is_file() else t.get("genotype")
        if ref:
            out[(t["arm"], int(t["seed"]))] = load_genotype(ref)
    return out


def with_ranking(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` whose search trials carry their final ranking's cost where one ranked (``selection.json`` of the
    trial's checkpoint): ``rank_seconds`` and ``rank_candidates`` (the genotypes ranked)."""
    trials = []
    for t in summary.get("trials", []):
        path = Path(t.get("checkpoint") or "", "search", "selection.json")
        if t.get("kind") == "search" and t.get("checkpoint") and path.is_file() and "rank_seconds" not in t:
            selection = json.loads(path.read_text())
            if "rank_seconds" in selection:
                t = {**t, "rank_seconds": selection["rank_seconds"], "rank_candidates": selection.get("candidates")}
        trials.append(t)
    return {**summary, "trials": trials}


def study_budget(job: Mapping[str, Any]) -> dict[str, Any]:
    """The planned seeds and the budget of every stage, from a study's resolved ``job.yaml`` (no machine paths)."""
    search, train, transfer = (job.get(k) or {} for k in ("search", "train", "transfer"))
    return {
        "seeds": list(job.get("seeds") or []), "exploratory_seeds": job.get("exploratory_seeds"),
        "transfer_seeds": list(job.get("transfer_seeds") or []), "stages": list(job.get("stages") or []),
        "cpus_per_trial": job.get("cpus_per_trial"), "gpus_per_trial": job.get("gpus_per_trial"),
        "search": {k: search.get(k) for k in ("dataset", "epochs", "emsize", "nhid", "batch_size", "bptt", "lr",
                                               "arch_lr", "max_train_tokens", "steps", "n_inter", "m",
                                               "rank_samples")},
        "train": {k: train.get(k) for k in ("epochs", "emsize", "nhid", "match_params", "batch_size",
                                             "max_train_tokens", "valid_part")},
        "random": {"k": job.get("random_k"), "epochs": job.get("random_epochs")},
        "transfer": {"tasks": list(job.get("tasks") or []), "epochs": transfer.get("epochs")},
    }


def with_budget(summary: Mapping[str, Any], experiment_dir: str | Path) -> dict[str, Any]:
    """``summary`` with ``budget`` (:func:`study_budget`) from the experiment folder's ``job.yaml``, where it has
    one and the summary does not already hold it."""
    path = Path(experiment_dir) / "job.yaml"
    if "budget" in summary or not path.is_file():
        return dict(summary)
    return {**summary, "budget": study_budget(load_yaml(path))}


def _store(summary: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's runs from its MLflow store: per trial and stage, per epoch (empty when it cannot be read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = load_runs(summary["name"], tracking_uri=summary["tracking_uri"])
            return trial_summary(frame), frame
    except Exception as err:  # noqa: BLE001 - the figures are extra; the tables come from summary.json
        print(f"analysis.results: no per-part diagnostics from the store ({str(err).splitlines()[0]})",
              file=sys.stderr)
        return pd.DataFrame(), pd.DataFrame()


def from_experiment(experiment_dir: str | Path) -> StudyData:
    """A finished study's data from its experiment folder (one-line ConfigError when it has no study summary)."""
    path = Path(experiment_dir) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no summary.json (has the study finished?)")
    summary = json.loads(path.read_text())
    if summary.get("job") != "study":
        raise ConfigError(f"{path}: job: expected a study, got {summary.get('job')!r}")
    summary = with_budget(with_ranking(summary), experiment_dir)
    trials, epochs = _store(summary)
    return StudyData(summary, trials, epochs, tune_cost(experiment_dir), retrained_genotypes(summary))


MACHINE_KEYS = ("checkpoint", "data_dir", "storage_path")   # paths of the machine a study ran on


def _portable(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` without the paths of the machine it ran on."""
    out = dict(summary)
    out["experiment_dir"] = Path(str(summary.get("experiment_dir", ""))).name
    out["tracking_uri"] = "" if "://" in str(summary.get("tracking_uri", "")) else summary.get("tracking_uri", "")
    for key, rows in summary.items():
        if isinstance(rows, list) and any(isinstance(r, dict) for r in rows):
            out[key] = [{k: v for k, v in r.items() if k not in MACHINE_KEYS} if isinstance(r, dict) else r
                        for r in rows]
    return out


def _csv(frame: pd.DataFrame) -> str:
    keep = [c for c in frame.columns if frame[c].map(lambda v: not isinstance(v, (dict, list))).all()
            and str(c).rsplit(".", 1)[-1] not in MACHINE_KEYS]
    return frame[keep].to_csv(index=False) if len(frame.columns) else ""


def write_data(data: StudyData, folder: str | Path) -> Path:
    """The folder of :data:`FILES` (each written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "summary.json", json.dumps(_portable(data.summary), indent=1, default=str) + "\n")
    atomic_write_text(folder / "trials.csv", _csv(data.trials))
    atomic_write_text(folder / "epochs.csv", _csv(data.epochs))
    atomic_write_text(folder / "cost.json", json.dumps(
        {"trials": data.cost.trials, "minutes": data.cost.minutes, "busy_hours": data.cost.busy_hours}, indent=1)
        + "\n")
    atomic_write_text(folder / "genotypes.json", json.dumps(
        [{"arm": a, "seed": s, "genotype": g.to_dict()} for (a, s), g in sorted(data.genotypes.items())], indent=1)
        + "\n")
    write_discussion(folder, data.discussion)
    return folder


def write_discussion(folder: str | Path, text: str) -> None:
    """The folder's ``discussion.md`` (atomically); an empty text removes it."""
    if text.strip():
        atomic_write_text(Path(folder) / DISCUSSION, text.strip() + "\n")
    else:
        (Path(folder) / DISCUSSION).unlink(missing_ok=True)


def _read_csv(path: Path) -> pd.DataFrame:
    text = path.read_text()
    return pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame()


def read_data(folder: str | Path) -> StudyData:
    """The folder :func:`write_data` wrote (one-line ConfigError naming a missing or unreadable file)."""
    folder = Path(folder)
    for name in FILES:
        if not (folder / name).is_file():
            raise ConfigError(f"{folder / name}: missing (a study's data folder holds {', '.join(FILES)})")
    try:
        summary = json.loads((folder / "summary.json").read_text())
        cost = json.loads((folder / "cost.json").read_text())
        genotypes = {(g["arm"], int(g["seed"])): ESSGenotype.from_dict(g["genotype"], str(folder / "genotypes.json"))
                     for g in json.loads((folder / "genotypes.json").read_text())}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{folder}: unreadable study data ({err})") from None
    if summary.get("job") != "study":
        raise ConfigError(f"{folder / 'summary.json'}: job: expected a study, got {summary.get('job')!r}")
    discussion = (folder / DISCUSSION).read_text() if (folder / DISCUSSION).is_file() else ""
    return StudyData(summary, _read_csv(folder / "trials.csv"), _read_csv(folder / "epochs.csv"),
                     Cost(int(cost["trials"]), dict(cost["minutes"]), float(cost["busy_hours"])), genotypes,
                     discussion)


__all__ = ["Cost", "DISCUSSION", "FILES", "StudyData", "from_experiment", "read_data", "retrained_genotypes",
           "study_budget", "tune_cost", "with_budget", "with_ranking", "write_data", "write_discussion"]
