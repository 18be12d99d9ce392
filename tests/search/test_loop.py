"""The search loop: each mode learns and derives a valid genotype; resume is exact; the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from ess.checkpoint import load_checkpoint
from ess.errors import CheckpointError, ConfigError
from ess.evaluation import evaluate
from ess.search import PRESETS, SearchConfig, Searcher, search
from ess.search.loop import TIMING_KEYS
from ess.space.derive import identity_share
from ess.space.genotype import DARTS_V2, ESSGenotype
from ess.space.refs import load_genotype
from ess.supernet import MODES

from conftest import requires_ptb

pytestmark = requires_ptb

TINY = SearchConfig(**{**PRESETS["smoke"], "emsize": 16, "nhid": 16, "steps": 3, "n_inter": 2, "m": 2,
                       "batch_size": 8, "max_train_tokens": 4_000, "max_eval_tokens": 1_200, "epochs": 2,
                       "draw": False, "dropout": 0.2, "dropoutx": 0.2, "dropouth": 0.1, "dropouti": 0.1})
TIMING = TIMING_KEYS


@pytest.mark.parametrize("mode", sorted(MODES))
def test_search_in_each_mode_learns_and_derives_a_valid_genotype(tmp_path, mode):
    cfg = dataclasses.replace(TINY, mode=mode, run_dir=str(tmp_path), max_train_tokens=8_000)
    initial = Searcher(cfg)
    before = evaluate(initial.model, initial.valid_data, cfg.bptt)
    result = search(cfg)
    assert isinstance(result.genotype, ESSGenotype)
    assert result.rows[-1]["valid/loss"] < before - 0.5
    saved = load_genotype(tmp_path / "genotype.json")
    assert saved == result.genotype
    assert (tmp_path / "genotypes" / "epoch_002.json").exists() and (tmp_path / "arch_weights.json").exists()
    if mode == "intra":
        assert saved.history.is_identity and saved.input.is_identity
        assert saved.intra.steps == cfg.steps
    else:   # nodes that said none or duplicated another are gone; the derivation says which
        reasons = json.loads((tmp_path / "derivation.json").read_text())
        assert reasons["genotype"] == saved.to_dict()
        for part in ("history", "input"):
            inter = getattr(saved, part)
            gone = sum(re.match(rf"{part}: s\d+ (dropped|duplicates .*: merged$)", note) is not None
                       for note in reasons["notes"])
            assert len(inter.nodes) == cfg.n_inter - gone
            assert inter.is_identity or inter.m == cfg.m
        assert {c["part"] for c in reasons["choices"]} >= {"history", "input"}
    if mode == "inter":
        assert saved.intra == DARTS_V2.intra
    searched = [p for p in ("intra", "history", "input") if mode == "joint" or (p == "intra") == (mode == "intra")]
    for row in result.rows:
        assert 0.0 < row["arch/entropy"] <= 1.0 and row["genotype/decided"] in (0.0, 1.0)
        for part in searched:
            for key in ("entropy", "none_mass", "identity_mass"):
                assert 0.0 <= row[f"arch/{part}/{key}"] <= 1.0
            assert 0.0 <= row[f"genotype/{part}/identity_share"] <= 1.0
            assert 0.0 <= row[f"genotype/{part}/decided_share"] <= 1.0
        assert not any(k.startswith(("arch/intra", "genotype/intra")) for k in row) or "intra" in searched
    assert json.loads((tmp_path / "selection.json").read_text())["criterion"] == "last"


def test_search_resume_continues_exactly(tmp_path):
    straight = dataclasses.replace(TINY, run_dir=str(tmp_path / "a"))
    first = dataclasses.replace(TINY, run_dir=str(tmp_path / "b"), epochs=1)
    a = search(straight)
    search(first)
    b = search(dataclasses.replace(first, epochs=2), resume=True)
    assert a.genotype == b.genotype
    ca, cb = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in c["rows"]] for c in (ca, cb)]
    assert strip[0] == strip[1]
    assert ca["architect"]["optimizer"]["state"].keys() == cb["architect"]["optimizer"]["state"].keys()


def test_resume_refuses_another_search_space(tmp_path):
    search(dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=1))
    with pytest.raises(CheckpointError, match="field 'm'"):
        search(dataclasses.replace(TINY, run_dir=str(tmp_path), m=3), resume=True)


@pytest.mark.parametrize("changes,pattern", [
    (dict(m=0), "m: must be positive"),
    (dict(mode="both"), "mode: unknown mode 'both'"),
    (dict(order=3), "order: must be 1 or 2"),
    (dict(nhid=-1), "nhid: must be positive"),
    (dict(second_order="taylor"), "second_order: unknown 'taylor'"),
    (dict(inter_norm="batch"), "inter_norm: unknown 'batch'"),
    (dict(intra_ops=("none",)), "intra_ops: needs at least one op"),
    (dict(drop_ratio=0), "drop_ratio: must be positive"),
    (dict(decision_ratio=0.9), "decision_ratio: must be a finite number >= 1"),
    (dict(select="first"), "select: unknown 'first'"),
])
def test_bad_search_configs(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        dataclasses.replace(TINY, **changes)


def test_second_order_search_runs(tmp_path):
    result = search(dataclasses.replace(TINY, order=2, epochs=1, run_dir=str(tmp_path)))
    assert isinstance(result.genotype, ESSGenotype)


def test_darts_loop_and_remedies_run_and_say_how_the_genotype_was_chosen(tmp_path):
    cfg = dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=2, lengths="darts", valid_batches="darts",
                              arch_bn_stats="update", arch_reg=False, emb_init=0.04, beta_decay=10.0,
                              derive="perturbation", pt_tokens=400, inter_norm="op",
                              intra_ops=("none", "tanh", "relu", "sigmoid"))
    result = search(cfg)
    assert [r["arch/beta_decay_weight"] for r in result.rows] == [0.0, 5.0]
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection["criterion"] == "perturbation" and result.selection == selection
    reasons = json.loads((tmp_path / "derivation.json").read_text())
    assert reasons["genotype"] == result.genotype.to_dict() == load_genotype(tmp_path / "genotype.json").to_dict()
    assert all(e.op != "identity" for e in result.genotype.intra.recurrent)
    assert any("validation passes" in n for n in reasons["notes"])
    # the shares of the genotype returned, not of the last epoch's argmax derivation
    assert set(selection["identity_share"]) == {"intra", "history", "input"}
    for part, share in selection["identity_share"].items():
        assert share == identity_share(result.genotype, (part,))
    assert selection["identity_share"]["intra"] == 0.0   # identity is not among the intra ops here


def test_best_valid_selection_takes_the_epoch_of_the_lowest_valid_perplexity(tmp_path):
    result = search(dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=3, select="best_valid", lr=60.0))
    best = min(result.rows, key=lambda r: r["valid/ppl"])["epoch"]
    assert result.selection == {**result.selection, "criterion": "best_valid", "epoch": best}
    assert result.genotype == load_genotype(tmp_path / "genotypes" / f"epoch_{best:03d}.json")
    assert load_genotype(tmp_path / "genotype.json") == result.genotype


@pytest.mark.slow
def test_smoke_test_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "ess.search", "--mode", "joint", "--smoke-test", "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in lines[:-1]] == [1, 2]
    final = ESSGenotype.from_dict(lines[-1]["genotype"])
    assert final == load_genotype(tmp_path / "run" / "genotype.json")
    assert (tmp_path / "run" / "genotype.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "genotypes" / "epoch_002.png").exists()
