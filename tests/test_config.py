"""Config layering (defaults < YAML < CLI), validation and one-line errors."""

from __future__ import annotations

import argparse

import pytest
import yaml

from ess.config import add_config_arguments, config_from_mapping, resolve_config, save_config
from ess.errors import ConfigError
from ess.train import TrainConfig


def _resolve(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    return resolve_config(TrainConfig, parser.parse_args(argv))


def test_defaults_are_the_darts_final_training_values():
    cfg = TrainConfig()
    assert (cfg.emsize, cfg.nhid, cfg.batch_size, cfg.lr, cfg.clip, cfg.bptt) == (850, 850, 64, 20.0, 0.25, 35)
    assert (cfg.dropout, cfg.dropouth, cfg.dropoutx, cfg.dropouti, cfg.dropoute) == (0.75, 0.25, 0.75, 0.2, 0.1)
    assert (cfg.wdecay, cfg.beta, cfg.nonmono, cfg.eval_batch_size, cfg.test_batch_size) == (8e-7, 1e-3, 5, 10, 1)


def test_yaml_then_cli_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 10\nbatch-size: 32\nasgd: false\n")
    cfg = _resolve(["--config", str(path), "--lr", "5", "--nhid", "300", "--emsize", "300"])
    assert cfg.lr == 5.0 and cfg.batch_size == 32 and cfg.asgd is False and cfg.nhid == 300
    assert _resolve(["--config", str(path)]).lr == 10.0


def test_unknown_key_names_the_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 10\nlearning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'learning_rate'"):
        _resolve(["--config", str(path)])


@pytest.mark.parametrize("text,pattern", [
    ("batch_size: -4\n", "batch_size: must be positive"),
    ("dropout: 1.5\n", r"dropout: must be in \[0, 1\)"),
    ("lr: fast\n", "lr: expected a number"),
    ("epochs: 2.5\n", "epochs: expected an integer"),
    ("asgd: maybe\n", "asgd: expected true or false"),
    ("cell: gru\n", "cell: unknown cell 'gru'"),
    ("- a\n- b\n", "expected a mapping"),
    ("lr: [1\n", "not valid YAML"),
])
def test_bad_values_give_one_line_errors(tmp_path, text, pattern):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        _resolve(["--config", str(path)])
    assert "\n" not in str(info.value) and "c.yaml" in str(info.value)


def test_bad_cli_value_names_the_flag():
    with pytest.raises(ConfigError, match="--nhid: expected an integer"):
        _resolve(["--nhid", "big"])


def test_saved_config_round_trips(tmp_path):
    cfg = TrainConfig(emsize=300, nhid=300, data_dir="/x")
    save_config(cfg, tmp_path / "config.yaml")
    loaded = config_from_mapping(TrainConfig, yaml.safe_load((tmp_path / "config.yaml").read_text()), "saved")
    assert loaded == cfg
