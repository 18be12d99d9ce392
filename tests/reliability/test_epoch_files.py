"""An epoch's genotype and weight files become visible with its checkpoint, never beside an older one.

Faults: a checkpoint write that fails (a full disk), and a crash between the checkpoint and the
epoch's files. Either way, what the run directory shows is the checkpoint's epochs, exactly.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

import ess.search.loop
from ess.checkpoint import load_checkpoint
from ess.errors import CheckpointError
from ess.search import PRESETS, SearchConfig, search

from conftest import DATA_DIR, TINY_SEARCH, requires_ptb

pytestmark = requires_ptb

CFG = SearchConfig(**{**PRESETS["smoke"], **TINY_SEARCH, "epochs": 2, "data_dir": DATA_DIR})


def _fail_at(monkeypatch, owner, name: str, call: int, error: Exception) -> None:
    """``owner.name`` (a function of the loop module, or a method) raises ``error`` at its ``call``-th call."""
    real, calls = getattr(owner, name), [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


def _epoch_files(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in [*run_dir.glob("genotypes/epoch_*"),
                                                        *run_dir.glob("arch_weights/epoch_*")])


def test_a_failed_checkpoint_write_leaves_no_file_of_its_epoch(tmp_path, monkeypatch):
    run = tmp_path / "run"
    full = CheckpointError(f"{run}/checkpoint.pt: could not write the checkpoint: No space left on device")
    _fail_at(monkeypatch, ess.search.loop, "save_checkpoint", 2, full)
    with pytest.raises(CheckpointError, match="No space left"):
        search(dataclasses.replace(CFG, run_dir=str(run)))
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert _epoch_files(run) == ["arch_weights/epoch_001.json", "genotypes/epoch_001.json"]
    assert json.loads((run / "genotype.json").read_text()) == json.loads((run / "genotypes/epoch_001.json").read_text())
    assert (run / "arch_weights.json").read_text() == (run / "arch_weights/epoch_001.json").read_text()


def test_a_crash_between_checkpoint_and_files_is_mended_on_resume(tmp_path, monkeypatch):
    clean = search(dataclasses.replace(CFG, run_dir=str(tmp_path / "clean")))
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_at(patch, ess.search.loop.Searcher, "write_artifacts", 2, RuntimeError("killed"))
        with pytest.raises(RuntimeError, match="killed"):
            search(dataclasses.replace(CFG, run_dir=str(run)))
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2 and "genotypes/epoch_002.json" not in _epoch_files(run)
    resumed = search(dataclasses.replace(CFG, run_dir=str(run)), resume=True)
    assert _epoch_files(run) == _epoch_files(tmp_path / "clean")
    for name in ("genotypes/epoch_002.json", "arch_weights/epoch_002.json", "genotype.json"):
        assert json.loads((run / name).read_text()) == json.loads((tmp_path / "clean" / name).read_text()), name
    assert resumed.genotype == clean.genotype


def test_files_of_a_lost_later_epoch_go_on_resume(tmp_path):
    run = tmp_path / "run"
    search(dataclasses.replace(CFG, run_dir=str(run), epochs=1))
    for name in ("genotypes/epoch_002.json", "arch_weights/epoch_002.json"):   # of a checkpoint that was lost
        (run / name).write_text("{}\n")
    search(dataclasses.replace(CFG, run_dir=str(run), epochs=1), resume=True)
    assert _epoch_files(run) == ["arch_weights/epoch_001.json", "genotypes/epoch_001.json"]
