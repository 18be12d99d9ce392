"""The divergence guard in search, retraining and transfer, and resuming from a damaged checkpoint.

Faults are injected at a chosen batch: a NaN loss, a NaN gradient, NaN architecture weights, or a
perplexity bound no model can meet. Each test checks that the run rolls back with a lower learning
rate and finishes, or ends with a one-line DivergenceError once the budget is spent; that every
finished epoch's metrics row, genotype and checkpoint survive; and that nothing is derived or saved
from a diverged state.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import ess.search.loop
import ess.train
import ess.transfer
from ess.checkpoint import CheckpointFallbackWarning, load_checkpoint, previous_path
from ess.errors import DivergenceError
from ess.search import PRESETS as SEARCH_PRESETS
from ess.search import SearchConfig, search
from ess.search.architect import Architect
from ess.search.loop import TIMING_KEYS as SEARCH_TIMING
from ess.space.refs import load_genotype
from ess.tagging.model import Tagger
from ess.train import PRESETS as TRAIN_PRESETS
from ess.train import TrainConfig, Trainer, train
from ess.transfer import PRESETS as TRANSFER_PRESETS
from ess.transfer import TIMING_KEYS, TransferConfig, transfer

from conftest import DATA_DIR, TINY_SEARCH, requires_ptb

SEARCH = SearchConfig(**{**SEARCH_PRESETS["smoke"], **TINY_SEARCH, "epochs": 3, "data_dir": DATA_DIR})
TRAIN = TrainConfig(**{**TRAIN_PRESETS["smoke"], "epochs": 3, "data_dir": DATA_DIR})
TRANSFER = TransferConfig(**{**TRANSFER_PRESETS["smoke"], "data_dir": DATA_DIR, "max_train_sentences": 120,
                             "max_eval_sentences": 60, "epochs": 3, "word_dim": 16, "char_dim": 8,
                             "char_filters": 8, "nhid": 16})
TIMING = ("train/seconds", "train/tokens_per_s", *TIMING_KEYS, *SEARCH_TIMING)
BATCHES_PER_EPOCH = 14   # TINY_SEARCH: 4,000 tokens in 8 rows, ~35 tokens per batch


def _poison(monkeypatch, module, name: str, at: set[int] | int, *, forever: bool = False) -> list[int]:
    """Make ``module.name`` (a loss function) return NaN at call number ``at`` (1-based) or from it on."""
    real, calls = getattr(module, name), [0]
    first = at if isinstance(at, int) else min(at)

    def poisoned(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        hit = calls[0] >= first if forever else calls[0] == first
        return loss * float("nan") if hit else loss

    monkeypatch.setattr(module, name, poisoned)
    return calls


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# -- search --------------------------------------------------------------------------------------------


@requires_ptb
@pytest.mark.parametrize("at, back_to", [(3, 0), (BATCHES_PER_EPOCH + 5, 1)])
def test_search_rolls_back_on_a_nan_loss_and_finishes(tmp_path, monkeypatch, capfd, at, back_to):
    _poison(monkeypatch, ess.search.loop, "lm_loss", at)
    result = search(dataclasses.replace(SEARCH, run_dir=str(tmp_path)))
    assert [r["epoch"] for r in result.rows] == [1, 2, 3]
    assert [r["rollbacks"] for r in result.rows] == [0] * back_to + [1] * (3 - back_to)
    assert [r["lr_scale"] for r in result.rows] == [1.0] * back_to + [0.5] * (3 - back_to)
    err = capfd.readouterr().err
    assert f"rolled back to epoch {back_to}, learning rate x0.5 (rollback 1/3)" in err
    assert "non-finite search loss (nan) at epoch" in err
    # every epoch's genotype and metrics exactly once, all from finite architecture weights
    assert sorted(p.name for p in (tmp_path / "genotypes").glob("*.json")) == [f"epoch_00{e}.json" for e in (1, 2, 3)]
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["rollbacks"] == 1 and state["epoch"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert load_genotype(tmp_path / "genotype.json") == result.genotype


@requires_ptb
def test_search_gives_up_after_max_rollbacks_and_keeps_the_finished_epochs(tmp_path, monkeypatch, capfd):
    cfg = dataclasses.replace(SEARCH, run_dir=str(tmp_path), max_rollbacks=2)
    _poison(monkeypatch, ess.search.loop, "lm_loss", BATCHES_PER_EPOCH + 5, forever=True)
    with pytest.raises(DivergenceError, match=r"^search diverged: non-finite search loss \(nan\) at epoch 2, "
                                              r"batch \d+; gave up after 2 rollbacks \(learning rate x0\.25\)$"):
        search(cfg)
    assert capfd.readouterr().err.count("rolled back to epoch 1") == 2
    # epoch 1 survives whole; nothing of the diverged epoch 2 was derived or written
    assert sorted(p.name for p in (tmp_path / "genotypes").glob("*.json")) == ["epoch_001.json"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


@requires_ptb
def test_nan_architecture_weights_are_caught_before_a_genotype_is_derived(tmp_path, monkeypatch):
    real, calls = Architect.step, [0]

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == BATCHES_PER_EPOCH + 2:
            with torch.no_grad():
                next(iter(self.model.arch_parameters())).fill_(float("nan"))
        return out

    monkeypatch.setattr(Architect, "step", step)
    result = search(dataclasses.replace(SEARCH, run_dir=str(tmp_path), epochs=2))
    assert [r["rollbacks"] for r in result.rows] == [0, 1]
    assert all(torch.isfinite(a).all() for a in _arch_tensors(tmp_path))


def _arch_tensors(run_dir):
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return [v for k, v in state["model"].items() if "alpha" in k or "arch" in k]


@requires_ptb
def test_resume_from_a_truncated_checkpoint_falls_back_and_matches_an_uninterrupted_run(tmp_path):
    straight = search(dataclasses.replace(SEARCH, run_dir=str(tmp_path / "a")))
    cfg = dataclasses.replace(SEARCH, run_dir=str(tmp_path / "b"))
    search(dataclasses.replace(cfg, epochs=2))
    path = tmp_path / "b" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])                  # the epoch-2 checkpoint is damaged
    with pytest.warns(CheckpointFallbackWarning, match=r"resuming from the previous checkpoint checkpoint\.prev\.pt "
                                                       r"\(epoch 1\)"):
        resumed = search(cfg, resume=True)
    assert _stable(resumed.rows) == _stable(straight.rows)     # no finished epoch lost, and the same results
    assert resumed.genotype == straight.genotype


# -- retraining ----------------------------------------------------------------------------------------


@requires_ptb
def test_training_rolls_back_on_a_nan_gradient(tmp_path, capfd):
    trainer = Trainer(dataclasses.replace(TRAIN, run_dir=str(tmp_path)))
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    calls = [0]

    def nan_once(grad):
        calls[0] += 1
        return grad * float("nan") if calls[0] == BATCHES_PER_EPOCH + 3 else grad

    trainer.model.encoder.weight.register_hook(nan_once)
    trainer.fit()
    rows = trainer.progress.rows
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["rollbacks"] for r in rows] == [0, 1, 1]
    assert rows[-1]["lr"] == pytest.approx(TRAIN.lr * 0.5)
    assert "non-finite gradient norm (nan) at epoch 2" in capfd.readouterr().err
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the NaN never reached a weight


@requires_ptb
def test_training_nan_loss_at_a_chosen_step_then_resume_keeps_the_lower_learning_rate(tmp_path, monkeypatch):
    _poison(monkeypatch, ess.train, "lm_loss", 5)
    train(dataclasses.replace(TRAIN, run_dir=str(tmp_path), epochs=2))
    monkeypatch.undo()
    train(dataclasses.replace(TRAIN, run_dir=str(tmp_path), epochs=3), resume=True)
    rows = load_checkpoint(tmp_path / "checkpoint.pt")["rows"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr_scale"] for r in rows] == [0.5, 0.5, 0.5]
    assert [r["rollbacks"] for r in rows] == [1, 1, 1]


@requires_ptb
def test_a_perplexity_bound_ends_training_with_a_clear_reason_and_saves_nothing_diverged(tmp_path):
    cfg = dataclasses.replace(TRAIN, run_dir=str(tmp_path), max_ppl=1.0, max_rollbacks=1)
    with pytest.raises(DivergenceError, match=r"^training diverged: valid perplexity [\d.e+]+ above the bound "
                                              r"max_ppl=1 at epoch 1; gave up after 1 rollback"):
        train(cfg)
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "checkpoint.pt").exists()
    assert not previous_path(tmp_path / "checkpoint.pt").exists()


@requires_ptb
def test_the_default_perplexity_bound_is_twice_the_vocabulary(tmp_path):
    trainer = Trainer(dataclasses.replace(TRAIN, run_dir=str(tmp_path)))
    assert trainer.guard.max_ppl == 2 * trainer.ntoken == 20_000
    assert Trainer(dataclasses.replace(TRAIN, run_dir=str(tmp_path), max_ppl=math.inf)).guard.max_ppl == math.inf


@requires_ptb
def test_train_cli_reports_divergence_in_one_line(tmp_path, capfd):
    code = ess.train.main(["--smoke-test", "--run-dir", str(tmp_path), "--max-ppl", "1", "--max-rollbacks", "0",
                           "--epochs", "1", "--max-train-tokens", "2000", "--data-dir", DATA_DIR])
    err = capfd.readouterr().err.strip().splitlines()
    assert code != 0 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: training diverged: valid perplexity") and "gave up after 0 rollbacks" in err[-1]


# -- transfer ------------------------------------------------------------------------------------------

def _has_conll() -> bool:
    from pathlib import Path

    return bool(DATA_DIR) and (Path(DATA_DIR) / "conll2003").is_dir()


@pytest.mark.skipif(not _has_conll(), reason="needs CoNLL-2003 in $ESS_DATA_DIR")
def test_transfer_rolls_back_on_a_nan_loss(tmp_path, monkeypatch, capfd):
    _poison(monkeypatch, Tagger, "loss", 12)
    final = transfer(dataclasses.replace(TRANSFER, run_dir=str(tmp_path)))
    rows = load_checkpoint(tmp_path / "checkpoint.pt")["rows"]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["rollbacks"] == 1
    assert rows[1]["lr"] == pytest.approx(TRANSFER.lr * 0.5)
    assert "tagger training: non-finite tagger training loss (nan)" in capfd.readouterr().err
    assert math.isfinite(final["dev/f1"])


@pytest.mark.skipif(not _has_conll(), reason="needs CoNLL-2003 in $ESS_DATA_DIR")
def test_transfer_gives_up_with_one_line(tmp_path, monkeypatch):
    _poison(monkeypatch, Tagger, "loss", 12, forever=True)
    with pytest.raises(DivergenceError, match=r"gave up after 1 rollback \(learning rate x0\.5\)$"):
        transfer(dataclasses.replace(TRANSFER, run_dir=str(tmp_path), max_rollbacks=1))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1   # epoch 1 (batches 1-8) survives
