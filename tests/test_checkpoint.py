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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.pt.sha256"]  # no temporary file left behind


def test_a_full_disk_while_writing_is_one_line_and_keeps_both_checkpoints(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ck.save_checkpoint(path, {"epoch": 1})
    ck.save_checkpoint(path, {"epoch": 2})
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match=r"c\.pt: could not write the checkpoint: No space left on device "
                                              r"\(disk full\?\); the previous checkpoint is intact"):
        ck.save_checkpoint(path, {"epoch": 3})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert ck.load_checkpoint(path)["epoch"] == 2
    assert ck.load_checkpoint(ck.previous_path(path))["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_each_save_keeps_the_previous_checkpoint_with_its_checksum(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for epoch in (1, 2, 3):
        ck.save_checkpoint(path, {"epoch": epoch})
    prev = ck.previous_path(path)
    assert prev.name == "checkpoint.prev.pt"
    assert ck.load_checkpoint(path)["epoch"] == 3 and ck.load_checkpoint(prev)["epoch"] == 2
    digest, size = ck.digest_path(path).read_text().split()
    assert int(size) == path.stat().st_size and len(digest) == 64
    ck.save_checkpoint(tmp_path / "best.pt", {"epoch": 1}, keep_previous=False)
    ck.save_checkpoint(tmp_path / "best.pt", {"epoch": 2}, keep_previous=False)
    assert not ck.previous_path(tmp_path / "best.pt").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"epoch": 1, "w": torch.randn(200)})
    ck.save_checkpoint(path, {"epoch": 2, "w": torch.randn(200)})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "flip":           # same size, loads fine as a zip: only the checksum can tell
        i = data.rindex(b"PK") - 1   # inside the tensor data, before the zip directory
        data[i] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(path)                      # no silent fallback unless asked
    with pytest.warns(ck.CheckpointFallbackWarning, match=r"checkpoint\.pt: .*previous checkpoint "
                                                          r"checkpoint\.prev\.pt \(epoch 1\)"):
        state = ck.load_checkpoint(path, fallback=True)
    assert state["epoch"] == 1


def test_both_checkpoints_damaged_is_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"epoch": 1})
    ck.save_checkpoint(path, {"epoch": 2})
    for p in (path, ck.previous_path(path)):
        p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(CheckpointError, match="previous checkpoint is unusable too") as info:
        ck.load_checkpoint(path, fallback=True)
    assert "\n" not in str(info.value)


def test_truncated_and_foreign_files_give_one_line_errors(tmp_path):
    path = ck.save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.randn(100)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"c\.pt: \d+ bytes but c\.pt\.sha256 records \d+") as info:
        ck.load_checkpoint(path)
    assert "\n" not in str(info.value)
    ck.digest_path(path).unlink()        # without its sidecar, the damaged zip itself is refused
    with pytest.raises(CheckpointError, match=r"c\.pt: not a readable checkpoint") as info:
        ck.load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ck.load_checkpoint(tmp_path / "missing.pt")


_FSIZE_CHILD = """
import resource, signal, sys, torch
from ess import checkpoint as ck
from ess.errors import CheckpointError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # the kernel's file-size limit then fails write() with EFBIG
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    ck.save_checkpoint(sys.argv[1], {"epoch": 2, "w": torch.zeros(100_000)})
except CheckpointError as err:
    print(err)
    sys.exit(3)
"""


def test_a_real_write_failure_from_the_kernel_keeps_the_previous_checkpoint(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the write mid-file, as a full disk would."""
    import subprocess
    import sys

    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})
    proc = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(path), "100000"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert ("could not write the checkpoint: File too large (disk full?); the previous checkpoint is intact"
            in proc.stdout)
    assert ck.load_checkpoint(path, required=("epoch",))["epoch"] == 1
    assert not ck.previous_path(path).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


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
