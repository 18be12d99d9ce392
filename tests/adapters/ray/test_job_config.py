"""The job config: presets, layering (preset, YAML, flags), one-line errors, the grid of variants."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ess.adapters.ray.config import JOB_PRESETS, JobConfig, job_base, parse_job_args
from ess.adapters.ray.grid import search_variants, trial_identity, trial_label, variant_label
from ess.adapters.ray.spec import trial_config
from ess.config import config_from_mapping, config_to_dict
from ess.errors import ConfigError
from ess.search import PRESETS as SEARCH_PRESETS
from ess.search import SearchConfig
from ess.study import named_arms
from ess.train import PRESETS as TRAIN_PRESETS
from ess.train import TrainConfig
from ess.transfer import PRESETS as TRANSFER_PRESETS
from ess.transfer import TransferConfig

from conftest import load_job

ROOT = Path(__file__).resolve().parents[3]


# -- configs -----------------------------------------------------------------------------------------


def test_presets_have_the_documented_sizes():
    paper = job_base("joint_search", "paper")
    search = paper.search
    assert (search.emsize, search.nhid, search.batch_size, search.epochs) == (300, 300, 256, 50)
    assert paper.train.emsize == 850 and paper.train.nhid == 850
    assert paper.gpus_per_trial == 1.0 and paper.seeds == (1, 2, 3, 4)
    small = job_base("joint_search", "cpu-small")
    assert small == job_base("joint_search", "cpu-small") and small.seeds == (3, 4) and small.modes == ("joint",)
    assert small.search.epochs == 4 and small.search.mode == "joint"
    assert job_base("ablation", "smoke").modes == ("intra", "inter", "joint")
    assert job_base("ablation", "smoke").seeds == (1,)
    hp = job_base("hparam_search", "smoke")
    assert hp.search.emsize == 16 and hp.search.draw is False and not hp.retrain
    assert set(JOB_PRESETS) == {"smoke", "cpu-small", "paper", "study-cpu", "study-pilot", "study-gpu"}
    study = job_base("study", "study-cpu")
    assert study.seeds == (1, 2, 3) and study.train.match_params == "DARTS_V2@128"
    assert job_base("study", "study-gpu").train.match_params == "DARTS_V2@850"
    pilot = job_base("study", "study-pilot")   # docs/study-design.md section 1
    assert pilot.seeds == (1, 2, 3, 4) and pilot.stages == ("search", "tau", "planted")
    assert (pilot.search.epochs, pilot.search.max_train_tokens, pilot.search.nhid) == (3, 0, 64)
    assert pilot.planted_k == (2, 3, 4) and len(pilot.planted_seeds) == 5 and pilot.tau_factor == 4


#: what a job sets in every run it starts: not a size (valid_part: a job's retrains select on the split's second
#: half, never on the tokens its searches fit; ess.data.roles)
JOB_SET = ("dataset", "data_dir", "progress", "threads", "run_dir", "task", "valid_part")


@pytest.mark.parametrize("preset, search, train, transfer", [
    ("smoke", "smoke", "smoke", "smoke"), ("cpu-small", "cpu-small", "cpu-small", "short"),
    ("paper", "paper", "paper", "full")])
def test_job_presets_name_the_presets_of_the_run_configs(preset, search, train, transfer):
    """One smoke size (and one of every other preset) per config: a job's preset is its run configs' presets."""
    job = job_base("joint_search", preset)
    for cfg, cls, table, name in ((job.search, SearchConfig, SEARCH_PRESETS, search),
                                  (job.train, TrainConfig, TRAIN_PRESETS, train),
                                  (job.transfer, TransferConfig, TRANSFER_PRESETS, transfer)):
        expected = cls(**table[name])
        set_by_job = {f: getattr(cfg, f) for f in JOB_SET if hasattr(cfg, f)}
        assert cfg == dataclasses.replace(expected, **set_by_job), (cls.__name__, name)
    assert (job.search.valid_part, job.train.valid_part) == ("search", "select")


def test_nested_configs_round_trip_and_take_presets_by_name(tmp_path):
    job = job_base("ablation", "smoke")
    again = config_from_mapping(JobConfig, config_to_dict(job), "job.yaml")
    assert again == job and isinstance(again.search, SearchConfig) and isinstance(again.transfer, TransferConfig)
    paper = config_from_mapping(JobConfig, {"search": {"preset": "paper", "lr": 5}}, "job.yaml", base=job)
    assert (paper.search.emsize, paper.search.epochs, paper.search.lr) == (300, 50, 5.0)
    assert paper.train == job.train                                   # the other nested configs are untouched
    with pytest.raises(ConfigError, match=r"^job\.yaml: search: preset: unknown preset 'huge' for SearchConfig"):
        config_from_mapping(JobConfig, {"search": {"preset": "huge"}}, "job.yaml")
    with pytest.raises(ConfigError, match=r"^job\.yaml: train: expected a mapping of TrainConfig keys"):
        config_from_mapping(JobConfig, {"train": [1, 2]}, "job.yaml")
    # the one rule of combination, SearchConfig's, applied to every mode of the grid
    with pytest.raises(ConfigError, match=r"search: combination: 'search' .* mode 'intra'"):
        config_from_mapping(JobConfig, {"modes": ["intra", "joint"], "search": {"combination": "search"}}, "j")
    variant = search_variants(job)[0]
    cfg = trial_config(job.search, {**variant, "label": "x"}, "trial")
    assert (cfg.mode, cfg.seed) == (variant["mode"], variant["seed"]) and cfg.run_dir == "run/search"


def test_layering_preset_yaml_flags(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("seeds: [7, 8, 9]\nsearch: {lr: 10.0}\ntrain: {epochs: 2}\ncpus_per_trial: 0.5\n")
    cfg, args = parse_job_args("joint_search", ["--smoke-test", "--config", str(cfg_file), "--search", "epochs=3,m=1",
                                                "--gpus-per-trial", "0.25", "--name", "x"])
    assert cfg.seeds == (7, 8, 9) and cfg.cpus_per_trial == 0.5 and cfg.gpus_per_trial == 0.25
    # overrides merge: the smoke sizes stay, YAML adds lr, the flag adds epochs and m
    assert cfg.search.emsize == 16 and cfg.search.lr == 10.0 and cfg.search.epochs == 3
    assert cfg.search.m == 1 and cfg.train.epochs == 2 and cfg.train.emsize == 16
    assert args.smoke_test and cfg.name == "x"
    default, _ = parse_job_args("joint_search", [])
    assert default.search == job_base("joint_search", "cpu-small").search
    assert default.name.startswith("joint_search-cpu-small-")
    paper, _ = parse_job_args("joint_search", ["--search", "preset=paper lr=5"])
    assert (paper.search.emsize, paper.search.lr, paper.train.emsize) == (300, 5.0, 128)


@pytest.mark.parametrize("argv, message", [
    (["--search", "bogus=1"], "unknown key 'bogus'"),
    (["--search", "dropout=2"], "dropout"),
    (["--train", "cell=gru"], "unknown cell"),
    (["--modes", "both"], "unknown mode 'both'"),
    (["--gpus-per-trial", "1.5"], "whole number"),
    (["--resume"], "--name"),
    (["--resume", "--name", "nothing-here", "--storage-path", "/nonexistent/x"], "no saved job config"),
    (["--search", "lr"], "key=value"),
    (["--search", "preset=huge"], "unknown preset 'huge'"),
    (["--tasks", "ontonotes"], "tasks: unknown task 'ontonotes'"),
])
def test_bad_configs_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_job_args("joint_search", argv)


def test_the_exploratory_arms_run_on_the_first_seeds_the_primary_on_all():
    cfg, _ = parse_job_args("study", ["--seeds", "5,6,7", "--exploratory-seeds", "2",
                                      "--design", "primary=[joint:intra]"])
    assert cfg.arm_seeds("joint") == cfg.arm_seeds("intra") == (5, 6, 7)
    assert cfg.arm_seeds("rsws") == cfg.arm_seeds("lstm") == (5, 6)          # in no primary comparison here
    every, _ = parse_job_args("study", ["--seeds", "5,6,7"])
    assert every.arm_seeds("lstm") == (5, 6, 7)                               # 0: every arm on every seed
    with pytest.raises(ConfigError, match="exploratory_seeds: must be >= 0"):
        parse_job_args("study", ["--exploratory-seeds", "-1"])


def test_the_search_stage_runs_seed_by_seed_so_a_stopped_study_has_its_arms_on_the_same_seeds(monkeypatch):
    study = load_job("study")
    cfg, _ = parse_job_args("study", ["--seeds", "5,6,7", "--exploratory-seeds", "1",
                                      "--arms", "intra,inter,joint", "--design", "primary=[joint:intra]"])
    seen = []
    monkeypatch.setattr(study, "tune_stage", lambda exp, stage, trainable, spec, variants, callbacks:
                        seen.extend(variants) or [])

    class Exp:
        def spec(self, **kwargs):
            return kwargs

    study.search_stage(Exp(), cfg, [a for a in named_arms(cfg.arms) if a.kind == "search"], ())
    assert [(v["seed"], v["arm"]) for v in seen] == [(5, "intra"), (5, "inter"), (5, "joint"), (6, "intra"),
                                                     (6, "joint"), (7, "intra"), (7, "joint")]


def test_cli_error_is_one_line():
    out = subprocess.run([sys.executable, str(ROOT / "tune_jobs" / "joint_search.py"), "--search", "bogus=1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "bogus" in out.stderr


def test_variants_grid_and_collapse():
    job = dataclasses.replace(job_base("ablation", "smoke"), seeds=(1, 2), steps=(2, 3), n_inter=(1, 2), m=(2,))
    variants = search_variants(job)
    by_mode = {mode: [v for v in variants if v["mode"] == mode] for mode in job.modes}
    assert len(by_mode["joint"]) == 2 * 2 * 2          # seeds x steps x n_inter
    assert len(by_mode["intra"]) == 2 * 2              # inter cells are the identity: n_inter, m do not matter
    assert len(by_mode["inter"]) == 2 * 2              # the intra cell is fixed: steps does not matter
    assert len({json.dumps(v, sort_keys=True) for v in variants}) == len(variants)
    assert variant_label({"mode": "joint", "seed": 3, "steps": 8, "n_inter": 3, "m": 2}) == "joint_s3_n8-3-2"
    assert variant_label({"genotype_label": "DARTS_V2"}) == "retrain_DARTS_V2"
    assert variant_label({"lr": 20.0}) == "search"   # a sampled configuration has no seed of its own: no "sNone"


def test_sampled_trials_are_told_apart_in_run_names_and_progress_lines():
    job = job_base("hparam_search", "smoke")
    spec = {"ess": {"search": config_to_dict(job.search), "job": "hparam_search"}}
    names = set()
    for k, lr in enumerate((10.0, 20.0, 30.0)):     # Optuna's trials: one variant, different sampled values
        config, trial_id = {**spec, "lr": lr}, f"5f0a1_{k:05d}"
        label = trial_label(config, trial_id)
        identity = trial_identity(config, trial_id, f"search_{trial_id}")
        assert label.endswith(f"#{k}") and identity["run_name"] == f"joint_s{job.search.seed}_n" + \
            f"{job.search.steps}-{job.search.n_inter}-{job.search.m}#{k}"
        names.add(identity["run_name"])
    assert len(names) == 3
    grid = {**spec, "variant": {"mode": "joint", "seed": 1, "steps": 8, "n_inter": 3, "m": 3}}
    assert trial_label(grid, "5f0a1_00004") == "joint_s1_n8-3-3"   # a grid's variants differ already: no mark
    assert trial_identity(grid, "5f0a1_00004", "t")["run_name"] == "joint_s1_n8-3-3"
