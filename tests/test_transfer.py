"""The tagger (BiRNN over any cell, char features) and the transfer loop: smoke runs, resume, command line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ess.checkpoint import load_checkpoint
from ess.errors import CheckpointError, ConfigError
from ess.runs import EpochReport
from ess.space.genotype import DARTS_V2, Edge, ESSGenotype, InterGenotype, InterNode
from ess.tagging.metrics import span_f1
from ess.tagging.model import BiRNN, CharCNN, reverse_index
from ess.transfer import PRESETS, TIMING_KEYS, Transfer, TransferConfig, transfer

DATA_DIR = os.environ.get("ESS_DATA_DIR")
ROOT = Path(__file__).resolve().parents[1]
TASK_FILES = {"conll2003": ("train.txt", "valid.txt", "test.txt"), "wnut17": ("train.txt", "valid.txt", "test.txt"),
              "conll2000": ("train.txt", "test.txt")}


def _has(task: str) -> bool:
    return bool(DATA_DIR) and all((Path(DATA_DIR) / task / f).is_file() for f in TASK_FILES[task])


def requires(task: str):
    return pytest.mark.skipif(not _has(task), reason=f"needs {task} in $ESS_DATA_DIR/{task} (set ESS_DATA_DIR)")


SMOKE = TransferConfig(**{**PRESETS["smoke"], "data_dir": DATA_DIR})
# Tiny: for resume and the command line (a few seconds).
TINY = dataclasses.replace(SMOKE, max_train_sentences=120, max_eval_sentences=60, epochs=2, word_dim=16,
                           char_dim=8, char_filters=8, nhid=16)

M2 = ESSGenotype(DARTS_V2.intra,
                 history=InterGenotype(2, (InterNode(Edge("relu", 0), Edge("tanh", 1)),)),
                 input=InterGenotype(2, (InterNode(Edge("tanh", 0), Edge("identity", 1)),), "sum", True))


# ---------------------------------------------------------------------------------------------------------------
# Model


def test_reverse_index_is_per_sentence_and_an_involution():
    idx = reverse_index(torch.tensor([3, 1, 2]), 4)
    assert idx.t().tolist() == [[2, 1, 0, 3], [0, 1, 2, 3], [1, 0, 2, 3]]
    assert torch.equal(idx.gather(0, idx), torch.arange(4).unsqueeze(1).expand(4, 3))


@pytest.mark.parametrize("kind,genotype", [("lstm", None), ("ess", DARTS_V2), ("ess", M2)],
                         ids=["lstm", "darts_v2", "ess_m2"])
def test_birnn_on_a_padded_batch_equals_each_sentence_alone(kind, genotype):
    torch.manual_seed(0)
    rnn = BiRNN(kind, 6, 5, genotype, dropoutx=0.3, dropouth=0.3).double().eval()
    lengths = torch.tensor([4, 1, 3])
    x = torch.randn(4, 3, 6, dtype=torch.double)
    x[3, 1:] = 99.0  # padding must not leak into real positions
    x[1:, 1] = 99.0
    out = rnn(x, lengths)
    assert out.shape == (4, 3, 10)
    for b, n in enumerate(lengths.tolist()):
        alone = rnn(x[:n, b:b + 1], lengths[b:b + 1])
        assert torch.allclose(out[:n, b:b + 1], alone, atol=1e-12)
        # the backward half at position 0 has read the whole sentence, the forward half only token 0
        fw_only = rnn.forward_cell(x[:1, b:b + 1], rnn.forward_cell.init_state(1))[0]
        assert torch.allclose(out[:1, b:b + 1, :5], fw_only, atol=1e-12)


def test_char_cnn_ignores_padding():
    torch.manual_seed(0)
    cnn = CharCNN(10, 4, 3).eval()
    short = torch.tensor([[[2, 3, 0]]])
    padded = torch.tensor([[[2, 3, 0, 0, 0, 0]]])
    assert torch.allclose(cnn(short), cnn(padded))
    assert cnn(torch.zeros(1, 1, 3, dtype=torch.long)).abs().sum() == 0  # padding token: zeros


# ---------------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("field,value,match", [
    ("task", "ontonotes", "task: unknown task"), ("scheme", "iob1", "scheme: unknown training scheme"),
    ("dropout", 1.0, "dropout: must be in"), ("nhid", 0, "nhid: must be positive"),
    ("optimizer", "rmsprop", "optimizer: unknown"),
])
def test_config_is_checked(field, value, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(TransferConfig(), **{field: value})


# ---------------------------------------------------------------------------------------------------------------
# Smoke runs on the real data: F1 above the all-O tagger (whose F1 is 0).


def _all_o_f1(runner: Transfer) -> float:
    gold = [s.tags for s in runner.dev_sents]
    return span_f1(gold, [["O"] * len(t) for t in gold]).f1


SMOKE_RUNS = {
    ("conll2003", "lstm"): {},
    ("conll2003", "DARTS_V2"): {},
    ("conll2000", "lstm"): {},
    # WNUT-2017 entities are rare: the whole (small) train set, so that some are found.
    ("wnut17", "lstm"): {"max_train_sentences": 0, "epochs": 3},
}


@pytest.mark.parametrize("task,cell", sorted(SMOKE_RUNS), ids=lambda v: str(v))
def test_smoke_run_beats_all_o(task, cell, tmp_path):
    if not _has(task):
        pytest.skip(f"needs {task} in $ESS_DATA_DIR/{task} (set ESS_DATA_DIR)")
    cfg = dataclasses.replace(SMOKE, task=task, cell=cell, run_dir=str(tmp_path), **SMOKE_RUNS[task, cell])
    reports: list[EpochReport] = []
    final = transfer(cfg, on_epoch=reports.append)
    baseline = _all_o_f1(Transfer(dataclasses.replace(cfg, run_dir=str(tmp_path / "b"))))
    assert baseline == 0.0
    assert final["dev/f1"] > baseline and final["test/f1"] > baseline
    assert [r.epoch for r in reports] == list(range(1, cfg.epochs + 1))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, cfg.epochs + 1))
    assert all("dev/f1" in r and "train/loss" in r for r in rows)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert final["dev/f1"] == pytest.approx(max(r["dev/f1"] for r in rows))   # best dev epoch is the one tested
    assert final["best_epoch"] == rows[-1]["dev/best_epoch"]
    saved = json.loads((tmp_path / "final.json").read_text())
    assert saved["test/f1"] == final["test/f1"]
    # The conlleval-format predictions are in the files' own scheme and give the same F1.
    lines = (tmp_path / "predictions" / "test.txt").read_text().split("\n\n")
    gold = [[ln.split(" ")[1] for ln in block.splitlines()] for block in lines if block.strip()]
    pred = [[ln.split(" ")[2] for ln in block.splitlines()] for block in lines if block.strip()]
    assert span_f1(gold, pred).f1 == pytest.approx(final["test/f1"])
    if cell != "lstm":
        assert (tmp_path / "genotype.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and resume


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS}
            for row in load_checkpoint(run_dir / "checkpoint.pt")["rows"]]


@requires("conll2003")
@pytest.mark.parametrize("cell", ["lstm", "DARTS_V2"])
def test_resume_continues_exactly(tmp_path, cell):
    straight = dataclasses.replace(TINY, cell=cell, run_dir=str(tmp_path / "a"))
    first = dataclasses.replace(straight, run_dir=str(tmp_path / "b"), epochs=1)
    final_a = transfer(straight)
    transfer(first)
    final_b = transfer(dataclasses.replace(first, epochs=2), resume=True)
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert final_a == {**final_b, "files": final_a["files"]}
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


@requires("conll2003")
def test_resume_refuses_a_different_model(tmp_path):
    cfg = dataclasses.replace(TINY, run_dir=str(tmp_path), epochs=1)
    transfer(cfg)
    with pytest.raises(CheckpointError, match="field 'nhid'"):
        transfer(dataclasses.replace(cfg, nhid=8, epochs=2), resume=True)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        transfer(dataclasses.replace(cfg, run_dir=str(tmp_path / "none")), resume=True)


@requires("conll2003")
def test_pretrained_embeddings_initialise_rows(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("eu 0.5 0.5 0.5 0.5\ngerman 1 2 3 4\nzzzunseen 9 9 9 9\n", encoding="utf-8")
    cfg = dataclasses.replace(TINY, word_dim=4, embeddings=str(glove), run_dir=str(tmp_path / "run"))
    runner = Transfer(cfg)
    assert runner.embeddings_found == 2
    row = runner.vocab.word_index["german"]
    assert runner.model.words.weight[row].tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(Exception, match="word_dim is 5"):
        Transfer(dataclasses.replace(cfg, word_dim=5))


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ess.transfer", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


@requires("conll2000")
def test_command_line_smoke_test(tmp_path):
    out = _cli("--smoke-test", "--task", "conll2000", "--cell", "darts_v2", "--data-dir", DATA_DIR,
               "--run-dir", str(tmp_path), "--epochs", "1", "--max-train-sentences", "100",
               "--max-eval-sentences", "50", "--nhid", "16")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0]["epoch"] == 1 and "dev/f1" in lines[0]
    assert set(lines[-1]["final"]) >= {"dev/f1", "test/f1", "best_epoch"}
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "best.pt").exists()
    assert "nhid: 16" in (tmp_path / "config.yaml").read_text()
    resumed = _cli("--resume", "--run-dir", str(tmp_path), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_command_line_errors_are_one_line(tmp_path):
    out = _cli("--smoke-test", "--task", "conll2003", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "no such file" in out.stderr and out.stderr.count("\n") == 1
    out = _cli("--smoke-test", "--cell", "NOT_A_CELL", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "NOT_A_CELL" in out.stderr and out.stderr.count("\n") == 1
    out = _cli("--task", "ontonotes")
    assert out.returncode == 2 and "task: unknown task" in out.stderr
