"""Ray Tune orchestration of ESS: trainables, job configs and the four jobs of ``tune_jobs/``.

This is the thin adapter between the plain-PyTorch core and Ray: :func:`ess.search.search` and
:func:`ess.train.train` stay free of Ray; here they become Tune *function trainables* that

1. restore first: the trial's latest checkpoint (``tune.get_checkpoint()``) is unpacked into the
   trial's run directory and the loop continues from it (``resume=True``, exact);
2. report one flat metrics row per epoch (``tune.report``) with the genotype JSON in the row and a
   checkpoint (``tune.Checkpoint.from_directory``) holding the whole run directory: loop
   checkpoint, config, genotypes and pictures, weight tables, metrics;
3. log to a nested MLflow run of the experiment's parent run through :mod:`ess.tracking`.

:func:`ess.transfer.transfer` (a cell in a BiRNN-CRF tagger) is wrapped the same way.

Jobs (``joint_search``, ``ablation``, ``hparam_search``, ``retrain``, ``transfer``) share one frozen
:class:`JobConfig` (defaults in code, then the job's defaults, then ``--preset`` or ``--smoke-test``,
then ``--config FILE.yaml``, then flags); the resolved config is saved as ``job.yaml`` in the
experiment directory ``<storage_path>/<name>/`` next to the Tune experiments (``search/``,
``retrain/``, ``ablation/``, ``hparam/``, ``transfer/``) and the job's ``summary.json``. ``--resume`` continues an
interrupted experiment with ``Tuner.restore`` (searcher state included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from ess.checkpoint import atomic_write_text
from ess.config import (
    add_config_arguments,
    check,
    config_from_mapping,
    config_to_dict,
    load_yaml,
    resolve_config,
)
from ess.errors import ConfigError, DataError, DivergenceError, ESSError
from ess.runs import EpochReport

JOBS = ("joint_search", "ablation", "hparam_search", "retrain", "transfer")
TRIAL_STATE = "trial.json"
RUN_DIR = "run"                     # inside the trial's working directory; the checkpoint is this directory
SEARCH_METRIC = "valid/ppl"
RETRAIN_METRIC = "retrain/valid/best_ppl"
TRANSFER_METRIC = "dev/f1"
OVERRIDES = ("search", "train", "transfer")   # the dict fields of JobConfig: layers merge into them


class ExperimentInterrupted(ESSError):
    """The Tune run stopped before all its trials finished (Ctrl+C, SIGINT): resume it."""


# ==================================================================================================
# Job config


def _kv_mapping(value: Any, where: str) -> dict[str, Any]:
    """A mapping from YAML, or ``"key=value key=value"`` (commas work too) from the command line."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    if isinstance(value, str):
        out: dict[str, Any] = {}
        items = []
        for chunk in value.split():  # commas separate items too, unless inside [...] or {...}
            items += [chunk] if any(c in chunk for c in "[{") else [c for c in chunk.split(",") if c]
        for item in items:
            if "=" not in item:
                raise ConfigError(f"{where}: expected key=value items, got {item!r}")
            key, raw = item.split("=", 1)
            try:
                out[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw != "" else ""
            except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: a 5000-digit integer
                out[key.strip().replace("-", "_")] = raw
        return out
    raise ConfigError(f"{where}: expected a mapping or key=value items, got {value!r}")


@dataclass(frozen=True)
class JobConfig:
    """One orchestration job: what to run, where, how many resources, and where to track it."""

    name: str = field(default="", metadata={"help": "experiment name (default: <job>-<preset>-<date-time>)"})
    storage_path: str = field(default="runs/tune", metadata={"help": "Tune results, checkpoints, job.yaml (or s3://)"})
    tracking_uri: str = field(default="", metadata={
        "help": "MLflow store; else $MLFLOW_TRACKING_URI, else sqlite:///STORAGE/mlflow.db; none: off"})
    experiment: str = field(default="", metadata={"help": "MLflow experiment (default: ess-<job>)"})
    address: str = field(default="", metadata={"help": "Ray cluster ('auto', 'ray://host:10001'); empty: local"})
    num_cpus: int = field(default=0, metadata={"help": "CPUs of a local Ray (0: all)"})
    dataset: str = field(default="ptb", metadata={"help": "registered corpus"})
    data_dir: str = field(default="", metadata={"help": "else $ESS_DATA_DIR, else ./data (same path on every node)"})
    seeds: tuple[int, ...] = field(default=(3, 4), metadata={"help": "search seeds, e.g. 3,4,5"})
    modes: tuple[str, ...] = field(default=("joint",), metadata={"help": "search modes: intra, inter, joint"})
    steps: tuple[int, ...] = field(default=(), metadata={"help": "intra-cell node counts (empty: the preset's)"})
    n_inter: tuple[int, ...] = field(default=(), metadata={"help": "inter-cell node counts (empty: the preset's)"})
    m: tuple[int, ...] = field(default=(), metadata={"help": "inter-cell windows (empty: the preset's)"})
    search_preset: str = field(default="cpu-small", metadata={"help": "ess.search preset under the search overrides"})
    search: dict = field(default_factory=dict, metadata={"help": "SearchConfig overrides, 'lr=10 epochs=3'"})
    retrain: bool = field(default=True, metadata={"help": "retrain the searched genotype(s)"})
    top_k: int = field(default=2, metadata={"help": "joint_search: retrain the k best genotypes"})
    train: dict = field(default_factory=dict, metadata={"help": "TrainConfig overrides, 'epochs=3 nhid=128'"})
    genotypes: tuple[str, ...] = field(default=(), metadata={"help": "retrain: built-in names or JSON files"})
    source_experiment: str = field(default="", metadata={"help": "retrain: MLflow experiment to take the best of"})
    source_run: str = field(default="", metadata={"help": "retrain: only the trials of this parent run (name)"})
    cells: tuple[str, ...] = field(default=("lstm", "DARTS_V2"), metadata={
        "help": "transfer: cells to compare: lstm, built-in genotypes or JSON files"})
    tasks: tuple[str, ...] = field(default=("conll2003",), metadata={
        "help": "transfer: tagging tasks (conll2003, wnut17, conll2000)"})
    transfer_preset: str = field(default="short", metadata={"help": "ess.transfer preset under the transfer overrides"})
    transfer: dict = field(default_factory=dict, metadata={"help": "TransferConfig overrides, 'epochs=3 nhid=64'"})
    num_samples: int = field(default=8, metadata={"help": "hparam_search: Optuna trials"})
    grace_period: int = field(default=1, metadata={"help": "hparam_search: ASHA grace period (epochs)"})
    reduction_factor: float = field(default=2.0, metadata={"help": "hparam_search: ASHA reduction factor"})
    optuna_storage: str = field(default="", metadata={"help": "Optuna RDB URL (default sqlite:///EXP/optuna.db)"})
    study_name: str = field(default="", metadata={"help": "Optuna study (default: the experiment name)"})
    space: dict = field(default_factory=dict, metadata={
        "help": "hparam_search space, YAML: {lr: [loguniform, 5, 40], m: [choice, [1, 2, 3]]}"})
    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs per trial (also torch threads)"})
    gpus_per_trial: float = field(default=0.0, metadata={"help": "GPUs per trial; fractions share a GPU"})
    max_concurrent_trials: int = field(default=0, metadata={"help": "0: as many as resources allow"})
    max_failures: int = field(default=2, metadata={"help": "restarts of a failed trial from its checkpoint"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept per trial"})
    checkpoint_every: int = field(default=1, metadata={"help": "checkpoint every N epochs (and the last)"})
    system_metrics: bool = field(default=True, metadata={"help": "CPU/memory/GPU metrics in each trial run"})
    system_metrics_interval: float = field(default=10.0, metadata={"help": "seconds between system samples"})
    verbose: int = field(default=1, metadata={"help": "Tune console output: 0 silent, 1 status, 2 per result"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "search", _kv_mapping(self.search, "search"))
        object.__setattr__(self, "train", _kv_mapping(self.train, "train"))
        object.__setattr__(self, "space", _kv_mapping(self.space, "space"))
        object.__setattr__(self, "transfer", _kv_mapping(self.transfer, "transfer"))
        for name in ("top_k", "num_samples", "grace_period", "keep_checkpoints", "checkpoint_every"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("num_cpus", "max_concurrent_trials", "max_failures", "verbose"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(self.cpus_per_trial > 0, "cpus_per_trial", f"must be positive, got {self.cpus_per_trial}")
        check(self.gpus_per_trial >= 0, "gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial}")
        check(self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(), "gpus_per_trial",
              f"above 1 must be a whole number, got {self.gpus_per_trial}")
        check(self.reduction_factor > 1, "reduction_factor", f"must be > 1, got {self.reduction_factor}")
        check(self.system_metrics_interval > 0, "system_metrics_interval", "must be positive")
        check(len(self.seeds) > 0, "seeds", "give at least one seed")
        check(len(self.modes) > 0, "modes", "give at least one mode")
        check(len(self.cells) > 0, "cells", "give at least one cell")
        check(len(self.tasks) > 0, "tasks", "give at least one task")
        from ess.supernet import MODES

        for mode in self.modes:
            check(mode in MODES, "modes", f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        for name in ("steps", "n_inter", "m"):
            for v in getattr(self, name):
                check(v >= 1, name, f"node counts must be >= 1, got {v}")
        check(self.name == "" or ("/" not in self.name and self.name not in (".", "..")), "name",
              f"must be a plain directory name, got {self.name!r}")
        _check_modes_and_space(self)


INTER_KNOBS = ("n_inter", "m", "combination", "softmax_scope", "residual")   # used only when inter cells are searched
INTRA_KNOBS = ("steps",)                                                    # used only when the intra cell is
SPACE_KINDS = {"choice": 1, "uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}


def _check_space_entry(name: str, spec: Any) -> None:
    """One ``space`` entry: ``[choice, [v, ...]]`` (non-empty) or ``[uniform, low, high]`` (loguniform, randint;
    quniform takes a third argument, q)."""
    where = f"space: {name}"
    if not isinstance(spec, (list, tuple)) or not spec or not isinstance(spec[0], str):
        raise ConfigError(f"{where}: expected [distribution, args...], got {spec!r}"[:300])
    kind, args = spec[0], list(spec[1:])
    if kind not in SPACE_KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r} ({', '.join(SPACE_KINDS)})"[:300])
    if len(args) != SPACE_KINDS[kind]:
        raise ConfigError(f"{where}: {kind} takes {SPACE_KINDS[kind]} argument(s), got {args!r}"[:300])
    if kind == "choice":
        if not isinstance(args[0], (list, tuple)) or not args[0]:
            raise ConfigError(f"{where}: choice needs a non-empty list of values, got {args[0]!r}"[:300])
        return
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args):
        raise ConfigError(f"{where}: {kind} needs finite numbers, got {args!r}"[:300])
    low, high = args[0], args[1]
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got {low!r} and {high!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint needs integers, got {args!r}"[:300])
    if kind == "quniform" and not args[2] > 0:
        raise ConfigError(f"{where}: quniform needs q > 0, got {args[2]!r}")


def _check_modes_and_space(job: JobConfig) -> None:
    """What the modes do not search cannot be varied: no inter-cell knobs for intra-only jobs (and the
    reverse), and the hparam space is well-formed. One-line ConfigErrors before Ray starts."""
    from ess.search import SearchConfig
    from ess.supernet import MODES

    inter = any(MODES[mode].searches_inter for mode in job.modes)
    intra = any(MODES[mode].searches_intra for mode in job.modes)
    modes = "/".join(job.modes)
    for names, searched, part in ((INTER_KNOBS, inter, "inter cells"), (INTRA_KNOBS, intra, "intra cell")):
        if searched:
            continue
        for name in names:
            if len(getattr(job, name, ())) > 1:
                raise ConfigError(f"{name}: mode {modes} does not search the {part}, so a grid over {name} "
                                  f"{list(getattr(job, name))} runs identical trials")
            if name in job.space:
                raise ConfigError(f"space: {name}: mode {modes} does not search the {part}; drop {name} from the "
                                  "space or add a mode that searches them")
    if job.search.get("combination") == "search" and not all(MODES[mode].searches_inter for mode in job.modes):
        raise ConfigError(f"search.combination: 'search' searches the inter-cell combination, but mode {modes} "
                          "fixes the inter cells of some trials to the identity (use product or sum)")
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    for name, spec in job.space.items():
        if name not in fields:
            raise ConfigError(f"space: {name!r} is not a SearchConfig field"[:300])
        _check_space_entry(name, spec)


#: presets shared by every job; ``smoke`` is what ``--smoke-test`` selects
JOB_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds per trial: a tiny supernet on a slice of PTB, one-epoch retrain of the same size.
    "smoke": dict(seeds=(1, 2), search_preset="smoke", top_k=1, num_samples=4, keep_checkpoints=1,
                  system_metrics_interval=1.0, verbose=0,
                  search=dict(emsize=16, nhid=16, steps=3, n_inter=2, m=2, batch_size=8, max_train_tokens=4000,
                              max_eval_tokens=1200, epochs=2, draw=True),
                  train=dict(emsize=16, nhid=16, batch_size=8, epochs=1, max_train_tokens=4000,
                             max_eval_tokens=1200, lr=20.0),
                  transfer_preset="smoke", transfer=dict(epochs=2, max_train_sentences=300, max_eval_sentences=150)),
    # The default: a real joint search plus a short retrain, ~15 minutes on a 2-core laptop.
    "cpu-small": dict(seeds=(3, 4), search_preset="cpu-small", top_k=2, num_samples=8, cpus_per_trial=1.0,
                      search=dict(epochs=4), transfer_preset="short",
                      train=dict(emsize=128, nhid=128, batch_size=32, epochs=3, max_train_tokens=200_000,
                                 max_eval_tokens=20_000)),
    # The DARTS/ESS sizes: search at 300 units, batch 256, 50 epochs; retrain at 850 (DARTS recipe).
    "paper": dict(seeds=(1, 2, 3, 4), search_preset="paper", top_k=4, num_samples=32, cpus_per_trial=4.0,
                  gpus_per_trial=1.0, max_failures=3, keep_checkpoints=2,
                  search=dict(emsize=300, nhid=300, batch_size=256, epochs=50), transfer_preset="full",
                  train=dict(emsize=850, nhid=850, batch_size=64, epochs=300)),
}

#: each job's own defaults, applied before the preset
JOB_DEFAULTS: dict[str, dict[str, Any]] = {
    "joint_search": dict(modes=("joint",), retrain=True),
    "ablation": dict(modes=("intra", "inter", "joint"), retrain=True),
    "hparam_search": dict(modes=("joint",), retrain=False),
    "retrain": dict(retrain=True),
    "transfer": dict(retrain=False, seeds=(1, 2, 3)),
}

#: per job and preset, applied after the preset
JOB_PRESET_EXTRAS: dict[tuple[str, str], dict[str, Any]] = {
    ("ablation", "smoke"): dict(seeds=(1,)),
    ("hparam_search", "smoke"): dict(seeds=(1,), search=dict(emsize=16, nhid=16, steps=3, n_inter=2, m=2,
                                                             batch_size=8, max_train_tokens=4000,
                                                             max_eval_tokens=1200, epochs=2, draw=False)),
    ("hparam_search", "cpu-small"): dict(seeds=(3,), search=dict(epochs=3, max_train_tokens=50_000)),
    ("retrain", "smoke"): dict(genotypes=("DARTS_V2",)),
    ("transfer", "smoke"): dict(seeds=(1,)),
    ("transfer", "cpu-small"): dict(seeds=(1, 2, 3)),
    ("transfer", "paper"): dict(seeds=(1, 2, 3, 4, 5)),
}

#: hparam_search's default space over SearchConfig fields: [distribution, args...]
DEFAULT_SPACE: dict[str, list[Any]] = {
    "lr": ["loguniform", 5.0, 40.0],
    "arch_lr": ["loguniform", 3e-4, 3e-2],
    "dropout": ["uniform", 0.5, 0.85],
    "dropouth": ["uniform", 0.05, 0.4],
    "dropoutx": ["uniform", 0.5, 0.85],
    "dropouti": ["uniform", 0.05, 0.4],
    "m": ["choice", [1, 2, 3, 4]],
    "n_inter": ["choice", [1, 2, 3, 4]],
}


def job_base(job: str, preset: str | None) -> JobConfig:
    """Code defaults <- the job's defaults <- the preset (and its per-job extras)."""
    if job not in JOBS:
        raise ConfigError(f"job: unknown job {job!r} (known: {', '.join(JOBS)})")
    cfg = config_from_mapping(JobConfig, JOB_DEFAULTS[job], f"{job} defaults")
    if preset is not None:
        if preset not in JOB_PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r} (known: {', '.join(JOB_PRESETS)})")
        cfg = config_from_mapping(JobConfig, JOB_PRESETS[preset], f"--preset {preset}", base=cfg)
        extra = JOB_PRESET_EXTRAS.get((job, preset))
        if extra:
            merged = dict(extra)
            for key in OVERRIDES:  # overrides of overrides merge rather than replace
                if key in extra:
                    merged[key] = {**getattr(cfg, key), **extra[key]}
            cfg = config_from_mapping(JobConfig, merged, f"--preset {preset} ({job})", base=cfg)
    return cfg


def _merge_dicts(cfg: JobConfig, data: Mapping[str, Any], source: str) -> JobConfig:
    """Apply a mapping, merging (not replacing) the search/train/transfer override dicts."""
    data = dict(data)
    for key in OVERRIDES:
        if key in data:
            data[key] = {**getattr(cfg, key), **_kv_mapping(data[key], f"{source}: {key}")}
    return config_from_mapping(JobConfig, data, source, base=cfg)


def parse_job_args(job: str, argv: list[str] | None = None,
                   description: str | None = None) -> tuple[JobConfig, argparse.Namespace]:
    """The job's command line: ``--smoke-test``, ``--preset``, ``--config``, ``--resume`` and every field."""
    parser = argparse.ArgumentParser(prog=f"python tune_jobs/{job}.py", description=description)
    parser.add_argument("--smoke-test", action="store_true", help="a tiny end-to-end run (about a minute)")
    parser.add_argument("--preset", choices=[p for p in JOB_PRESETS if p != "smoke"], default=None,
                        help="cpu-small (default) or paper; applied before --config and the flags")
    parser.add_argument("--resume", action="store_true",
                        help="continue experiment --name with Tuner.restore (needs --name)")
    add_config_arguments(parser, JobConfig)
    args = parser.parse_args(argv)
    storage = getattr(args, "storage_path", None) or JobConfig.__dataclass_fields__["storage_path"].default
    if args.resume:
        name = getattr(args, "name", "")
        if not name:
            raise ConfigError("--resume: give the experiment's --name")
        saved = _join(_storage_root(storage), name, "job.yaml")
        if not _exists(saved):
            raise ConfigError(f"{saved}: no saved job config to resume from")
        data = yaml.safe_load(_read_text(saved)) or {}
        data.pop("job", None)
        base = config_from_mapping(JobConfig, data, saved)
    else:
        preset = "smoke" if args.smoke_test else (args.preset or "cpu-small")
        base = job_base(job, preset)
    if getattr(args, "config", None):
        base = _merge_dicts(base, load_yaml(args.config), str(args.config))
        args.config = None
    names = {f.name for f in dataclasses.fields(JobConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    for key in OVERRIDES:  # flags merge into the preset's overrides too
        if key in given:
            given[key] = {**getattr(base, key), **_kv_mapping(given[key], f"--{key}")}
    cfg = resolve_config(JobConfig, argparse.Namespace(**{k: v for k, v in given.items()
                                                         if k not in OVERRIDES}), base=base)
    if any(k in given for k in OVERRIDES):
        cfg = dataclasses.replace(cfg, **{k: given[k] for k in OVERRIDES if k in given})
    if not cfg.name:
        preset = "smoke" if args.smoke_test else (args.preset or "cpu-small")
        cfg = dataclasses.replace(cfg, name=f"{job}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if job == "retrain" and not cfg.genotypes and not cfg.source_experiment:
        raise ConfigError("genotypes: nothing to retrain; give --genotypes NAME_OR_FILE,... or --source-experiment")
    search_config_dict(cfg)   # one-line errors for bad overrides now, not inside a trial
    train_config_dict(cfg)
    if job == "transfer":
        transfer_config_dict(cfg)
    return cfg, args


# -- derived configs ---------------------------------------------------------------------------------


def search_config_dict(job: JobConfig, data_dir: str | None = None) -> dict[str, Any]:
    """The SearchConfig every search trial starts from (validated): preset <- ``job.search``."""
    from ess.search import PRESETS, SearchConfig

    if job.search_preset not in PRESETS:
        raise ConfigError(f"search_preset: unknown {job.search_preset!r} (known: {', '.join(PRESETS)})")
    base = {**PRESETS[job.search_preset], **job.search, "dataset": job.dataset, "progress": False,
            "run_dir": f"{RUN_DIR}/search", "threads": max(1, int(job.cpus_per_trial))}
    if data_dir is not None:
        base["data_dir"] = data_dir
    cfg = config_from_mapping(SearchConfig, base, "search (job preset and overrides)")
    return config_to_dict(cfg)


def train_config_dict(job: JobConfig, data_dir: str | None = None) -> dict[str, Any]:
    """The TrainConfig every retrain starts from (validated; the genotype is set per trial)."""
    from ess.train import TrainConfig

    base = {**job.train, "dataset": job.dataset, "progress": False, "run_dir": f"{RUN_DIR}/retrain",
            "threads": max(1, int(job.cpus_per_trial))}
    if data_dir is not None:
        base["data_dir"] = data_dir
    return config_to_dict(config_from_mapping(TrainConfig, base, "train (job preset and overrides)"))


def transfer_config_dict(job: JobConfig, data_dir: str | None = None) -> dict[str, Any]:
    """The TransferConfig every transfer trial starts from (validated; task, cell, seed set per trial)."""
    from ess.transfer import PRESETS, TransferConfig

    if job.transfer_preset not in PRESETS:
        raise ConfigError(f"transfer_preset: unknown {job.transfer_preset!r} (known: {', '.join(PRESETS)})")
    base = {**PRESETS[job.transfer_preset], **job.transfer, "progress": False, "run_dir": f"{RUN_DIR}/transfer",
            "threads": max(1, int(job.cpus_per_trial)), "task": job.tasks[0]}
    if data_dir is not None:
        base["data_dir"] = data_dir
    return config_to_dict(config_from_mapping(TransferConfig, base, "transfer (job preset and overrides)"))


def transfer_variants(job: JobConfig, cells: Sequence[str]) -> list[dict[str, Any]]:
    """The grid task x cell x seed, one dict per trial (``cell_label`` names a cell of the job spec)."""
    return [{"task": task, "cell_label": cell, "seed": seed} for task in job.tasks for cell in cells
            for seed in job.seeds]


def search_variants(job: JobConfig, modes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The grid mode x seed x node counts, one dict per trial.

    Counts a mode does not use collapse (intra mode fixes the inter cells to the identity, so
    ``n_inter`` and ``m`` do not matter; inter mode fixes the intra cell, so ``steps`` does not),
    which keeps the grid from running identical trials.
    """
    from ess.supernet import MODES

    base = search_config_dict(job)
    variants, seen = [], set()
    for mode in modes or job.modes:
        searched = MODES[mode]
        for seed in job.seeds:
            for steps in job.steps or (base["steps"],):
                for n_inter in job.n_inter or (base["n_inter"],):
                    for m in job.m or (base["m"],):
                        v = {"mode": mode, "seed": seed, "steps": steps, "n_inter": n_inter, "m": m}
                        if not searched.searches_inter:
                            v["n_inter"], v["m"] = (job.n_inter or (base["n_inter"],))[0], (job.m or (base["m"],))[0]
                        if not searched.searches_intra:
                            v["steps"] = (job.steps or (base["steps"],))[0]
                        key = tuple(sorted(v.items()))
                        if key not in seen:
                            seen.add(key)
                            variants.append(v)
    return variants


def variant_label(v: Mapping[str, Any]) -> str:
    if "genotype_label" in v:
        return f"retrain_{v['genotype_label']}"
    if "cell_label" in v:
        return f"{v.get('task')}_{v['cell_label']}_s{v.get('seed')}"
    parts = [str(v.get("mode", "search")), f"s{v.get('seed')}"]
    if "steps" in v:
        parts.append(f"n{v['steps']}-{v.get('n_inter')}-{v.get('m')}")
    if v.get("label"):
        parts.append(str(v["label"]))
    return "_".join(parts)


def trial_name(trial: Any) -> str:
    """Tune trial names from the variant (``joint_s3_n8-3-3``) instead of the whole dict."""
    variant = trial.config.get("variant")
    if isinstance(variant, Mapping):
        return f"{variant_label(variant)}_{trial.trial_id}"
    return f"{trial.trainable_name}_{trial.trial_id}"


# ==================================================================================================
# Storage helpers (local paths, or URIs through pyarrow)


def _is_uri(path: str) -> bool:
    return "://" in str(path)


def _storage_root(storage: str) -> str:
    return storage if _is_uri(storage) else str(Path(storage).expanduser().resolve())


def _join(*parts: str) -> str:
    return "/".join([str(parts[0]).rstrip("/"), *[str(p).strip("/") for p in parts[1:]]])


def _fs(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def _exists(path: str) -> bool:
    if not _is_uri(path):
        return Path(path).exists()
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def _read_text(path: str) -> str:
    if not _is_uri(path):
        return Path(path).read_text(encoding="utf-8")
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def _write_text(path: str, text: str) -> str:
    if not _is_uri(path):
        return str(atomic_write_text(Path(path), text))
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode("utf-8"))
    return path


# ==================================================================================================
# Data


def ensure_corpus(name: str, data_dir: str | None = None, *, url: str | None = None) -> Path:
    """The corpus directory, downloading the corpus when its files are missing.

    The download shows a progress bar and checks the sha256 (:func:`ess.data.download_corpus`);
    offline, the one-line :class:`DataError` says where to put the files.
    """
    from ess.data import SPLITS, corpus_dir, download_corpus, get_spec, verify_corpus

    spec = get_spec(name)
    target = corpus_dir(name, data_dir).resolve()
    missing = [spec.files[s] for s in SPLITS if not (target / spec.files[s]).is_file()]
    if missing:
        print(f"corpus {name!r} is missing from {target}: downloading it", file=sys.stderr, flush=True)
        try:
            download_corpus(name, data_dir, url=url)
        except DataError as err:
            raise DataError(f"{target}: corpus {name!r} is missing and could not be downloaded ({err}); "
                            f"put {', '.join(spec.files[s] for s in SPLITS)} there "
                            "(or set ESS_DATA_DIR / --data-dir)") from None
    verify_corpus(name, data_dir)
    return target


# ==================================================================================================
# Trainables (run inside Ray actor processes)


def _trial_root() -> Path:
    """The trial's own working directory (Ray changes into it unless RAY_CHDIR_TO_TRIAL_DIR=0)."""
    from ray import tune

    if os.environ.get("RAY_CHDIR_TO_TRIAL_DIR", "1") == "0":
        root = Path(tune.get_context().get_trial_dir()) / "working"
        root.mkdir(parents=True, exist_ok=True)
        os.chdir(root)
    return Path.cwd()


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""


class _Trial:
    """What a trainable does around the core loops: restore, tracker, per-epoch report."""

    def __init__(self, config: dict[str, Any], phase: str):
        from ray import tune

        self.checkpoint = tune.get_checkpoint()   # restore first
        self.spec: dict[str, Any] = config["ess"]
        self.config = config
        self.phase = phase
        ctx = tune.get_context()
        self.trial_id, self.trial_name = ctx.get_trial_id(), ctx.get_trial_name()
        self.root = _trial_root()
        self.run = Path(RUN_DIR)                 # relative: stable across restarts on other nodes
        if self.checkpoint is not None:   # a clean copy: no files of a later, lost epoch survive
            shutil.rmtree(self.root / self.run, ignore_errors=True)
            self.checkpoint.to_directory(str(self.root / self.run))
        self.run.mkdir(parents=True, exist_ok=True)
        state_path = self.run / TRIAL_STATE
        self.state = json.loads(state_path.read_text()) if state_path.exists() else {}
        self.restored = self.checkpoint is not None
        self.node_id = _node_id()
        self.tracker = None
        self.carry: dict[str, Any] = {}         # values every later row repeats (final search metrics ...)
        self.stopped = False                    # Tune stopped the trial (ASHA, max_t) at a report

    def variant(self) -> dict[str, Any]:
        """The trial's own values: the ``variant`` dict plus tuned top-level keys (Optuna, grid)."""
        out = dict(self.config.get("variant") or {})
        out.update({k: v for k, v in self.config.items() if k not in ("ess", "variant")})
        return out

    def open_tracker(self, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        from ess.tracking import PHASE_TAG, start_trial_run

        t = self.spec.get("tracking") or {}
        self.tracker = start_trial_run(
            t.get("uri"), t.get("experiment_id", ""), t.get("parent_run_id"), self.trial_id, run_name=run_name,
            tags={PHASE_TAG: self.phase, "job": self.spec.get("job"), "ray.trial_name": self.trial_name,
                  "ray.experiment": self.spec.get("experiment_name"), **tags},
            params=params, run_id=self.state.get("mlflow_run_id"),
            system_metrics=bool(t.get("system_metrics", True)),
            system_metrics_interval=float(t.get("system_metrics_interval", 10.0)),
            experiment_name=t.get("experiment_name"), spool_dir=t.get("spool_dir"))
        self.state.update({"trial_id": self.trial_id, "mlflow_run_id": self.tracker.run_id})
        atomic_write_text(self.run / TRIAL_STATE, json.dumps(self.state, indent=1) + "\n")

    def report(self, row: dict[str, Any], *, checkpoint: bool = True, last: bool = False) -> None:
        """``tune.report`` one flat row (and the run directory as checkpoint).

        When Tune stops the trial (a scheduler decision) the report raises ``SystemExit``: it
        propagates, unless this was the ``last`` row of the loop anyway, in which case the loop may
        finish (final genotype, artifacts) and nothing more is reported.
        """
        from ray import tune

        if self.stopped:
            return
        row = {**self.carry, **row, "phase": self.phase, "node_id": self.node_id,
               "mlflow_run_id": (self.tracker.run_id if self.tracker else None) or ""}
        ckpt = tune.Checkpoint.from_directory(str(self.run.resolve())) if checkpoint else None
        try:
            tune.report(row, checkpoint=ckpt)
        except SystemExit:
            self.stopped = True
            if not last:
                raise

    def wants_checkpoint(self, epoch: int, last: int) -> bool:
        every = int(self.spec.get("checkpoint_every", 1))
        return epoch % every == 0 or epoch >= last

    # -- phases --------------------------------------------------------------------------------------
    def run_search(self, *, last_phase: bool = True) -> tuple[Any, dict[str, Any]]:
        from ess.search import SearchConfig, search
        from ess.tracking import arch_weight_rows

        fields = {f.name for f in dataclasses.fields(SearchConfig)}
        values = {**self.spec["search"], **{k: v for k, v in self.variant().items() if k in fields}}
        cfg = config_from_mapping(SearchConfig, values, f"trial {self.trial_name}")
        search_dir = Path(cfg.run_dir)
        tracker = self.tracker
        last: dict[str, Any] = {}

        def on_epoch(rep: EpochReport) -> None:
            tracker.log_metrics(rep.metrics, step=rep.epoch)
            for key, path in rep.artifacts.items():
                tracker.log_artifact(path, "genotypes" if key in ("genotype", "picture") else "arch_weights")
            tracker.log_artifact(search_dir / "arch_weights.json")
            row = {**rep.metrics, "genotype": rep.genotype.to_json(None) if rep.genotype else ""}
            last.clear()
            last.update(row)
            self.report(row, checkpoint=self.wants_checkpoint(rep.epoch, cfg.epochs),
                        last=last_phase and rep.epoch >= cfg.epochs)

        result = search(cfg, resume=(search_dir / "checkpoint.pt").is_file(), on_epoch=on_epoch)
        for name in ("genotype.json", "genotype.png", "genotype.svg", "arch_weights.json", "config.yaml",
                     "metrics.jsonl"):
            tracker.log_artifact(search_dir / name)
        weights = search_dir / "arch_weights.json"
        if weights.exists():
            tracker.log_table(arch_weight_rows(json.loads(weights.read_text())), "arch_weights_table.json")
        tracker.log_artifact(search_dir / "checkpoint.pt", "model")
        tracker.set_tags({"ess.genotype": result.genotype.to_json(None)})
        if not last and result.rows:  # restored after the last epoch: nothing new was reported
            last.update({**result.rows[-1], "genotype": result.genotype.to_json(None)})
        return result, last

    def run_retrain(self, genotype: str, *, prefix: str = "retrain/") -> dict[str, Any]:
        from ess.train import TrainConfig, train

        values = dict(self.spec["train"])
        values["genotype"] = genotype
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        if self.phase == "retrain":  # a retrain-only trial: its variant may set TrainConfig fields (seed ...)
            values.update({k: v for k, v in self.variant().items() if k in fields and k != "genotype"})
        cfg = config_from_mapping(TrainConfig, values, f"trial {self.trial_name}")
        train_dir = Path(cfg.run_dir)
        tracker = self.tracker

        def on_epoch(rep: EpochReport) -> None:
            row = {f"{prefix}{k}": v for k, v in rep.metrics.items()}
            tracker.log_metrics(row, step=rep.epoch)
            self.report(row, checkpoint=self.wants_checkpoint(rep.epoch, cfg.epochs), last=rep.epoch >= cfg.epochs)

        final = train(cfg, resume=(train_dir / "checkpoint.pt").is_file(), on_epoch=on_epoch)
        final_row = {f"{prefix}{k}": v for k, v in final.items()}
        tracker.log_metrics(final_row, step=int(final.get("epoch", cfg.epochs)))
        for name in ("final.json", "config.yaml", "metrics.jsonl", "genotype.json"):
            tracker.log_artifact(train_dir / name, "retrain")
        tracker.log_artifact(train_dir / "best.pt", "model")
        return final_row


def _close_trial(trial: _Trial, err: BaseException | None) -> None:
    """The trial run's final status: stopped by Tune (SystemExit from a report) is not a failure."""
    if err is None or isinstance(err, SystemExit) and err.code in (0, None):
        if trial.stopped:
            trial.tracker.set_tags({"ess.stopped_by_tune": "true"})
        trial.tracker.finish("FINISHED")
    else:
        trial.tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")


def _end_diverged(trial: _Trial, err: DivergenceError) -> None:
    """A trial whose run diverged for good ends here, failed, with the reason in MLflow and in its last row.

    It returns instead of raising: Tune would otherwise restart it from the same checkpoint
    (``max_failures``), where it would diverge again. The row keeps the search metric (as ``inf``
    when no search epoch finished) so schedulers and searchers that require it accept the row, and
    it carries no genotype and no checkpoint.
    """
    reason = str(err).splitlines()[0]
    print(f"trial {trial.trial_name}: {reason}", file=sys.stderr, flush=True)
    trial.tracker.set_tags({"ess.failure": "diverged", "ess.failure_reason": reason[:5000]})
    trial.tracker.finish("FAILED")
    row = {"diverged": 1, "failure": reason}
    if SEARCH_METRIC not in trial.carry and trial.phase != "transfer":
        row[SEARCH_METRIC] = math.inf
    trial.carry.pop("genotype", None)
    trial.report(row, checkpoint=False, last=True)


def _load_genotype_text(text: str):
    from ess.space.genotype import parse_genotype_json

    return parse_genotype_json(text, "trial genotype")


def search_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: an ESS search, then (when ``config['ess']['train']``) a retrain of its genotype.

    ``config['ess']`` holds the static spec (search and train configs, tracking); the rest of the
    config (``variant`` from a grid, or tuned top-level keys from a searcher) overrides SearchConfig
    fields. Each epoch reports one flat row (the search metrics, ``genotype`` as JSON, then
    ``retrain/...`` metrics) and the run directory as the checkpoint.
    """
    from ess.tracking import config_tags, flat_params

    trial = _Trial(config, "search+retrain" if config["ess"].get("train") else "search")
    variant = trial.variant()
    search_values = {**config["ess"]["search"], **{k: v for k, v in variant.items() if k in config["ess"]["search"]}}
    params = {**flat_params(search_values, "search."), **flat_params(config["ess"].get("train") or {}, "retrain.")}
    tags = {**config_tags(search_values), **{f"variant.{k}": v for k, v in variant.items()
                                             if k not in search_values}}
    from ess.supernet import MODES

    mode = MODES.get(str(search_values.get("mode")))
    if mode is not None and not mode.searches_intra:   # its ``steps`` tag is moot: the intra cell is fixed
        tags["ess.fixed_intra"] = search_values.get("intra_genotype")
    trial.open_tracker(variant_label({**search_values, **variant}), tags, params)
    try:
        result, last = trial.run_search(last_phase=not config["ess"].get("train"))
        if config["ess"].get("train") and not trial.stopped:
            trial.carry = dict(last)   # every retrain row repeats the final search row (metric columns line up)
            genotype_file = trial.run / "search" / "genotype.json"
            final = trial.run_retrain(str(genotype_file))
            trial.report({**final, "final": 1})
    except DivergenceError as err:
        _end_diverged(trial, err)
        return
    except BaseException as err:
        _close_trial(trial, err)
        raise
    _close_trial(trial, None)


def retrain_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: retrain one genotype (``variant.genotype_label`` in ``ess.genotypes``)."""
    from ess.tracking import config_tags, flat_params

    trial = _Trial(config, "retrain")
    variant = trial.variant()
    label = str(variant.get("genotype_label"))
    source = (config["ess"].get("genotypes") or {}).get(label)
    if source is None:
        raise ConfigError(f"trial {trial.trial_name}: no genotype {label!r} in the job spec")
    info = config["ess"].get("genotype_info", {}).get(label, {})
    if source.lstrip().startswith("{"):
        genotype_file = trial.run / "genotype.json"
        if not genotype_file.exists():
            atomic_write_text(genotype_file, _load_genotype_text(source).to_json() + "\n")
        genotype = str(genotype_file)
    else:
        genotype = source   # a built-in name
    train_values = {**config["ess"]["train"], "genotype": genotype}
    params = flat_params(train_values, "retrain.")
    tags = {**config_tags({k: v for k, v in train_values.items() if k != "genotype"}), "genotype": label,
            **{f"source.{k}": v for k, v in info.items()}}
    trial.open_tracker(variant_label(variant), tags, params)
    try:
        trial.carry = {"genotype": _load_genotype_text(source).to_json(None) if source.lstrip().startswith("{")
                       else source, "genotype_label": label}
        final = trial.run_retrain(genotype)
        trial.report({**final, "final": 1})
    except DivergenceError as err:
        _end_diverged(trial, err)
        return
    except BaseException as err:
        _close_trial(trial, err)
        raise
    _close_trial(trial, None)


def transfer_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: train a tagger with one cell on one task and seed (:func:`ess.transfer.transfer`).

    ``variant`` holds ``task``, ``cell_label`` (a key of ``ess.cells``: ``lstm``, a built-in name or
    genotype JSON text) and ``seed``. Each epoch reports the epoch row (``train/loss``, ``dev/f1`` ...)
    and the run directory as checkpoint; the last row adds the best-dev model's ``test/...`` scores.
    """
    from ess.tracking import flat_params, numeric_metrics
    from ess.transfer import TransferConfig, transfer

    trial = _Trial(config, "transfer")   # restores the latest checkpoint into the run directory first
    variant = trial.variant()
    label = str(variant.get("cell_label"))
    source = (config["ess"].get("cells") or {}).get(label)
    if source is None:
        raise ConfigError(f"trial {trial.trial_name}: no cell {label!r} in the job spec")
    if source.lstrip().startswith("{"):
        genotype_file = trial.run / "cell_genotype.json"
        if not genotype_file.exists():
            atomic_write_text(genotype_file, _load_genotype_text(source).to_json() + "\n")
        cell = str(genotype_file)
    else:
        cell = source   # lstm or a built-in name
    fields = {f.name for f in dataclasses.fields(TransferConfig)}
    values = {**config["ess"]["transfer"], **{k: v for k, v in variant.items() if k in fields}, "cell": cell}
    cfg = config_from_mapping(TransferConfig, values, f"trial {trial.trial_name}")
    run_dir = Path(cfg.run_dir)
    params = flat_params({k: v for k, v in values.items() if k != "cell"}, "transfer.")
    tags = {"task": cfg.task, "cell": label, "seed": str(cfg.seed),
            **{f"source.{k}": v for k, v in (config["ess"].get("cell_info", {}).get(label) or {}).items()}}
    trial.open_tracker(variant_label(variant), tags, params)
    tracker = trial.tracker
    try:
        trial.carry = {"task": cfg.task, "cell": label, "seed": cfg.seed}

        def on_epoch(rep: EpochReport) -> None:
            tracker.log_metrics(rep.metrics, step=rep.epoch)
            trial.report(dict(rep.metrics), checkpoint=trial.wants_checkpoint(rep.epoch, cfg.epochs),
                         last=rep.epoch >= cfg.epochs)

        final = transfer(cfg, resume=(run_dir / "checkpoint.pt").is_file(), on_epoch=on_epoch)
        final_row = {k: v for k, v in numeric_metrics(final).items() if k != "seed"}
        tracker.log_metrics(final_row, step=int(final.get("epoch", cfg.epochs)))
        for name in ("final.json", "config.yaml", "metrics.jsonl", "test_report.txt", "genotype.json"):
            tracker.log_artifact(run_dir / name, "transfer")
        tracker.log_artifact(run_dir / "predictions" / "test.txt", "transfer/predictions")
        tracker.log_artifact(run_dir / "best.pt", "model")
        trial.report({**final_row, "final": 1})
    except DivergenceError as err:
        _end_diverged(trial, err)
        return
    except BaseException as err:
        _close_trial(trial, err)
        raise
    _close_trial(trial, None)


# ==================================================================================================
# Driver side: Ray session, experiment, Tuner


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@contextmanager
def ray_session(job: JobConfig):
    """Connect to ``job.address`` or start a local Ray; shut down only what this call started."""
    import ray

    # Tune warns on every forced experiment snapshot when few checkpoints are kept: noise for short epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        yield
        return
    if job.address:
        ray.init(address=job.address, log_to_driver=True)
    else:
        # Workers inherit the environment: make this checkout importable even when not pip-installed.
        root = str(_repo_root())
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])
        ray.init(num_cpus=job.num_cpus or None, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def _reachable_uri(uri: str | None, cluster: bool = False) -> str | None:
    """A ``localhost`` MLflow server URI as trials on other nodes must see it: the driver node's IP.

    Rewritten on a cluster (``--address``: workers may join later, autoscaled) or when Ray already
    has several nodes; a purely local run keeps ``127.0.0.1`` (a server bound there is not
    reachable on the external address).
    """
    if uri is None or not uri.startswith(("http://", "https://")):
        return uri
    import ray

    try:
        multi = len([n for n in ray.nodes() if n.get("Alive")]) > 1
    except Exception:
        multi = False
    if not (cluster or multi):
        return uri
    ip = ray.util.get_node_ip_address()
    for host in ("127.0.0.1", "localhost", "0.0.0.0"):
        uri = uri.replace(f"://{host}:", f"://{ip}:").replace(f"://{host}/", f"://{ip}/")
    return uri


class TrialRunStatus(Callback):
    """A Tune callback closing a trial's MLflow run when Tune ends the trial (driver side).

    Needed for trials that never return normally: stopped early by ASHA, or failed for good after
    ``max_failures`` restarts (a killed worker cannot close its own run). Picklable: Tune keeps it
    in ``tuner.pkl`` for ``Tuner.restore``.
    """

    def __init__(self, uri: str | None):
        self.uri = uri

    def _close(self, trial: Any, status: str) -> None:
        run_id = (getattr(trial, "last_result", None) or {}).get("mlflow_run_id")
        if not self.uri or not run_id:
            return
        try:
            from ess.tracking import close_run

            close_run(self.uri, run_id, status)   # quiet while the server is down: the trial's spool has it
        except Exception as err:  # tracking never stops the experiment
            print(f"warning: could not close MLflow run {run_id}: {err}", file=sys.stderr)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")


def check_resources(job: JobConfig) -> None:
    """Fail early (one line) when a local Ray can never place a trial (before anything is written)."""
    import ray

    if job.address:
        return  # an autoscaling cluster may add the nodes
    have = ray.cluster_resources()
    if job.gpus_per_trial > have.get("GPU", 0):
        raise ConfigError(f"gpus_per_trial: {job.gpus_per_trial} asked for but the local Ray has "
                          f"{have.get('GPU', 0):g} GPUs (use --gpus-per-trial 0 or --address a GPU cluster)")
    if job.cpus_per_trial > have.get("CPU", 0):
        raise ConfigError(f"cpus_per_trial: {job.cpus_per_trial} asked for but the local Ray has "
                          f"{have.get('CPU', 0):g} CPUs")


class Experiment:
    """One job run: experiment directory, saved config, MLflow parent run, Tune stages."""

    def __init__(self, job_kind: str, job: JobConfig, *, resume: bool = False):
        from ess.tracking import flat_params, resolve_tracking_uri, start_parent_run

        self.kind, self.job, self.resume = job_kind, job, resume
        self.storage = _storage_root(job.storage_path)
        self.root = _join(self.storage, job.name)
        saved = _join(self.root, "job.yaml")
        if resume and not _exists(saved):
            raise ConfigError(f"{saved}: no experiment {job.name!r} to resume")
        if not resume and _exists(saved):
            raise ConfigError(f"{self.root}: experiment {job.name!r} exists; pass --resume to continue it "
                              "or choose another --name")
        if not resume:
            _write_text(saved, yaml.safe_dump({"job": job_kind, **config_to_dict(job)}, sort_keys=False))
        self.data_dir = str(Path(job.data_dir).expanduser().resolve()) if job.data_dir else \
            str(_resolve_data_dir())
        self.uri = resolve_tracking_uri(job.tracking_uri, job.storage_path if not _is_uri(self.storage) else
                                        self.storage)
        self.mlflow_experiment = job.experiment or f"ess-{job_kind}"
        # records the MLflow server could not take wait here (python -m ess.tracking sync --spool ...)
        self.spool_dir = None if _is_uri(self.root) else str(Path(self.root) / "mlflow-spool")
        self.parent = start_parent_run(
            self.uri, self.mlflow_experiment, job.name, resume=resume, spool_dir=self.spool_dir,
            tags={"job": job_kind, "dataset": job.dataset, "storage": self.root,
                  "modes": ",".join(job.modes), "seeds": ",".join(map(str, job.seeds))},
            params=flat_params(config_to_dict(job)))
        if not _is_uri(saved):
            self.parent.log_artifact(saved)
        self.experiment_id = self.parent.experiment_id   # None while the server is unreachable

    def tracking_spec(self) -> dict[str, Any]:
        return {"uri": _reachable_uri(self.uri, cluster=bool(self.job.address)), "experiment_id": self.experiment_id,
                "parent_run_id": self.parent.run_id, "system_metrics": self.job.system_metrics,
                "system_metrics_interval": self.job.system_metrics_interval,
                "experiment_name": self.mlflow_experiment, "spool_dir": self.spool_dir}

    def spec(self, **extra: Any) -> dict[str, Any]:
        return {"job": self.kind, "experiment_name": self.job.name, "tracking": self.tracking_spec(),
                "checkpoint_every": self.job.checkpoint_every, **extra}

    def resources(self) -> dict[str, float]:
        res = {"cpu": self.job.cpus_per_trial}
        if self.job.gpus_per_trial:
            res["gpu"] = self.job.gpus_per_trial
        return res

    def tune(self, stage: str, trainable: Callable, param_space: dict[str, Any], *, expected: int,
             tune_config: dict[str, Any] | None = None, callbacks: Sequence[Any] = ()) -> Any:
        """Run (or, resuming, restore and finish) the Tune experiment ``<root>/<stage>``."""
        from ray import tune

        path = _join(self.root, stage)
        wrapped = tune.with_resources(trainable, self.resources())
        if self.resume and tune.Tuner.can_restore(path):
            print(f"restoring {path}", file=sys.stderr, flush=True)
            tuner = tune.Tuner.restore(path, trainable=wrapped, resume_errored=True)
        else:
            tcfg = {"max_concurrent_trials": self.job.max_concurrent_trials or None,
                    "trial_name_creator": trial_name, "trial_dirname_creator": trial_name, **(tune_config or {})}
            tuner = tune.Tuner(
                wrapped, param_space=param_space, tune_config=tune.TuneConfig(**tcfg),
                run_config=tune.RunConfig(
                    name=stage, storage_path=self.root, verbose=self.job.verbose,
                    callbacks=[TrialRunStatus(self.uri), *callbacks],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=self.job.keep_checkpoints),
                    failure_config=tune.FailureConfig(max_failures=self.job.max_failures)))
        results = tuner.fit()
        unfinished = _unfinished_trials(path)
        done = len(results) - unfinished
        if unfinished or len(results) < expected:
            from ess.tracking import close_open_children

            close_open_children(self.uri, self.mlflow_experiment, self.parent.run_id, "KILLED")
            self.parent.finish("KILLED")
            raise ExperimentInterrupted(
                f"{path}: stopped with {done} of {expected} trials finished; continue with --resume --name "
                f"{self.job.name} --storage-path {self.job.storage_path}")
        return results

    def finish(self, summary: dict[str, Any], files: Mapping[str, str] = ()) -> dict[str, Any]:
        """Write and log ``summary.json`` (and extra files), close the parent run."""
        summary = {"job": self.kind, "name": self.job.name, "experiment_dir": self.root,
                   "tracking_uri": self.uri, "mlflow_experiment": self.mlflow_experiment,
                   "parent_run_id": self.parent.run_id, **summary}
        path = _write_text(_join(self.root, "summary.json"), json.dumps(summary, indent=2, default=str) + "\n")
        if not _is_uri(path):
            self.parent.log_artifact(path)
            for name, text in dict(files).items():
                self.parent.log_artifact(_write_text(_join(self.root, name), text))
        metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.parent.log_metrics(metrics)
        self.parent.finish("FINISHED")
        return summary


def _unfinished_trials(path: str) -> int:
    """Trials the saved experiment state does not hold as finished (TERMINATED or ERROR).

    After Ctrl+C, ``Tuner.fit()`` returns normally and its ResultGrid shows the stopped trials as
    TERMINATED; the state it saved for ``Tuner.restore`` still says RUNNING/PENDING/PAUSED. That
    saved state decides whether the experiment is complete.
    """
    if _is_uri(path):
        import pyarrow.fs

        fs, p = _fs(path)
        infos = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(p)) if i.base_name.startswith("experiment_state")]
        if not infos:
            return 0
        newest = max(infos, key=lambda i: i.base_name)   # Tune picks the newest by the time stamp in the name
        with fs.open_input_stream(newest.path) as f:
            state = json.loads(f.read().decode("utf-8"))
    else:
        files = sorted(Path(path).glob("experiment_state*.json"), key=lambda f: f.name)
        if not files:
            return 0
        state = json.loads(files[-1].read_text(encoding="utf-8"))
    unfinished = 0
    for item in state.get("trial_data", []):
        text = item[0] if isinstance(item, (list, tuple)) else item
        try:
            status = json.loads(text).get("status") if isinstance(text, str) else None
        except json.JSONDecodeError:
            status = None
        if status not in ("TERMINATED", "ERROR"):
            unfinished += 1
    return unfinished


def _resolve_data_dir() -> Path:
    from ess.data import resolve_data_dir

    return resolve_data_dir(None).resolve()


def _results_rows(results: Any) -> list[dict[str, Any]]:
    """One dict per trial: its config's variant, last metrics, checkpoint and error."""
    rows = []
    for r in results:
        config = r.config or {}
        variant = {**(config.get("variant") or {}), **{k: v for k, v in config.items() if k not in ("ess", "variant")}}
        metrics = dict(r.metrics or {})
        rows.append({"variant": variant, "label": variant_label(variant), "metrics": metrics,
                     "node_id": metrics.get("node_id"),
                     "checkpoint": r.checkpoint.path if r.checkpoint is not None else None,
                     "trial_dir": r.path, "error": _trial_error(r.error, metrics)})
    return rows


def _trial_error(error: BaseException | None, metrics: Mapping[str, Any]) -> str | None:
    """Why a trial failed (an exception, or a divergence it reported), in one line; None when it did not."""
    if error is not None:
        return str(error).splitlines()[0][:300]
    if metrics.get("diverged"):
        return str(metrics.get("failure") or "diverged")[:300]
    return None


def _finite(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.inf
    return v if math.isfinite(v) else math.inf


def _artifact_files(checkpoint: str | None, sub: str) -> dict[str, str]:
    if checkpoint is None:
        return {}
    base = _join(checkpoint, sub)
    names = ("genotype.json", "genotype.png", "genotype.svg", "arch_weights.json", "checkpoint.pt", "best.pt",
             "final.json")
    found = {n: _join(base, n) for n in names if _exists(_join(base, n))}
    if "genotype.png" not in found and not _is_uri(base):   # the checkpoint of the last epoch holds its picture
        pictures = sorted(Path(base, "genotypes").glob("epoch_*.png"))
        if pictures:
            found["genotype.png"] = str(pictures[-1])
    return found


# ==================================================================================================
# The jobs


def search_stage(exp: Experiment, job: JobConfig, stage: str, variants: list[dict[str, Any]], *,
                  train: dict[str, Any] | None, callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    from ray import tune

    spec = exp.spec(search=search_config_dict(job, exp.data_dir), train=train)
    results = exp.tune(stage, search_trainable, {"ess": spec, "variant": tune.grid_search(variants)},
                       expected=len(variants), callbacks=callbacks)
    return _results_rows(results)


def retrain_stage(exp: Experiment, job: JobConfig, genotypes: dict[str, str], info: dict[str, dict[str, Any]],
                   *, callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    from ray import tune

    spec = exp.spec(train=train_config_dict(job, exp.data_dir), genotypes=genotypes, genotype_info=info)
    variants = [{"genotype_label": label} for label in genotypes]
    results = exp.tune("retrain", retrain_trainable, {"ess": spec, "variant": tune.grid_search(variants)},
                       expected=len(variants), callbacks=callbacks)
    return _results_rows(results)


def _failed(rows: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    ok = [r for r in rows if r["error"] is None]
    if not ok:
        first = next((r["error"] for r in rows if r["error"]), "no trial reported")
        raise ESSError(f"all {len(rows)} {what} trials failed; first error: {first}")
    return ok


def run_joint_search(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Joint ESS search over ``job.seeds`` (and node counts), then a short retrain of the ``top_k`` best."""
    ensure_corpus(job.dataset, job.data_dir or None)
    with ray_session(job):
        check_resources(job)
        exp = Experiment("joint_search", job, resume=resume)
        try:
            rows = search_stage(exp, job, "search", search_variants(job), train=None, callbacks=callbacks)
            ok = sorted(_failed(rows, "search"), key=lambda r: _finite(r["metrics"].get(SEARCH_METRIC)))
            searched = [{"label": r["label"], **r["variant"], "valid_ppl": r["metrics"].get(SEARCH_METRIC),
                         "node_id": r["node_id"], "epochs": r["metrics"].get("epoch"),
                         "genotype": r["metrics"].get("genotype"), "checkpoint": r["checkpoint"],
                         "mlflow_run_id": r["metrics"].get("mlflow_run_id"),
                         "artifacts": _artifact_files(r["checkpoint"], "search")} for r in ok]
            best, retrained = searched[0], []
            if job.retrain:
                chosen = searched[:job.top_k]
                genotypes = {c["label"]: c["genotype"] for c in chosen}
                info = {c["label"]: {"seed": c.get("seed"), "mode": c.get("mode"), "search_valid_ppl":
                                     c["valid_ppl"], "search_run_id": c["mlflow_run_id"]} for c in chosen}
                rrows = _failed(retrain_stage(exp, job, genotypes, info, callbacks=callbacks), "retrain")
                for r in sorted(rrows, key=lambda r: _finite(r["metrics"].get(RETRAIN_METRIC))):
                    label = r["variant"]["genotype_label"]
                    retrained.append({"label": label, "retrain_valid_ppl": r["metrics"].get(RETRAIN_METRIC),
                                      "retrain_test_ppl": r["metrics"].get("retrain/test/ppl"),
                                      "checkpoint": r["checkpoint"],
                                      "mlflow_run_id": r["metrics"].get("mlflow_run_id"),
                                      "artifacts": _artifact_files(r["checkpoint"], "retrain")})
                best = {**next(c for c in searched if c["label"] == retrained[0]["label"]), **retrained[0],
                        "artifacts": {**next(c for c in searched if c["label"] == retrained[0]["label"])["artifacts"],
                                      **{f"retrain/{k}": v for k, v in retrained[0]["artifacts"].items()}}}
        except ExperimentInterrupted:
            raise
        except BaseException:
            exp.parent.finish("FAILED")
            raise
        summary = {"best": best, "searched": searched, "retrained": retrained,
                   "best_valid_ppl": _finite(best.get("retrain_valid_ppl", best["valid_ppl"]))}
        files = {"best_genotype.json": json.dumps(json.loads(best["genotype"]), indent=2) + "\n"}
        exp.parent.set_tags({"ess.genotype": best["genotype"], "best_trial": best["label"]})
        return exp.finish(summary, files)


def run_ablation(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """mode x seed x node counts; each trial a full search, then (``job.retrain``) a retrain of its genotype."""
    import pandas as pd

    ensure_corpus(job.dataset, job.data_dir or None)
    with ray_session(job):
        check_resources(job)
        exp = Experiment("ablation", job, resume=resume)
        train = train_config_dict(job, exp.data_dir) if job.retrain else None
        try:
            rows = search_stage(exp, job, "ablation", search_variants(job), train=train, callbacks=callbacks)
        except ExperimentInterrupted:
            raise
        except BaseException:
            exp.parent.finish("FAILED")
            raise
        table = []
        for r in rows:
            m = r["metrics"]
            table.append({**{k: r["variant"].get(k) for k in ("mode", "seed", "steps", "n_inter", "m")},
                          "search_valid_ppl": m.get(SEARCH_METRIC), "param_free_share":
                          m.get("genotype/param_free_share"), "retrain_valid_ppl": m.get(RETRAIN_METRIC),
                          "retrain_test_ppl": m.get("retrain/test/ppl"), "error": r["error"],
                          "mlflow_run_id": m.get("mlflow_run_id"), "checkpoint": r["checkpoint"],
                          "genotype": m.get("genotype")})
        frame = pd.DataFrame(table)
        value = "retrain_valid_ppl" if job.retrain else "search_valid_ppl"
        ok = frame[frame["error"].isna()]
        grouped = (ok.groupby(["mode", "steps", "n_inter", "m"])[value].agg(["mean", "std", "count"]).reset_index()
                   if len(ok) else pd.DataFrame())
        print(f"\nablation ({value}, by mode and node counts):\n" + (grouped.to_string(index=False) if len(grouped)
                                                                     else "(no finished trials)"), flush=True)
        summary = {"trials": table, "by_mode": grouped.to_dict(orient="records"), "value": value,
                   "failed_trials": int(frame["error"].notna().sum())}
        return exp.finish(summary, {"ablation.csv": frame.to_csv(index=False),
                                    "ablation_summary.csv": grouped.to_csv(index=False)})


def _space(job: JobConfig) -> dict[str, Any]:
    from ray import tune

    from ess.search import SearchConfig
    from ess.supernet import MODES

    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    out = {}
    searched = MODES[job.modes[0]]   # hparam_search runs the first mode
    default = {k: v for k, v in DEFAULT_SPACE.items()   # no knobs the mode fixes (m, n_inter in intra mode)
               if (searched.searches_inter or k not in INTER_KNOBS)
               and (searched.searches_intra or k not in INTRA_KNOBS)}
    for name, spec in (job.space or default).items():
        if name not in fields:
            raise ConfigError(f"space: {name!r} is not a SearchConfig field")
        if not isinstance(spec, (list, tuple)) or not spec:
            raise ConfigError(f"space: {name}: expected [distribution, args...], got {spec!r}")
        kind, args = spec[0], list(spec[1:])
        try:
            if kind == "choice":
                out[name] = tune.choice(list(args[0]))
            elif kind in ("uniform", "loguniform", "randint", "quniform"):
                out[name] = getattr(tune, kind)(*args)
            else:
                raise ConfigError(f"space: {name}: unknown distribution {kind!r} "
                                  "(choice, uniform, loguniform, randint, quniform)")
        except (TypeError, ValueError, IndexError) as err:
            raise ConfigError(f"space: {name}: bad arguments {args!r} ({err})") from None
    return out


def optuna_storage_url(exp_root: str, job: JobConfig) -> str:
    if job.optuna_storage:
        url = job.optuna_storage
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = f"sqlite:///{Path(url[len('sqlite:///'):]).resolve()}"
        return url
    if _is_uri(exp_root):
        raise ConfigError("optuna_storage: the storage is not a local path; give --optuna-storage (an RDB URL)")
    return f"sqlite:///{Path(exp_root) / 'optuna.db'}"


def run_hparam_search(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Optuna (TPE, study in an RDB so optuna-dashboard can watch it) + ASHA over search hyperparameters."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    ensure_corpus(job.dataset, job.data_dir or None)
    with ray_session(job):
        check_resources(job)
        exp = Experiment("hparam_search", job, resume=resume)
        storage_url = optuna_storage_url(exp.root, job)
        study_name = job.study_name or job.name
        search_spec = search_config_dict(job, exp.data_dir)
        variant = search_variants(job)[0]   # one mode, seed and node counts; the space varies the rest
        space = _space(job)
        searcher = OptunaSearch(metric=SEARCH_METRIC, mode="min", seed=variant["seed"], study_name=study_name,
                                storage=optuna.storages.RDBStorage(storage_url),
                                sampler=optuna.samplers.TPESampler(seed=variant["seed"]))
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=search_spec["epochs"],
                                  grace_period=min(job.grace_period, search_spec["epochs"]),
                                  reduction_factor=job.reduction_factor)
        fixed = {k: v for k, v in variant.items() if k not in space}
        spec = exp.spec(search={**search_spec, **fixed}, train=None)
        try:
            results = exp.tune("hparam", search_trainable, {"ess": spec, **space}, expected=job.num_samples,
                               tune_config=dict(search_alg=searcher, scheduler=scheduler, metric=SEARCH_METRIC,
                                                mode="min", num_samples=job.num_samples),
                               callbacks=callbacks)
        except ExperimentInterrupted:
            raise
        except BaseException:
            exp.parent.finish("FAILED")
            raise
        rows = _failed(_results_rows(results), "hparam")
        best = min(rows, key=lambda r: _finite(r["metrics"].get(SEARCH_METRIC)))
        study = optuna.load_study(study_name=study_name, storage=storage_url)
        summary = {"best_config": {k: best["variant"].get(k) for k in space},
                   "best_valid_ppl": _finite(best["metrics"].get(SEARCH_METRIC)),
                   "best_genotype": best["metrics"].get("genotype"), "best_checkpoint": best["checkpoint"],
                   "trials": len(results), "optuna_storage": storage_url, "study_name": study_name,
                   "optuna_trials": len(study.trials),
                   "dashboard": f"optuna-dashboard {storage_url}"}
        exp.parent.log_params({f"best.{k}": v for k, v in summary["best_config"].items()})
        return exp.finish(summary)


def _retrain_sources(job: JobConfig, exp: Experiment) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """``{label: genotype (built-in name or JSON text)}`` from ``job.genotypes`` or an MLflow experiment."""
    from ess.space.genotype import BUILTINS, load_genotype

    genotypes: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for item in job.genotypes:
        if item in BUILTINS:
            genotypes[item] = item
            info[item] = {"source": "built-in"}
        else:
            path = Path(item).expanduser()
            genotype = load_genotype(path)   # GenotypeError names the file
            label = path.stem
            while label in genotypes:
                label += "_"
            genotypes[label] = genotype.to_json(None)
            info[label] = {"source": str(path.resolve())}
    if job.source_experiment:
        from ess.tracking import best_runs, download_artifact

        if exp.uri is None:
            raise ConfigError("source_experiment: tracking is off; give --tracking-uri")
        for run in best_runs(exp.uri, job.source_experiment, metric=SEARCH_METRIC, k=job.top_k,
                             phases=("search", "search+retrain"), parent_name=job.source_run or None):
            label = run.info.run_name or run.info.run_id[:8]
            while label in genotypes:
                label += "_"
            text = run.data.tags.get("ess.genotype")
            if not text:
                local = download_artifact(exp.uri, run.info.run_id, "genotype.json",
                                          Path(exp.root) / "sources" / label)
                text = load_genotype(local).to_json(None)
            genotypes[label] = text
            info[label] = {"source": f"mlflow:{run.info.run_id}",
                           "search_valid_ppl": run.data.metrics.get(SEARCH_METRIC)}
    if not genotypes:
        raise ConfigError("genotypes: nothing to retrain; give --genotypes NAME_OR_FILE ... or --source-experiment")
    return genotypes, info


def run_retrain(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Retrain given genotypes (files, built-ins, or the best runs of an MLflow experiment)."""
    ensure_corpus(job.dataset, job.data_dir or None)
    with ray_session(job):
        check_resources(job)
        exp = Experiment("retrain", job, resume=resume)
        try:
            genotypes, info = _retrain_sources(job, exp)
            rows = _failed(retrain_stage(exp, job, genotypes, info, callbacks=callbacks), "retrain")
        except ExperimentInterrupted:
            raise
        except BaseException:
            exp.parent.finish("FAILED")
            raise
        out = sorted(({"label": r["variant"]["genotype_label"],
                       "retrain_valid_ppl": r["metrics"].get(RETRAIN_METRIC),
                       "retrain_test_ppl": r["metrics"].get("retrain/test/ppl"), "checkpoint": r["checkpoint"],
                       "mlflow_run_id": r["metrics"].get("mlflow_run_id"),
                       "genotype": genotypes[r["variant"]["genotype_label"]],
                       "artifacts": _artifact_files(r["checkpoint"], "retrain")} for r in rows),
                     key=lambda r: _finite(r["retrain_valid_ppl"]))
        return exp.finish({"best": out[0], "retrained": out, "best_valid_ppl": _finite(out[0]["retrain_valid_ppl"])})


def _transfer_sources(job: JobConfig) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """``{label: lstm | built-in name | genotype JSON text}`` from ``job.cells``."""
    from ess.space.genotype import BUILTINS, load_genotype

    cells: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for item in job.cells:
        if item.lower() == "lstm" or item in BUILTINS:
            label, text, source = ("lstm" if item.lower() == "lstm" else item), item, "built-in"
        else:
            path = Path(item).expanduser()
            text, label, source = load_genotype(path).to_json(None), path.stem, str(path.resolve())
        while label in cells:
            label += "_"
        cells[label] = text
        info[label] = {"source": source}
    return cells, info


def ensure_tasks(tasks: Sequence[str], data_dir: str | None = None) -> None:
    """One-line DataError (before Ray starts) when a tagging task's files are missing."""
    from ess.tagging.conll import get_task, task_paths

    for task in tasks:
        get_task(task)
        missing = [str(p) for p in task_paths(task, data_dir).values() if not p.is_file()]
        if missing:
            raise DataError(f"task {task!r}: missing {', '.join(missing)} (set ESS_DATA_DIR / --data-dir)")


def run_transfer(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Cells x seeds (x tasks) on the tagging transfer task; mean/std dev and test F1 per cell."""
    import pandas as pd
    from ray import tune

    ensure_tasks(job.tasks, job.data_dir or None)
    cells, info = _transfer_sources(job)
    with ray_session(job):
        check_resources(job)
        exp = Experiment("transfer", job, resume=resume)
        exp.parent.set_tags({"cells": ",".join(cells), "tasks": ",".join(job.tasks)})
        variants = transfer_variants(job, list(cells))
        spec = exp.spec(transfer=transfer_config_dict(job, exp.data_dir), cells=cells, cell_info=info)
        try:
            results = exp.tune("transfer", transfer_trainable, {"ess": spec, "variant": tune.grid_search(variants)},
                               expected=len(variants), callbacks=callbacks)
            rows = _failed(_results_rows(results), "transfer")
        except ExperimentInterrupted:
            raise
        except BaseException:
            exp.parent.finish("FAILED")
            raise
        table = [{"task": r["variant"].get("task"), "cell": r["variant"].get("cell_label"),
                  "seed": r["variant"].get("seed"), "dev_f1": r["metrics"].get("dev/f1"),
                  "test_f1": r["metrics"].get("test/f1"), "best_epoch": r["metrics"].get("best_epoch"),
                  "params": r["metrics"].get("params"), "mlflow_run_id": r["metrics"].get("mlflow_run_id"),
                  "checkpoint": r["checkpoint"]} for r in rows]
        frame = pd.DataFrame(table)
        grouped = (frame.groupby(["task", "cell"])[["dev_f1", "test_f1"]].agg(["mean", "std", "count"]))
        grouped.columns = [f"{a}_{b}" for a, b in grouped.columns]
        grouped = grouped.reset_index().sort_values(["task", "dev_f1_mean"], ascending=[True, False])
        print("\ntransfer (span F1 of the best-dev model, by task and cell, over seeds):\n"
              + grouped.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
        by_cell = grouped.to_dict(orient="records")
        best = by_cell[0]
        exp.parent.set_tags({"best_cell": str(best["cell"])})
        summary = {"trials": table, "by_cell": by_cell, "best_cell": best["cell"],
                   "best_dev_f1_mean": float(best["dev_f1_mean"]), "failed_trials": len(results) - len(rows)}
        return exp.finish(summary, {"transfer.csv": frame.to_csv(index=False),
                                    "transfer_summary.csv": grouped.to_csv(index=False)})


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "joint_search": run_joint_search, "ablation": run_ablation, "hparam_search": run_hparam_search,
    "retrain": run_retrain, "transfer": run_transfer,
}


# ==================================================================================================
# Console output and the job entry point


def _describe(genotype_json: str | None) -> str:
    if not genotype_json:
        return "(none)"
    if not genotype_json.lstrip().startswith("{"):
        return genotype_json
    try:
        return _load_genotype_text(genotype_json).describe()
    except ESSError:
        return genotype_json


def print_summary(summary: Mapping[str, Any], out=None) -> None:
    """The closing lines of a job: best genotype, where its artifacts are, how to open MLflow."""
    from ess.tracking import ui_hint

    out = out or sys.stdout
    w = lambda s="": print(s, file=out)  # noqa: E731
    kind = summary["job"]
    w(f"\n== {kind} {summary['name']} finished ==")
    best = summary.get("best")
    if kind == "ablation":
        w(f"trials: {len(summary['trials'])} ({summary['failed_trials']} failed); table: "
          f"{summary['experiment_dir']}/ablation.csv")
    elif kind == "transfer":
        w(f"trials: {len(summary['trials'])} ({summary['failed_trials']} failed); best cell by mean dev F1: "
          f"{summary['best_cell']} ({summary['best_dev_f1_mean']:.4f}); table: "
          f"{summary['experiment_dir']}/transfer_summary.csv")
    elif kind == "hparam_search":
        w(f"best config: {json.dumps(summary['best_config'])}  valid ppl {summary['best_valid_ppl']:.2f}")
        w(f"best genotype: {_describe(summary.get('best_genotype'))}")
        w(f"best checkpoint: {summary.get('best_checkpoint')}")
        w(f"Optuna study {summary['study_name']!r} ({summary['optuna_trials']} trials): {summary['dashboard']}")
    elif best:
        w(f"best genotype: {best['label']}")
        w("  " + _describe(best.get("genotype")).replace("\n", "\n  "))
        if best.get("genotype", "").lstrip().startswith("{"):
            w("  " + json.dumps(json.loads(best["genotype"])))
        ppl = [f"search valid ppl {best['valid_ppl']:.2f}" if best.get("valid_ppl") is not None else None,
               f"retrain valid ppl {best['retrain_valid_ppl']:.2f}" if best.get("retrain_valid_ppl") else None,
               f"retrain test ppl {best['retrain_test_ppl']:.2f}" if best.get("retrain_test_ppl") else None]
        w("  " + ", ".join(p for p in ppl if p))
        w(f"artifacts: {best.get('checkpoint')}")
        for name, path in (best.get("artifacts") or {}).items():
            w(f"  {name}: {path}")
        if kind == "joint_search":
            w(f"  best_genotype.json: {summary['experiment_dir']}/best_genotype.json")
    w(f"experiment: {summary['experiment_dir']} (summary.json, job.yaml)")
    if summary.get("tracking_uri"):
        w(f"MLflow: experiment {summary['mlflow_experiment']!r}, parent run {summary['parent_run_id']}")
    w(ui_hint(summary.get("tracking_uri")))


def job_main(job: str, argv: list[str] | None = None, *, description: str | None = None) -> int:
    """What each ``tune_jobs/<job>.py`` runs: parse, run, print; an ESSError is one line (run_main)."""
    from ess.cli import run_main

    @run_main
    def _main(argv: list[str] | None) -> int:
        cfg, args = parse_job_args(job, argv, description=description)
        start = time.perf_counter()
        print(f"{job}: experiment {cfg.name!r} in {_join(_storage_root(cfg.storage_path), cfg.name)}"
              f"{' (resuming)' if args.resume else ''}", flush=True)
        try:
            summary = RUNNERS[job](cfg, resume=args.resume)
        except ExperimentInterrupted as err:
            print(f"interrupted: {err}", file=sys.stderr, flush=True)
            return 130
        print_summary(summary)
        print(f"wall time: {time.perf_counter() - start:.1f} s", flush=True)
        return 0

    return _main(argv)


# ==================================================================================================
# Overhead benchmark: one search epoch through Tune vs directly (python -m ess.tune overhead)


def _timed_trainable(config: dict[str, Any]) -> None:
    """Run the search trainable, reporting the seconds from trainable entry to the end of epoch 1."""
    from ray import tune

    start = time.perf_counter()
    original = tune.report

    def report(metrics, *, checkpoint=None):
        metrics = {**metrics, "bench/seconds_to_epoch": time.perf_counter() - start}
        original(metrics, checkpoint=checkpoint)

    tune.report = report
    try:
        search_trainable(config)
    finally:
        tune.report = original


def measure_overhead(search: Mapping[str, Any], *, repeats: int = 1, tracking_uri: str | None = None,
                     workdir: str | os.PathLike = "runs/bench-overhead") -> dict[str, Any]:
    """One search epoch called directly vs the same epoch as a Tune trial, in the same process run.

    ``direct``: ``search()`` from call to end of epoch 1 (data, model, epoch, eval, checkpoint).
    ``tune_in_trial``: the same, measured inside the trial (adds checkpoint upload and tracking).
    ``tune_fit``: ``Tuner.fit()`` wall time (adds actor start-up, imports, scheduling, teardown).
    """
    import ray
    from ray import tune

    from ess.search import SearchConfig
    from ess.search import search as run_search

    workdir = Path(workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    values = {**search, "epochs": 1, "progress": False, "threads": int(search.get("threads", 1) or 1)}
    cfg = config_from_mapping(SearchConfig, values, "benchmark")
    out: dict[str, list[float]] = {"direct": [], "tune_in_trial": [], "tune_fit": []}
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, cfg.threads), include_dashboard=False, log_to_driver=False)
    try:
        for i in range(repeats):
            start = time.perf_counter()
            run_search(dataclasses.replace(cfg, run_dir=str(workdir / f"direct{i}")))
            out["direct"].append(time.perf_counter() - start)
            spec = {"job": "bench", "experiment_name": "bench", "checkpoint_every": 1,
                    "search": {**config_to_dict(cfg), "run_dir": f"{RUN_DIR}/search"}, "train": None,
                    "tracking": {"uri": tracking_uri, "experiment_id": None, "parent_run_id": None,
                                 "system_metrics": tracking_uri is not None, "system_metrics_interval": 10.0}}
            if tracking_uri is not None:
                from ess.tracking import get_or_create_experiment

                spec["tracking"]["experiment_id"] = get_or_create_experiment(tracking_uri, "ess-bench")
            start = time.perf_counter()
            tuner = tune.Tuner(tune.with_resources(_timed_trainable, {"cpu": cfg.threads}), param_space={"ess": spec},
                               run_config=tune.RunConfig(name=f"tune{i}", storage_path=str(workdir), verbose=0))
            results = tuner.fit()
            out["tune_fit"].append(time.perf_counter() - start)
            result = results[0]
            if result.error is not None:
                raise ESSError(f"benchmark trial failed: {result.error}")
            out["tune_in_trial"].append(float(result.metrics["bench/seconds_to_epoch"]))
    finally:
        ray.shutdown()
    mean = {k: sum(v) / len(v) for k, v in out.items()}
    return {"runs": out, "mean": mean, "ratio_in_trial": mean["tune_in_trial"] / mean["direct"],
            "ratio_fit": mean["tune_fit"] / mean["direct"], "config": config_to_dict(cfg)}


def _bench_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ess.tune overhead",
                                     description="one search epoch through Tune vs called directly")
    parser.add_argument("--preset", default="cpu-small", choices=[p for p in JOB_PRESETS],
                        help="job preset whose search config is timed")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tracking-uri", default="none", help="MLflow store for the Tune run (default: none)")
    parser.add_argument("--workdir", default="runs/bench-overhead")
    args = parser.parse_args(argv)
    from ess.tracking import resolve_tracking_uri

    job = job_base("joint_search", args.preset)
    search = search_config_dict(job, str(_resolve_data_dir()))
    uri = resolve_tracking_uri(args.tracking_uri, args.workdir)
    report = measure_overhead(search, repeats=args.repeats, tracking_uri=uri, workdir=args.workdir)
    print(json.dumps(report["mean"] | {"ratio_in_trial": report["ratio_in_trial"], "ratio_fit": report["ratio_fit"],
                                       "runs": report["runs"]}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "overhead":
        sys.exit(_bench_main(sys.argv[2:]))
    print("usage: python -m ess.tune overhead [--preset cpu-small] [--repeats N]  "
          "(jobs: python tune_jobs/<job>.py --help)", file=sys.stderr)
    sys.exit(2)


__all__ = [
    "DEFAULT_SPACE", "JOBS", "JOB_PRESETS", "Experiment", "ExperimentInterrupted", "JobConfig", "TrialRunStatus",
    "check_resources", "ensure_corpus", "retrain_stage", "search_stage",
    "job_base", "job_main", "measure_overhead", "parse_job_args", "print_summary", "ray_session",
    "retrain_trainable", "run_ablation", "run_hparam_search", "run_joint_search", "run_retrain", "run_transfer",
    "search_config_dict", "search_trainable", "search_variants", "train_config_dict", "transfer_config_dict",
    "transfer_trainable", "transfer_variants", "trial_name",
]
