"""Checks of a split file's bytes (presence, size, UTF-8, trailing newline, sha256) before tokenising.

Every problem with a file (missing, empty, not UTF-8, truncated, wrong checksum) is raised as a
:class:`~ess.errors.DataError` whose one-line message starts with the file's full path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ess.data.registry import SPLITS, CorpusSpec
from ess.errors import DataError, decode_utf8


def one_line(text: object) -> str:
    """Collapse ``text`` to a single line, so that error messages stay one line long."""
    return " ".join(str(text).split())


def _missing_message(spec: CorpusSpec, path: Path) -> str:
    files = ", ".join(spec.files[s] for s in SPLITS)
    where = f"put {files} of corpus {spec.name!r} in {path.parent}"
    if spec.download is not None:
        where += f" (`python -m ess.data download {spec.name} --data-dir {path.parent.parent}` fetches them)"
    return f"{path}: no such file; {where}"


def read_split_bytes(spec: CorpusSpec, split: str, path: Path) -> bytes:
    """Read a split file whole; a :class:`DataError` if it is missing, not a file or unreadable."""
    # os.path (not Path.exists) so that a name the OS refuses (too long, NUL byte) reads as missing
    if not os.path.exists(path):
        raise DataError(_missing_message(spec, path))
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file")
    try:
        return path.read_bytes()
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read ({one_line(getattr(err, 'strerror', None) or err)})") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_split_bytes(spec: CorpusSpec, split: str, path: Path | str, data: bytes) -> str:
    """Validate the bytes of one split file and return them decoded.

    Checks, in order: non-empty, size against the registered size (smaller means truncated),
    UTF-8 (the error gives the byte offset), a trailing newline on the last line (a missing one
    means a cut-off download or copy), and the registered sha256.
    """
    if not data:
        raise DataError(f"{path}: empty file (split {split} of corpus {spec.name!r})")
    expected = spec.size(split)
    if expected is not None and len(data) < expected:
        raise DataError(f"{path}: truncated: {len(data):,} bytes, expected {expected:,}")
    if expected is not None and len(data) > expected:
        raise DataError(f"{path}: {len(data):,} bytes, expected {expected:,} (not the registered {spec.name} file)")
    text = decode_utf8(data, str(path), DataError)
    if not data.endswith((b"\n", b"\r")):
        start = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        raise DataError(f"{path}: truncated: the last line (from byte offset {start}) has no trailing newline")
    digest = spec.digest(split)
    if digest is not None:
        actual = sha256_hex(data)
        if actual != digest:
            raise DataError(f"{path}: sha256 mismatch: file has {actual}, corpus {spec.name!r} expects {digest}")
    return text
