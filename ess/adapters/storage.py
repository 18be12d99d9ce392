"""Experiment storage as local paths or URIs (``s3://``, ``gs://``), the latter through pyarrow."""

from __future__ import annotations

from pathlib import Path

from ess.checkpoint import atomic_write_text


def is_uri(path: str) -> bool:
    return "://" in str(path)


def storage_root(storage: str) -> str:
    """``storage`` as Tune needs it: a URI unchanged, a local path made absolute."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def join(*parts: str) -> str:
    return "/".join([str(parts[0]).rstrip("/"), *[str(p).strip("/") for p in parts[1:]]])


def filesystem(path: str):
    """``(pyarrow filesystem, path inside it)`` of a URI."""
    import pyarrow.fs  # remote storage only: pyarrow comes with Ray, not with the core

    return pyarrow.fs.FileSystem.from_uri(path)


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs  # remote storage only: pyarrow comes with Ray, not with the core

    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def read_text(path: str) -> str:
    if not is_uri(path):
        return Path(path).read_text(encoding="utf-8")
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def write_text(path: str, text: str) -> str:
    """Write ``text`` (atomically on a local path: temporary file, then rename); returns ``path``."""
    if not is_uri(path):
        return str(atomic_write_text(Path(path), text))
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode("utf-8"))
    return path


__all__ = ["exists", "filesystem", "is_uri", "join", "read_text", "storage_root", "write_text"]
