"""Retraining: learning, exact resume, rollback on divergence, the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from ess.checkpoint import load_checkpoint, previous_path, save_checkpoint
from ess.errors import CheckpointError, ConfigError
from ess.evaluation import evaluate
from ess.train import PRESETS, TrainConfig, Trainer, train

from conftest import requires_ptb

pytestmark = requires_ptb

TINY = TrainConfig(**{**PRESETS["smoke"], "emsize": 32, "nhid": 32, "batch_size": 8, "max_train_tokens": 6_000,
                      "max_eval_tokens": 1_500, "epochs": 2})

TIMING = ("train/seconds", "train/tokens_per_s")


def _rows(run_dir):
    return [{k: v for k, v in row.items() if k not in TIMING}
            for row in load_checkpoint(run_dir / "checkpoint.pt")["rows"]]


def test_retraining_darts_v2_lowers_valid_perplexity(tmp_path):
    cfg = dataclasses.replace(TINY, run_dir=str(tmp_path), max_train_tokens=20_000, epochs=2)
    before = Trainer(cfg)
    initial = evaluate(before.model, before.valid_data, cfg.bptt)
    train(cfg)
    rows = _rows(tmp_path)
    assert len(rows) == 2
    assert rows[-1]["valid/loss"] < initial - 1.0  # from ~ln(10000) = 9.2 nats down by more than one nat
    assert (tmp_path / "genotype.json").exists() and (tmp_path / "config.yaml").exists()
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["test/ppl"] < 2000


def test_resume_continues_exactly(tmp_path):
    straight = dataclasses.replace(TINY, run_dir=str(tmp_path / "a"), epochs=2)
    first = dataclasses.replace(TINY, run_dir=str(tmp_path / "b"), epochs=1)
    rest = dataclasses.replace(first, epochs=2)
    final_a = train(straight)
    train(first)
    final_b = train(rest, resume=True)
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert final_a == final_b
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_resume_refuses_a_different_model(tmp_path):
    train(dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=1))
    with pytest.raises(CheckpointError, match="field 'emsize'"):
        train(dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=2, emsize=16, nhid=16), resume=True)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    train(dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=1))
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}})       # the epoch-1 checkpoint becomes .prev
    previous_path(tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match="missing field"):
        train(dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=2), resume=True)


def test_non_finite_loss_rolls_back_to_the_last_checkpoint(tmp_path):
    cfg = dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=3)
    trainer = Trainer(cfg)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    poisoned = []

    def poison_once(report):
        if report.epoch == 1 and not poisoned:
            poisoned.append(True)
            with torch.no_grad():
                trainer.model.encoder.weight.fill_(float("nan"))

    trainer.fit(poison_once)
    rows = trainer.progress.rows
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["rollbacks"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_lstm_baseline_trains(tmp_path):
    final = train(dataclasses.replace(TINY, cell="lstm", run_dir=str(tmp_path), epochs=1))
    assert final["test/ppl"] < 10_000 and not (tmp_path / "genotype.json").exists()


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "ess.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_smoke_test_command_end_to_end(tmp_path):
    result = _cli("--smoke-test", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in rows[:-1]] == [1, 2]
    assert rows[-1]["final"]["test/ppl"] > 0
    for name in ("checkpoint.pt", "best.pt", "metrics.jsonl", "config.yaml", "genotype.json", "final.json"):
        assert (tmp_path / "run" / name).exists(), name


def test_bad_config_prints_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("nhid: -3\n")
    result = _cli("--config", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "bad.yaml" in result.stderr and "nhid" in result.stderr
    result = _cli("--genotype", str(tmp_path / "nope.json"), "--smoke-test", "--run-dir", str(tmp_path / "r"),
                  cwd=tmp_path)
    assert result.returncode == 2 and "nope.json" in result.stderr and "Traceback" not in result.stderr


def test_parameter_matched_retraining_logs_its_count(tmp_path):
    from ess.config import load_yaml
    from ess.models.sizing import count_params
    from ess.space.genotype import DARTS_V2, Edge, ESSGenotype, InterGenotype, InterNode, save_genotype

    nodes = (InterNode(Edge("tanh", 0), Edge("relu", 1)), InterNode(Edge("sigmoid", 2), Edge("identity", 1)),
             InterNode(Edge("tanh", 3), Edge("relu", 0)))
    wide = ESSGenotype(DARTS_V2.intra, InterGenotype(m=2, nodes=nodes), InterGenotype(m=2, nodes=nodes))
    path = save_genotype(wide, tmp_path / "wide.json")
    cfg = dataclasses.replace(TINY, genotype=str(path), match_params="DARTS_V2@40", epochs=1,
                              run_dir=str(tmp_path / "run"))
    train(cfg)
    saved = load_yaml(tmp_path / "run" / "config.yaml")
    target = count_params("ess", DARTS_V2, 10_000, 40)
    assert saved["match_params"] == "DARTS_V2@40" and saved["nhid"] == saved["emsize"] < 40
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["nhid"] == saved["nhid"] and abs(row["params"] - target) / target < 0.01
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["params"] == row["params"]
    train(dataclasses.replace(cfg, epochs=2), resume=True)   # the resolved size resumes


def test_a_retrain_after_a_search_validates_on_the_select_half(tmp_path):
    """valid_part=select: the validation perplexity is that of the second half of the split, never the search's."""
    from ess.data import load_corpus, valid_part

    base = TrainConfig(**{**PRESETS["smoke"], "run_dir": str(tmp_path), "progress": False})
    corpus = load_corpus(base.dataset, base.data_dir)
    for part in ("all", "select"):
        trainer = Trainer(dataclasses.replace(base, valid_part=part))
        expected = valid_part(corpus.valid, part)[: base.max_eval_tokens or None]
        assert torch.equal(trainer.valid_data.t().reshape(-1), expected[: trainer.valid_data.numel()])
    with pytest.raises(ConfigError, match="^valid_part: unknown 'search'"):
        dataclasses.replace(base, valid_part="search")
