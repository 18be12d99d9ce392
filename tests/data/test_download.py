"""Tests of ess.data.download: fetching an archive, checking its members, leaving nothing on failure."""

from __future__ import annotations

import dataclasses
import uuid
import zipfile
from pathlib import Path

import pytest

from ess.data import (
    CORPORA,
    CorpusSpec,
    DownloadSpec,
    download_corpus,
    load_corpus,
    register_corpus,
    unregister_corpus,
    verify_corpus,
)
from ess.errors import DataError

from corpus_files import DATA_DIR, FILES, SPLITS, TINY, needs_ptb, sha


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tiny_members(**overrides: bytes) -> dict[str, bytes]:
    members = {f"tiny/tiny.{s}.txt": TINY[s] for s in SPLITS}
    members["__MACOSX/tiny/._tiny.train.txt"] = b"\x00\x05\x16\x07 resource fork"
    members["tiny/README"] = b"not a split\n"
    members.update(overrides)
    return members


@pytest.fixture
def downloadable(tmp_path):
    """Register a tiny corpus whose download source is a zip built in tmp_path."""
    name = f"dl-{uuid.uuid4().hex[:8]}"
    archive = _zip(tmp_path / "tiny.zip", _tiny_members())
    spec = CorpusSpec(
        name=name, files=FILES,
        sizes={s: len(TINY[s]) for s in SPLITS}, sha256={s: sha(TINY[s]) for s in SPLITS},
        download=DownloadSpec(url=archive.as_uri(), sha256=sha(archive.read_bytes()),
                              members={s: f"tiny.{s}.txt" for s in SPLITS}),
    )
    register_corpus(spec)
    yield spec, archive, tmp_path / "data"
    unregister_corpus(name)


def test_download_file_url(downloadable):
    spec, archive, root = downloadable
    target = download_corpus(spec.name, root, progress=False)
    assert target == root / spec.name
    assert sorted(p.name for p in target.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert all((target / FILES[s]).read_bytes() == TINY[s] for s in SPLITS)
    assert load_corpus(spec.name, root).vocab.itos[0] == "the"
    archive.unlink()  # verified files present: no second download
    assert download_corpus(spec.name, root, progress=False) == target


def test_download_corrupted_archive_leaves_nothing(downloadable):
    spec, archive, root = downloadable
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{archive.as_uri()}: archive sha256 mismatch"):
        download_corpus(spec.name, root, progress=False)
    assert not (root / spec.name).exists() or not any((root / spec.name).iterdir())


def test_download_bad_member_leaves_nothing(downloadable, tmp_path):
    spec, _, root = downloadable
    bad = _zip(tmp_path / "bad.zip", _tiny_members(**{"tiny/tiny.test.txt": b" a dogs \n"}))
    with pytest.raises(DataError, match="archive sha256 mismatch"):  # a known archive hash binds any URL
        download_corpus(spec.name, root, url=bad.as_uri(), progress=False)
    unregister_corpus(spec.name)
    register_corpus(dataclasses.replace(spec, download=dataclasses.replace(spec.download, sha256=None)))
    with pytest.raises(DataError, match=r"bad\.zip: member tiny/tiny\.test\.txt has 9 bytes, expected at most 8"):
        download_corpus(spec.name, root, url=str(bad), progress=False)  # a local path works as a URL
    short = _zip(tmp_path / "short.zip", _tiny_members(**{"tiny/tiny.test.txt": b" a cat\n"}))
    with pytest.raises(DataError, match=r"short\.zip!tiny/tiny\.test\.txt: truncated: 7 bytes, expected 8"):
        download_corpus(spec.name, root, url=short.as_uri(), progress=False)
    same_size = _zip(tmp_path / "same.zip", _tiny_members(**{"tiny/tiny.test.txt": b" a hat \n"}))
    with pytest.raises(DataError, match=r"same\.zip!tiny/tiny\.test\.txt: sha256 mismatch"):
        download_corpus(spec.name, root, url=same_size.as_uri(), progress=False)
    assert not (root / spec.name).exists()


def test_download_missing_member_and_not_an_archive(downloadable, tmp_path):
    spec, _, root = downloadable
    members = _tiny_members()
    del members["tiny/tiny.valid.txt"]
    partial = _zip(tmp_path / "partial.zip", members)
    unregister_corpus(spec.name)
    register_corpus(dataclasses.replace(spec, download=dataclasses.replace(spec.download, sha256=None)))
    with pytest.raises(DataError, match=r"no member matching 'tiny\.valid\.txt'"):
        download_corpus(spec.name, root, url=partial.as_uri(), progress=False)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not an archive")
    with pytest.raises(DataError, match="not a zip or tar archive"):
        download_corpus(spec.name, root, url=junk.as_uri(), progress=False)
    with pytest.raises(DataError, match="download failed"):
        download_corpus(spec.name, root, url=(tmp_path / "absent.zip").as_uri(), progress=False)
    assert not (root / spec.name).exists()


def test_download_wikitext_layout(monkeypatch, tmp_path):
    """The registered wikitext-2 member patterns, with the expected hashes patched to a tiny zip's."""
    archive = _zip(tmp_path / "wikitext-2-v1.zip", {f"wikitext-2/wiki.{s}.tokens": TINY[s] for s in SPLITS})
    spec = CORPORA["wikitext-2"]
    monkeypatch.setitem(CORPORA, "wikitext-2", dataclasses.replace(
        spec, sizes={s: len(TINY[s]) for s in SPLITS}, sha256={s: sha(TINY[s]) for s in SPLITS}))
    target = download_corpus("wikitext-2", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert (target / "valid.txt").read_bytes() == TINY["valid"]


@needs_ptb
@pytest.mark.data
def test_download_real_ptb_hashes(monkeypatch, tmp_path):
    """A zip of the real PTB files (PTB's member names) passes the registered per-file hashes."""
    members = {f"ptb/ptb.{s}.txt": (Path(DATA_DIR) / "ptb" / f"{s}.txt").read_bytes() for s in SPLITS}
    archive = _zip(tmp_path / "ptb.zip", members)
    spec = CORPORA["ptb"]
    monkeypatch.setitem(CORPORA, "ptb", dataclasses.replace(
        spec, download=dataclasses.replace(spec.download, sha256=sha(archive.read_bytes()))))
    target = download_corpus("ptb", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert verify_corpus("ptb", tmp_path / "data")["test"][0] == target / "test.txt"
