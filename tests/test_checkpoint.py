"""Atomic checkpoints, safe loading, and RNG state round trips."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from ess import checkpoint as ck
from ess.errors import CheckpointError


def test_round_trip_and_required_fields(tmp_path):
    path = ck.save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.arange(3)}, "epoch": 4})
    state = ck.load_checkpoint(path, required=("model", "epoch"))
    assert state["epoch"] == 4 and torch.equal(state["model"]["w"], torch.arange(3))
    with pytest.raises(CheckpointError, match=r"c\.pt: missing field 'optimizer'"):
        ck.load_checkpoint(path, required=("optimizer",))


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ck.save_checkpoint(path, {"epoch": 1})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        ck.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary file left behind


def test_truncated_and_foreign_files_give_one_line_errors(tmp_path):
    path = ck.save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.randn(100)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"c\.pt: not a readable checkpoint") as info:
        ck.load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ck.load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is rejected, not executed."""
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ck.load_checkpoint(path)


def test_rng_state_round_trip_through_a_file(tmp_path):
    ck.seed_everything(3)
    ck.save_checkpoint(tmp_path / "rng.pt", {"rng": ck.capture_rng_state()})
    expected = (torch.rand(4), np.random.rand(3), random.random())
    ck.seed_everything(99)
    ck.restore_rng_state(ck.load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
