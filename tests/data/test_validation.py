"""Tests of ess.data.validation: each malformed split file is a one-line DataError naming it."""

from __future__ import annotations

import pytest

from ess.data import load_corpus, verify_corpus
from ess.errors import DataError

import corpus_files
from corpus_files import TINY, sha, write

# pytest finds the shared fixtures by their names in this module
tiny = corpus_files.tiny
bare = corpus_files.bare


def test_missing_file(tiny):
    spec, root = tiny
    path = root / spec.name / "valid.txt"
    path.unlink()
    with pytest.raises(DataError) as info:
        load_corpus(spec.name, root)
    message = str(info.value)
    assert str(path.resolve()) in message and "no such file" in message and "\n" not in message


def test_missing_registered_corpus_mentions_download(tmp_path):
    with pytest.raises(DataError, match=r"ptb/train\.txt: no such file.*python -m ess\.data download ptb"):
        load_corpus("ptb", tmp_path)


def test_empty_file(tiny):
    spec, root = tiny
    path = write(root, spec.name, "test", b"")
    with pytest.raises(DataError, match=rf"{path.resolve()}: empty file"):
        load_corpus(spec.name, root)


def test_not_utf8(bare):
    spec, root = bare
    write(root, spec.name, "train", b"a b\n")
    write(root, spec.name, "valid", b"a\n")
    path = write(root, spec.name, "test", b"a b\nb \xff a\n")
    with pytest.raises(DataError, match=rf"{path.resolve()}: not UTF-8 .*0xff at byte offset 6 \(line 2\)"):
        load_corpus(spec.name, root)


def test_truncated_by_size(tiny):
    spec, root = tiny
    path = write(root, spec.name, "train", TINY["train"][:-5] + b"\n")
    with pytest.raises(DataError, match=rf"{path.resolve()}: truncated: 36 bytes, expected 40"):
        load_corpus(spec.name, root)


def test_truncated_last_line(bare):
    spec, root = bare
    path = write(root, spec.name, "train", b"a b\nc d")
    write(root, spec.name, "valid", b"a\n")
    write(root, spec.name, "test", b"a\n")
    with pytest.raises(DataError, match=rf"{path.resolve()}: truncated: the last line .*no trailing newline"):
        load_corpus(spec.name, root)


def test_checksum_mismatch(tiny):
    spec, root = tiny
    corrupted = TINY["valid"].replace(b"dog", b"cat")  # same size, different bytes
    path = write(root, spec.name, "valid", corrupted)
    with pytest.raises(DataError, match=rf"{path.resolve()}: sha256 mismatch: file has {sha(corrupted)}"):
        load_corpus(spec.name, root)
    with pytest.raises(DataError, match="sha256 mismatch"):
        verify_corpus(spec.name, root)
