"""A trial's run directory read as its MLflow run shows it: metric points, params, files, tags.

The run directory is the record; MLflow only shows it. Layout (``run/`` of a Tune trial, which is
also each of its checkpoints)::

    trial.json              who the trial is: trial id, run name, phase, tags (written at its start)
    system_metrics.jsonl    CPU, memory (and GPU) samples: step, timestamp, system/... values
    search/                 the search loop's run directory: config.yaml, metrics.jsonl, genotypes/,
                            arch_weights/, arch_weights.json, genotype.json|png|svg, checkpoint.pt
    retrain/                the retraining's: config.yaml, metrics.jsonl, final.json, genotype.json, best.pt
    transfer/               the tagger's: config.yaml, metrics.jsonl, final.json, test_report.txt,
                            predictions/test.txt, genotype.json, best.pt

Each phase maps to the MLflow names the jobs have always used: ``search.*`` / ``retrain.*`` /
``transfer.*`` params, metrics with ``step = epoch`` (retraining keys prefixed ``retrain/``), files
under ``genotypes/``, ``arch_weights/``, ``retrain/``, ``transfer/`` and ``model/``. A retraining's
``genotype`` param is the genotype's name or description (not the scratch file its config names), and
its run shows the genotype's picture (``retrain/genotype.png``), drawn from its ``genotype.json``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ess.adapters.mlflow.client import flat_params, numeric_metrics
from ess.config import parse_yaml
from ess.errors import ESSError
from ess.space.description import describe
from ess.space.genotype import builtin_name
from ess.space.refs import load_genotype
from ess.space.tables import arch_weight_rows

TRIAL_FILE = "trial.json"
SYSTEM_FILE = "system_metrics.jsonl"
GENOTYPE_FILE, PICTURE_FILE = "genotype.json", "genotype.png"


def genotype_param(value: Any, folder: Path) -> str:
    """A phase's genotype as a param: a built-in's name, else the one-line description of the genotype
    the phase wrote (``folder/genotype.json``; the config's reference when it wrote none)."""
    name = builtin_name(value)
    if name is not None:
        return name
    written = folder / GENOTYPE_FILE
    try:
        return describe(load_genotype(written if written.is_file() else str(value)))
    except ESSError:
        return str(value)


@dataclass(frozen=True)
class Phase:
    """Where a phase's files are in the run directory and under which MLflow names they appear."""

    name: str            # its folder in the run directory
    params: str          # prefix of its config's params
    metrics: str         # prefix of its metric keys
    folder: str | None   # MLflow folder of its plain files (None: the run's root)
    files: tuple[str, ...]   # logged when the trial has ended (their per-epoch content is in the metrics)
    model: str           # its weights, logged under model/ when the trial has ended
    skip_params: tuple[str, ...] = ()
    skip_final: tuple[str, ...] = ()
    #: ``(config key, view)``: the param shows ``view(value, phase folder)`` instead of the value
    param_views: tuple[tuple[str, Callable[[Any, Path], str]], ...] = ()
    picture: bool = False    # drawn from its genotype.json when the trial has ended, if it drew none


PHASES = (
    Phase("search", "search.", "", None, ("arch_weights.json", "genotype.json", "genotype.png", "genotype.svg",
                                          "config.yaml", "metrics.jsonl"), "checkpoint.pt"),
    Phase("retrain", "retrain.", "retrain/", "retrain", ("final.json", "config.yaml", "metrics.jsonl",
                                                         "genotype.json", "genotype.png"), "best.pt",
          param_views=(("genotype", genotype_param),), picture=True),
    Phase("transfer", "transfer.", "", "transfer", ("final.json", "config.yaml", "metrics.jsonl",
                                                    "test_report.txt", "genotype.json"), "best.pt",
          skip_params=("cell",), skip_final=("seed",)),
)
#: per-epoch files of the search, kept once logged (the epoch is in the name)
EPOCH_FOLDERS = ("genotypes", "arch_weights")


@dataclass(frozen=True)
class File:
    """One file of the record and where its copy goes in the MLflow run."""

    path: Path
    folder: str | None
    final: bool = False      # logged once the trial has ended (weights, the final files)
    kept: bool = False       # named by its epoch: never changes once written

    @property
    def artifact(self) -> str:
        return f"{self.folder}/{self.path.name}" if self.folder else self.path.name


def _rows(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a file; a torn last line (a writer stopped mid-line) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: unreadable line skipped", RuntimeWarning, stacklevel=3)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class RunRecord:
    """The run directory of one trial (a Tune checkpoint of it, or the live directory)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def identity(self) -> dict[str, Any]:
        """``trial.json``: trial id and name, experiment, phase, run name, tags."""
        return _json(self.root / TRIAL_FILE)

    def phases(self) -> Iterator[tuple[Phase, Path]]:
        for phase in PHASES:
            if (self.root / phase.name).is_dir():
                yield phase, self.root / phase.name

    def points(self) -> list[tuple[str, float, int | None, int]]:
        """Every metric point: ``(key, value, timestamp in ms or None, step)``."""
        out: list[tuple[str, float, int | None, int]] = []
        for phase, folder in self.phases():
            rows = _rows(folder / "metrics.jsonl")
            for row in rows:
                step = int(row.get("epoch", 0))
                out += [(phase.metrics + k, v, None, step) for k, v in numeric_metrics(row).items()]
            final = _json(folder / "final.json")
            if final:
                step = int(final.get("epoch", rows[-1].get("epoch", 0) if rows else 0))
                out += [(phase.metrics + k, v, None, step) for k, v in numeric_metrics(final).items()
                        if k not in phase.skip_final]
        for row in _rows(self.root / SYSTEM_FILE):
            step, stamp = int(row.get("step", 0)), row.get("timestamp")
            out += [(k, v, int(stamp) if stamp else None, step) for k, v in numeric_metrics(row).items()
                    if k.startswith("system/")]
        return out

    def params(self) -> dict[str, str]:
        """Each phase's resolved config (its ``config.yaml``, written by the loop from the typed config)."""
        out: dict[str, str] = {}
        for phase, folder in self.phases():
            path = folder / "config.yaml"
            if path.is_file():
                data = parse_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
                data = {k: v for k, v in data.items() if k not in phase.skip_params}
                for key, view in phase.param_views:
                    if data.get(key) is not None:
                        data[key] = view(data[key], folder)
                out.update(flat_params(data, phase.params))
        return out

    def files(self) -> list[File]:
        out: list[File] = []
        for phase, folder in self.phases():
            if phase.name == "search":
                for sub in EPOCH_FOLDERS:
                    out += [File(p, sub, kept=True) for p in sorted((folder / sub).glob("epoch_*"))]
                if (folder / "arch_weights.json").is_file():   # the latest weights, each epoch
                    out.append(File(folder / "arch_weights.json", None))
            out += [File(folder / name, phase.folder, final=True) for name in phase.files
                    if (folder / name).is_file() and name != "arch_weights.json"]
            if phase.name == "transfer" and (folder / "predictions" / "test.txt").is_file():
                out.append(File(folder / "predictions" / "test.txt", "transfer/predictions", final=True))
            if (folder / phase.model).is_file():
                out.append(File(folder / phase.model, "model", final=True))
        return out

    def final_tags(self) -> dict[str, str]:
        """What only a finished trial tags: its search's genotype (compact JSON)."""
        genotype = self.root / "search" / "genotype.json"
        if not genotype.is_file():
            return {}

        return {"ess.genotype": load_genotype(genotype).to_json(None)}

    def pictures(self) -> list[tuple[Path, str | None, str]]:
        """``(genotype.json, MLflow folder, title)`` of each phase to be drawn for its run: the phases
        that show a picture but drew none themselves (a retraining)."""
        name = self.identity().get("run_name") or self.root.name
        return [(folder / GENOTYPE_FILE, phase.folder, f"{phase.name}: {name}") for phase, folder in self.phases()
                if phase.picture and (folder / GENOTYPE_FILE).is_file() and not (folder / PICTURE_FILE).is_file()]

    def weight_table(self) -> list[dict[str, Any]]:
        """The search's last architecture weights as one long table (part, edge, branch, op, weight)."""
        weights = _json(self.root / "search" / "arch_weights.json")
        return arch_weight_rows(weights) if weights else []


__all__ = ["EPOCH_FOLDERS", "GENOTYPE_FILE", "PHASES", "PICTURE_FILE", "SYSTEM_FILE", "TRIAL_FILE", "File", "Phase",
           "RunRecord", "genotype_param"]
