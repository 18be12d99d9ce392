"""Atomic, verifiable checkpoints and the random-number state they carry.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: no pickled classes, no code from the file is ever run.

Writing (:func:`save_checkpoint`): the bytes go to a temporary file in the same directory, which
is fsynced; only then is the old checkpoint renamed to ``<name>.prev<suffix>`` and the new one
renamed into place, and a sidecar ``<file>.sha256`` records the new file's digest and size. A crash
or a full disk mid-write therefore leaves the previous checkpoint (and the one before) intact. At
every moment each file's sidecar is either right or absent, never stale.

Loading (:func:`load_checkpoint`): the size and sha256 are checked against the sidecar when there
is one; with ``fallback=True`` a missing, truncated or corrupt latest checkpoint gives a warning and
the previous one is loaded instead.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ess.errors import CheckpointError


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it is durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The mode an ordinary ``open`` would give (mkstemp's files are 0600 otherwise)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


class CheckpointFallbackWarning(UserWarning):
    """The latest checkpoint was unusable and the previous one was loaded instead."""


def _write_temp(path: Path, data: bytes) -> str:
    """``data`` in a fsynced temporary file beside ``path``; its name. Removed again on any error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink(Path(tmp))
        raise
    return tmp


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(Path(path), text.encode("utf-8"))


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def digest_path(path: str | os.PathLike) -> Path:
    """The sidecar holding ``path``'s sha256 and size."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _digest_line(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}\n"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, keep_previous: bool = True) -> Path:
    """Serialise ``state`` with torch.save and write it atomically, keeping the previous checkpoint.

    A write error (a full disk, a quota) raises a one-line :class:`CheckpointError` and leaves the
    existing checkpoints untouched.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    try:
        tmp = _write_temp(path, data)
    except OSError as err:
        full = " (disk full?)" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        raise CheckpointError(f"{path}: could not write the checkpoint: {err.strerror or err}{full}; "
                              "the previous checkpoint is intact") from None
    try:
        if keep_previous and path.exists():
            prev = previous_path(path)
            _unlink(digest_path(prev))                       # the old .prev loses its sidecar first ...
            os.replace(path, prev)                           # ... then the latest becomes .prev
            if digest_path(path).exists():
                os.replace(digest_path(path), digest_path(prev))
        else:
            _unlink(digest_path(path))
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise
    fsync_dir(path.parent)
    try:
        atomic_write_text(digest_path(path), _digest_line(data))
    except OSError as err:
        raise CheckpointError(f"{digest_path(path)}: could not write the checksum: {err.strerror or err}; "
                              f"the checkpoint {path} itself is complete") from None
    return path


def _verify(path: Path, data: bytes) -> None:
    sidecar = digest_path(path)
    if not os.path.isfile(sidecar):
        return
    try:
        fields = sidecar.read_text(encoding="utf-8").split()
        digest, size = fields[0], int(fields[1])
    except (OSError, UnicodeDecodeError, IndexError, ValueError):
        raise CheckpointError(f"{sidecar}: unreadable checksum file (expected '<sha256> <size>')") from None
    if len(data) != size:
        raise CheckpointError(f"{path}: {len(data)} bytes but {sidecar.name} records {size} (truncated or "
                              "overwritten)")
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{path}: sha256 differs from the one recorded in {sidecar.name} (corrupt file)")


def _load_one(path: Path, required: Iterable[str], map_location: str | torch.device) -> dict[str, Any]:
    if not os.path.isfile(path):  # os.path: a name the OS refuses (too long, NUL byte) reads as missing
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {err.strerror or err}") from None
    _verify(path, data)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict, got {type(state).__name__})")
    for key in required:
        if key not in state:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return state


def load_checkpoint(path: str | os.PathLike, required: Iterable[str] = (),
                    map_location: str | torch.device = "cpu", *, fallback: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, checking its size and sha256 against the sidecar.

    An unusable file raises a one-line :class:`CheckpointError`; with ``fallback`` the previous
    checkpoint (:func:`previous_path`) is tried next, with a :class:`CheckpointFallbackWarning`.
    """
    path, required = Path(path), tuple(required)
    try:
        return _load_one(path, required, map_location)
    except CheckpointError as err:
        if not fallback or not path.name:  # no previous of "" or "/"
            raise
        prev = previous_path(path)
        if not os.path.isfile(prev):
            raise
        try:
            state = _load_one(prev, required, map_location)
        except CheckpointError as prev_err:
            raise CheckpointError(f"{err}; the previous checkpoint is unusable too ({prev_err})") from None
        warnings.warn(f"{err}; resuming from the previous checkpoint {prev.name} (epoch {state.get('epoch', '?')})",
                      CheckpointFallbackWarning, stacklevel=2)
        return state


# --------------------------------------------------------------------------------------------------
# Random-number state


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG that training touches (torch CPU and CUDA, numpy, python)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np_s = state["numpy"]
    np.random.set_state(("MT19937", np_s["keys"].numpy().astype(np.uint32), np_s["pos"],
                         np_s["has_gauss"], np_s["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python: fixes initialisation, data order and dropout."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
