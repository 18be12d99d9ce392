"""The job config: presets, layering (preset, YAML, flags), one-line errors, the grid of variants."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ess.adapters.ray.config import (
    JOB_PRESETS,
    job_base,
    parse_job_args,
    search_config_dict,
    train_config_dict,
)
from ess.adapters.ray.grid import search_variants, variant_label
from ess.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


# -- configs -----------------------------------------------------------------------------------------


def test_presets_have_the_documented_sizes():
    paper = job_base("joint_search", "paper")
    search = search_config_dict(paper)
    assert (search["emsize"], search["nhid"], search["batch_size"], search["epochs"]) == (300, 300, 256, 50)
    assert train_config_dict(paper)["emsize"] == 850 and train_config_dict(paper)["nhid"] == 850
    assert paper.gpus_per_trial == 1.0 and paper.seeds == (1, 2, 3, 4)
    small = job_base("joint_search", "cpu-small")
    assert small == job_base("joint_search", "cpu-small") and small.seeds == (3, 4) and small.modes == ("joint",)
    assert search_config_dict(small)["epochs"] == 4 and search_config_dict(small)["mode"] == "joint"
    assert job_base("ablation", "smoke").modes == ("intra", "inter", "joint")
    assert job_base("ablation", "smoke").seeds == (1,)
    hp = job_base("hparam_search", "smoke")
    assert hp.search["emsize"] == 16 and hp.search["draw"] is False and not hp.retrain
    assert set(JOB_PRESETS) == {"smoke", "cpu-small", "paper"}


def test_layering_preset_yaml_flags(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("seeds: [7, 8, 9]\nsearch: {lr: 10.0}\ntrain: {epochs: 2}\ncpus_per_trial: 0.5\n")
    cfg, args = parse_job_args("joint_search", ["--smoke-test", "--config", str(cfg_file), "--search", "epochs=3,m=1",
                                                "--gpus-per-trial", "0.25", "--name", "x"])
    assert cfg.seeds == (7, 8, 9) and cfg.cpus_per_trial == 0.5 and cfg.gpus_per_trial == 0.25
    # overrides merge: the smoke sizes stay, YAML adds lr, the flag adds epochs and m
    assert cfg.search["emsize"] == 16 and cfg.search["lr"] == 10.0 and cfg.search["epochs"] == 3
    assert cfg.search["m"] == 1 and cfg.train["epochs"] == 2 and cfg.train["emsize"] == 16
    assert args.smoke_test and cfg.name == "x"
    default, _ = parse_job_args("joint_search", [])
    assert default.search_preset == "cpu-small" and default.name.startswith("joint_search-cpu-small-")


@pytest.mark.parametrize("argv, message", [
    (["--search", "bogus=1"], "unknown key 'bogus'"),
    (["--search", "dropout=2"], "dropout"),
    (["--train", "cell=gru"], "unknown cell"),
    (["--modes", "both"], "unknown mode 'both'"),
    (["--gpus-per-trial", "1.5"], "whole number"),
    (["--resume"], "--name"),
    (["--resume", "--name", "nothing-here", "--storage-path", "/nonexistent/x"], "no saved job config"),
    (["--search", "lr"], "key=value"),
])
def test_bad_configs_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_job_args("joint_search", argv)


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
