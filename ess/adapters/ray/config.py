"""The job config: one frozen JobConfig with typed nested run configs, its presets, its command line.

Layers, each merged over the last: code defaults <- the job's defaults (:data:`JOB_DEFAULTS`) <- the
preset (:data:`JOB_PRESETS`, ``--smoke-test`` = ``smoke``, then :data:`JOB_PRESET_EXTRAS`) <- ``--config
FILE.yaml`` <- flags. ``search``, ``train`` and ``transfer`` are nested configs (:class:`SearchConfig`,
:class:`TrainConfig`, :class:`TransferConfig`): a layer merges ``{lr: 10}`` (YAML) or ``"lr=10 epochs=3"``
(``--search``) into them field by field, and ``preset: NAME`` names one of their own presets. The job
sets what is the job's to set (dataset, data directory, run directory, threads, task); every rule that
ties fields together is checked here, once, when a JobConfig is made.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ess.adapters.storage import exists, join, read_text, storage_root
from ess.config import (
    add_config_arguments,
    check,
    config_from_mapping,
    parse_overrides,
    parse_yaml,
    resolve_config,
)
from ess.errors import ConfigError
from ess.search.config import SearchConfig
from ess.study import STAGES, StudyDesign, named_arms
from ess.supernet import MODES
from ess.tagging.conll import TASKS
from ess.train import TrainConfig
from ess.transfer import TransferConfig

JOBS = ("joint_search", "ablation", "hparam_search", "retrain", "transfer", "study")
RUN_DIR = "run"   # a trial's run directory, inside its working directory; each of its checkpoints is a copy
INTER_KNOBS = ("n_inter", "m", "combination", "softmax_scope", "residual")   # used only when inter cells are searched
INTRA_KNOBS = ("steps",)                                                    # used only when the intra cell is
#: the registered planted corpora by their lag k (ess.data.planted)
PLANTED_CORPORA = {2: "planted", 3: "planted-k3", 4: "planted-k4"}
SPACE_KINDS = {"choice": 1, "uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}


def _derived(name: str, cfg: Any, **changes: Any) -> Any:
    """``cfg`` with ``changes``, validated by its class; its error names the JobConfig field."""
    try:
        return dataclasses.replace(cfg, **changes)
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from None


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
    steps: tuple[int, ...] = field(default=(), metadata={"help": "intra-cell node counts (empty: search.steps)"})
    n_inter: tuple[int, ...] = field(default=(), metadata={"help": "inter-cell node counts (empty: search.n_inter)"})
    m: tuple[int, ...] = field(default=(), metadata={"help": "inter-cell windows (empty: search.m)"})
    search: SearchConfig = field(default_factory=SearchConfig, metadata={
        "help": "the search every trial starts from (mode, seed, node counts: the grid above), e.g. 'lr=10 epochs=3'"})
    retrain: bool = field(default=True, metadata={"help": "retrain the searched genotype(s)"})
    top_k: int = field(default=2, metadata={"help": "joint_search: retrain the k best genotypes"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "the retraining of every trial (the genotype is the trial's), e.g. 'epochs=3 nhid=128'"})
    genotypes: tuple[str, ...] = field(default=(), metadata={"help": "retrain: built-in names or JSON files"})
    source_experiment: str = field(default="", metadata={"help": "retrain: MLflow experiment to take the best of"})
    source_run: str = field(default="", metadata={"help": "retrain: only the trials of this parent run (name)"})
    cells: tuple[str, ...] = field(default=("lstm", "DARTS_V2"), metadata={
        "help": "transfer: cells to compare: lstm, built-in genotypes or JSON files"})
    tasks: tuple[str, ...] = field(default=("conll2003",), metadata={
        "help": "transfer: tagging tasks (conll2003, wnut17, conll2000)"})
    exploratory_seeds: int = field(default=0, metadata={
        "help": "study: the arms outside the design's primary comparisons run on the first N seeds only (0: all)"})
    transfer_seeds: tuple[int, ...] = field(default=(), metadata={
        "help": "study, stages transfer and wikitext2: their seeds (empty: the job's seeds; wikitext2 runs the first)"})
    transfer: TransferConfig = field(default_factory=TransferConfig, metadata={
        "help": "the tagger of every transfer trial (task, cell, seed: the grid), e.g. 'epochs=3 nhid=64'"})
    num_samples: int = field(default=8, metadata={"help": "hparam_search: Optuna trials"})
    grace_period: int = field(default=1, metadata={"help": "hparam_search: ASHA grace period (epochs)"})
    reduction_factor: float = field(default=2.0, metadata={"help": "hparam_search: ASHA reduction factor"})
    optuna_storage: str = field(default="", metadata={"help": "Optuna RDB URL (default sqlite:///EXP/optuna.db)"})
    study_name: str = field(default="", metadata={"help": "Optuna study (default: the experiment name)"})
    space: dict = field(default_factory=dict, metadata={
        "help": "hparam_search space, YAML: {lr: [loguniform, 5, 40], m: [choice, [1, 2, 3]]}"})
    arms: tuple[str, ...] = field(default=(), metadata={
        "help": "study: the arms compared (intra, inter, joint, joint-beta, joint-pt, lstm, darts_v2, random ...)"})
    stages: tuple[str, ...] = field(default=("search", "baselines", "random", "transfer", "wikitext2", "planted"),
                                    metadata={"help": "study: the stages run"})
    random_k: int = field(default=4, metadata={"help": "study: random genotypes per seed, best by a short retrain"})
    random_epochs: int = field(default=1, metadata={"help": "study: epochs of that short retrain"})
    design: StudyDesign = field(default_factory=StudyDesign, metadata={
        "help": "study: the pre-registered primary analysis, e.g. 'target_gain=0.03 alpha=0.05'"})
    tau_genotypes: int = field(default=8, metadata={
        "help": "study, stage tau: random joint genotypes retrained at the study's budget and tau_factor times longer, "
                "and scored on the paths of every joint-space supernet (ranking quality)"})
    tau_factor: int = field(default=4, metadata={"help": "study, stage tau: epochs of the long retrain / the short's"})
    planted_arms: tuple[str, ...] = field(default=("intra", "inter", "joint"), metadata={
        "help": "study, stage planted: the search arms run on each planted corpus (lstm and darts_v2: retrained "
                "controls)"})
    planted_k: tuple[int, ...] = field(default=(2,), metadata={
        "help": "study, stage planted: the lags k of the planted corpora (2: planted, 3: planted-k3, 4: planted-k4)"})
    planted_seeds: tuple[int, ...] = field(default=(1,), metadata={"help": "study, stage planted: seeds per arm"})
    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs per trial (also torch threads)"})
    gpus_per_trial: float = field(default=0.0, metadata={"help": "GPUs per trial; fractions share a GPU"})
    max_concurrent_trials: int = field(default=0, metadata={"help": "0: as many as resources allow"})
    max_failures: int = field(default=2, metadata={"help": "restarts of a failed trial from its checkpoint"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept per trial"})
    checkpoint_every: int = field(default=1, metadata={"help": "checkpoint every N epochs (and the last)"})
    system_metrics: bool = field(default=True, metadata={"help": "CPU/memory/GPU metrics in each trial run"})
    system_metrics_interval: float = field(default=10.0, metadata={"help": "seconds between system samples"})
    verbose: int = field(default=0, metadata={
        "help": "console: 0 one line per trial and epoch; 1 Tune's status tables and the workers' logs; 2 per result"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "space", parse_overrides(self.space, "space"))
        named_arms(self.arms)
        for stage in self.stages:
            check(stage in STAGES, "stages", f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
        named_arms(self.planted_arms)
        for k in self.planted_k:
            check(k in PLANTED_CORPORA, "planted_k", f"no planted corpus for k = {k} (known: "
                  f"{', '.join(map(str, PLANTED_CORPORA))})")
        check(len(self.planted_seeds) > 0, "planted_seeds", "give at least one seed")
        for name in ("top_k", "num_samples", "grace_period", "keep_checkpoints", "checkpoint_every", "random_k",
                     "random_epochs", "tau_genotypes", "tau_factor"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("num_cpus", "max_concurrent_trials", "max_failures", "verbose", "exploratory_seeds"):
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
        for mode in self.modes:
            check(mode in MODES, "modes", f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        for task in self.tasks:
            check(task in TASKS, "tasks", f"unknown task {task!r} (known: {', '.join(TASKS)})")
        for name in ("steps", "n_inter", "m"):
            for v in getattr(self, name):
                check(v >= 1, name, f"node counts must be >= 1, got {v}")
        check(self.name == "" or ("/" not in self.name and self.name not in (".", "..")), "name",
              f"must be a plain directory name, got {self.name!r}")
        # what the job sets in every run it starts
        common = {"data_dir": self.data_dir or None, "progress": False, "threads": max(1, int(self.cpus_per_trial))}
        object.__setattr__(self, "search", _derived("search", self.search, dataset=self.dataset,
                                                    run_dir=f"{RUN_DIR}/search", **common))
        # a job's retrains follow searches or are compared with one another: they validate on the split's select
        # half, never on the tokens the searches fit and ranked on (ess.data.roles)
        object.__setattr__(self, "train", _derived("train", self.train, dataset=self.dataset, valid_part="select",
                                                   run_dir=f"{RUN_DIR}/retrain", **common))
        object.__setattr__(self, "transfer", _derived("transfer", self.transfer, task=self.tasks[0],
                                                      run_dir=f"{RUN_DIR}/transfer", **common))
        _check_grid_and_space(self)

    def arm_seeds(self, arm: str) -> tuple[int, ...]:
        """The study's seeds of ``arm``: all of them for an arm of a primary comparison (``design.primary``),
        the first ``exploratory_seeds`` for any other arm (all when 0)."""
        primary = {a for pair in self.design.pairs for a in pair}
        return self.seeds if arm in primary or not self.exploratory_seeds else self.seeds[:self.exploratory_seeds]


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



def _check_grid_and_space(job: JobConfig) -> None:
    """Every mode of the grid gives a valid search (SearchConfig's own rules: ``combination``, the fixed
    intra cell ...); what the modes do not search cannot be varied (no inter-cell knobs for intra-only
    jobs, and the reverse); the hparam space is well-formed."""
    for mode in job.modes:
        _derived("search", job.search, mode=mode)
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
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    for name, spec in job.space.items():
        if name not in fields:
            raise ConfigError(f"space: {name!r} is not a SearchConfig field"[:300])
        _check_space_entry(name, spec)


#: presets shared by every job (``smoke`` is what ``--smoke-test`` selects); each names the presets of
#: the nested configs rather than restating their sizes
JOB_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds per trial: the smoke presets of the search, the retraining and the tagger.
    "smoke": dict(seeds=(1, 2), top_k=1, num_samples=4, keep_checkpoints=1, system_metrics_interval=1.0, verbose=0,
                  search={"preset": "smoke"}, train={"preset": "smoke"}, transfer={"preset": "smoke"}),
    # The default: a real joint search plus a short retrain, about 8 minutes on 2 cores (measured: 7 min 56 s).
    "cpu-small": dict(seeds=(3, 4), top_k=2, num_samples=8, cpus_per_trial=1.0,
                      search={"preset": "cpu-small"}, train={"preset": "cpu-small"}, transfer={"preset": "short"}),
    # The DARTS/ESS sizes: search at 300 units, batch 256, 50 epochs; retrain at 850.
    "paper": dict(seeds=(1, 2, 3, 4), top_k=4, num_samples=32, cpus_per_trial=4.0, gpus_per_trial=1.0,
                  max_failures=3, keep_checkpoints=2,
                  search={"preset": "paper"}, train={"preset": "paper"}, transfer={"preset": "full"}),
    # The study on 2 CPU cores (about 2.5 hours: docs/results.md measured 419 trial-minutes with the two remedy
    # arms, 304 without): cpu-small searches and retrains, 3 seeds, every retrain at the parameter count of
    # DARTS_V2 at the retrain width.
    "study-cpu": dict(seeds=(1, 2, 3), cpus_per_trial=1.0, random_k=4, random_epochs=1,
                      search={"preset": "cpu-small"}, train={"preset": "cpu-small", "match_params": "DARTS_V2@128"},
                      transfer={"preset": "short"}),
    # The study's pilot on 2 CPU cores (docs/results.md "Pilot"; exploratory: it sizes the pre-registered study):
    # searches that move (cpu-full: 3 epochs of the whole PTB training set, 2,490 architecture steps) for intra,
    # joint and RSWS and the two collapse remedies, 4 seeds each, each retrained for one epoch at DARTS_V2@128's
    # parameter count (the seed noise of the retrained metric, pooled over arms); the evidence of each arm; the
    # ranking quality of that retrain against a 4x longer one and of the joint-space supernets (tau); known truth
    # on the planted corpora k = 2, 3, 4 over 5 seeds with LSTM and DARTS_V2 controls.
    "study-pilot": dict(seeds=(1, 2, 3, 4), cpus_per_trial=1.0, stages=("search", "tau", "planted"),
                        arms=("intra", "joint", "rsws", "joint-beta", "joint-pt"),
                        planted_arms=("inter", "joint", "rsws", "lstm", "darts_v2"), planted_k=(2, 3, 4),
                        planted_seeds=(1, 2, 3, 4, 5), tau_genotypes=8, tau_factor=4,
                        search={"preset": "cpu-full"}, train={"preset": "cpu-full", "match_params": "DARTS_V2@128"},
                        transfer={"preset": "short"}),
    # The study at the paper's scale on GPUs: search at 300 units, batch 256, 50 epochs; retrain at DARTS_V2's
    # 850-unit parameter count; random search best of 8. Its 5 seeds are a start, not a design: the noise at this
    # scale is not measured here, so a study takes its seeds from its own pilot (docs/study-design.md section 4).
    "study-gpu": dict(seeds=(1, 2, 3, 4, 5), cpus_per_trial=4.0, gpus_per_trial=1.0, max_failures=3, random_k=8,
                      random_epochs=10, search={"preset": "paper"},
                      train={"preset": "paper", "match_params": "DARTS_V2@850"}, transfer={"preset": "full"}),
}

#: each job's own defaults, applied before the preset
JOB_DEFAULTS: dict[str, dict[str, Any]] = {
    "joint_search": dict(modes=("joint",), retrain=True),
    "ablation": dict(modes=("intra", "inter", "joint"), retrain=True),
    "hparam_search": dict(modes=("joint",), retrain=False),
    "retrain": dict(retrain=True),
    "transfer": dict(retrain=False, seeds=(1, 2, 3)),
    "study": dict(retrain=True, seeds=(1, 2, 3), modes=("intra", "inter", "joint"),
                  arms=("intra", "inter", "joint", "lstm", "darts_v2", "random")),
}

#: per job and preset, applied after the preset (nested configs merge)
JOB_PRESET_EXTRAS: dict[tuple[str, str], dict[str, Any]] = {
    ("ablation", "smoke"): dict(seeds=(1,)),
    ("hparam_search", "smoke"): dict(seeds=(1,), search={"draw": False}),
    ("hparam_search", "cpu-small"): dict(seeds=(3,), search={"epochs": 3, "max_train_tokens": 50_000}),
    ("retrain", "smoke"): dict(genotypes=("DARTS_V2",)),
    ("transfer", "smoke"): dict(seeds=(1,)),
    ("transfer", "cpu-small"): dict(seeds=(1, 2, 3)),
    ("transfer", "paper"): dict(seeds=(1, 2, 3, 4, 5)),
    ("study", "smoke"): dict(seeds=(1, 2), random_k=2, tau_genotypes=5, planted_seeds=(1,), planted_k=(2,),
                             planted_arms=("joint", "rsws", "lstm"),
                             arms=("intra", "joint", "joint-pt", "lstm", "darts_v2", "random"),
                             search={"pt_tokens": 400},   # 16 units: one unit moves the count by 6%, no 1% match
                             transfer={"max_train_sentences": 200, "max_eval_sentences": 100, "epochs": 1}),
}

#: the preset a job runs without --preset (else cpu-small)
DEFAULT_PRESET: dict[str, str] = {"study": "study-cpu"}

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
            cfg = config_from_mapping(JobConfig, extra, f"--preset {preset} ({job})", base=cfg)
    return cfg


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
    preset = "smoke" if args.smoke_test else (args.preset or DEFAULT_PRESET.get(job, "cpu-small"))
    if args.resume:
        name = getattr(args, "name", "")
        if not name:
            raise ConfigError("--resume: give the experiment's --name")
        saved = join(storage_root(storage), name, "job.yaml")
        if not exists(saved):
            raise ConfigError(f"{saved}: no saved job config to resume from")
        data = parse_yaml(read_text(saved), saved) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{saved}: expected a mapping of config keys, got {type(data).__name__}")
        data.pop("job", None)
        base = config_from_mapping(JobConfig, data, saved)
    else:
        base = job_base(job, preset)
    cfg = resolve_config(JobConfig, args, base=base)
    if not cfg.name:
        cfg = dataclasses.replace(cfg, name=f"{job}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if job == "retrain" and not cfg.genotypes and not cfg.source_experiment:
        raise ConfigError("genotypes: nothing to retrain; give --genotypes NAME_OR_FILE,... or --source-experiment")
    return cfg, args


__all__ = [
    "DEFAULT_SPACE", "INTER_KNOBS", "INTRA_KNOBS", "JOBS", "JOB_PRESETS", "RUN_DIR", "JobConfig", "job_base",
    "parse_job_args",
]
