"""Tests of ess.data: corpus loading and validation, batching, download and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ess.data import (
    CORPORA,
    EOS,
    UNK,
    BPTTIterator,
    CorpusSpec,
    DownloadSpec,
    Vocabulary,
    batchify,
    download_corpus,
    get_batch,
    load_corpus,
    num_tokens,
    register_corpus,
    resolve_data_dir,
    tokenize,
    unregister_corpus,
    verify_corpus,
)
from ess.data.__main__ import main as cli_main
from ess.errors import CheckpointError, DataError

SPLITS = ("train", "valid", "test")
FILES = {s: f"{s}.txt" for s in SPLITS}
DATA_DIR = os.environ.get("ESS_DATA_DIR")


def _has_corpus(name: str) -> bool:
    return bool(DATA_DIR) and all((Path(DATA_DIR) / name / f"{s}.txt").is_file() for s in SPLITS)


needs_ptb = pytest.mark.skipif(not _has_corpus("ptb"), reason="PTB not found: set ESS_DATA_DIR to a dir with ptb/")
needs_wt2 = pytest.mark.skipif(
    not _has_corpus("wikitext-2"), reason="WikiText-2 not found: set ESS_DATA_DIR to a dir with wikitext-2/"
)

TINY = {
    "train": b" the cat sat \n on the mat \n\n <unk> dog \n",
    "valid": b" the dog sat \n",
    "test": b" a cat \n",  # 'a' is not in the train vocabulary: maps to <unk>
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny(tmp_path):
    """A registered tiny corpus (sizes and sha256 of TINY) in a temporary data dir; unregistered after."""
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    spec = CorpusSpec(
        name=name,
        files=FILES,
        sizes={s: len(TINY[s]) for s in SPLITS},
        sha256={s: _sha(TINY[s]) for s in SPLITS},
    )
    register_corpus(spec)
    root = tmp_path / "data"
    (root / name).mkdir(parents=True)
    for split, data in TINY.items():
        (root / name / FILES[split]).write_bytes(data)
    yield spec, root
    unregister_corpus(name)


@pytest.fixture
def bare(tmp_path):
    """A registered corpus without sizes or hashes, whose files the test writes."""
    name = f"bare-{uuid.uuid4().hex[:8]}"
    spec = register_corpus(CorpusSpec(name=name, files=FILES))
    root = tmp_path / "data"
    (root / name).mkdir(parents=True)
    yield spec, root
    unregister_corpus(name)


def _write(root: Path, name: str, split: str, data: bytes) -> Path:
    path = root / name / FILES[split]
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- real corpora


@needs_ptb
@pytest.mark.data
def test_ptb_stats():
    corpus = load_corpus("ptb")
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929_589, 73_760, 82_430)
    assert len(corpus.vocab) == 10_000
    assert corpus.train.dtype == torch.long and corpus.train.dim() == 1
    assert int(corpus.train.max()) == 9_999 and int(corpus.train.min()) == 0
    assert EOS in corpus.vocab and UNK in corpus.vocab
    # 42,068 lines in train, one <eos> each
    assert int((corpus.train == corpus.vocab.stoi[EOS]).sum()) == 42_068
    assert load_corpus("ptb") is corpus  # cached


@needs_wt2
@pytest.mark.data
def test_wikitext2_stats():
    corpus = load_corpus("wikitext-2")
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (2_088_628, 217_646, 245_569)
    assert len(corpus.vocab) == 33_278
    assert corpus.vocab.itos[:3] == [EOS, "=", "Valkyria"]  # order of first appearance


@needs_ptb
@pytest.mark.data
def test_verify_ptb():
    report = verify_corpus("ptb")
    assert report["train"][1] == 5_101_618
    assert report["train"][2] == CORPORA["ptb"].sha256["train"]


@needs_ptb
@pytest.mark.data
def test_cli_stats_ptb():
    env = {**os.environ, "ESS_DATA_DIR": DATA_DIR}
    result = subprocess.run([sys.executable, "-m", "ess.data", "stats", "ptb"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for figure in ("929,589", "73,760", "82,430", "10,000"):
        assert figure in result.stdout


# --------------------------------------------------------------------------- tokenisation and loading


def test_tokenize_matches_awd_lstm_loop():
    text = " a b \n\n c\td \r\n e\r f \n"
    expected = []
    for line in io.StringIO(text, newline=None):  # what `for line in open(path)` yields
        expected += line.split() + [EOS]
    assert tokenize(text) == expected
    assert tokenize("\n") == [EOS]


def test_tiny_corpus_loads(tiny):
    spec, root = tiny
    corpus = load_corpus(spec.name, root)
    assert corpus.vocab.itos == ["the", "cat", "sat", EOS, "on", "mat", UNK, "dog"]
    assert corpus.vocab.decode(corpus.train) == tokenize(TINY["train"].decode())
    assert corpus.vocab.decode(corpus.valid) == ["the", "dog", "sat", EOS]
    assert corpus.vocab.decode(corpus.test) == [UNK, "cat", EOS]
    assert corpus.path == (root / spec.name).resolve()
    assert load_corpus(spec.name, root) is corpus


def test_vocabulary_encode():
    vocab = Vocabulary.from_tokens(["x", "y", "x", EOS])
    assert len(vocab) == 3
    assert vocab.encode(["y", "x"]).tolist() == [1, 0]
    with pytest.raises(DataError, match="'z'"):
        vocab.encode(["z"])


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ESS_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("ESS_DATA_DIR")
    assert resolve_data_dir(None) == Path("data")


def test_changed_file_is_reloaded(bare):
    spec, root = bare
    for split in SPLITS:
        _write(root, spec.name, split, b"a b\n")
    assert len(load_corpus(spec.name, root).vocab) == 3
    _write(root, spec.name, "train", b"a b c d\n")
    assert len(load_corpus(spec.name, root).vocab) == 5


# --------------------------------------------------------------------------- malformed files


def test_unknown_corpus():
    with pytest.raises(DataError, match=r"unknown corpus 'nope'.*ptb.*wikitext-2"):
        load_corpus("nope")


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
    path = _write(root, spec.name, "test", b"")
    with pytest.raises(DataError, match=rf"{path.resolve()}: empty file"):
        load_corpus(spec.name, root)


def test_not_utf8(bare):
    spec, root = bare
    _write(root, spec.name, "train", b"a b\n")
    _write(root, spec.name, "valid", b"a\n")
    path = _write(root, spec.name, "test", b"a b\nb \xff a\n")
    with pytest.raises(DataError, match=rf"{path.resolve()}: not UTF-8 .*0xff at byte offset 6 \(line 2\)"):
        load_corpus(spec.name, root)


def test_truncated_by_size(tiny):
    spec, root = tiny
    path = _write(root, spec.name, "train", TINY["train"][:-5] + b"\n")
    with pytest.raises(DataError, match=rf"{path.resolve()}: truncated: 36 bytes, expected 40"):
        load_corpus(spec.name, root)


def test_truncated_last_line(bare):
    spec, root = bare
    path = _write(root, spec.name, "train", b"a b\nc d")
    _write(root, spec.name, "valid", b"a\n")
    _write(root, spec.name, "test", b"a\n")
    with pytest.raises(DataError, match=rf"{path.resolve()}: truncated: the last line .*no trailing newline"):
        load_corpus(spec.name, root)


def test_checksum_mismatch(tiny):
    spec, root = tiny
    corrupted = TINY["valid"].replace(b"dog", b"cat")  # same size, different bytes
    path = _write(root, spec.name, "valid", corrupted)
    with pytest.raises(DataError, match=rf"{path.resolve()}: sha256 mismatch: file has {_sha(corrupted)}"):
        load_corpus(spec.name, root)
    with pytest.raises(DataError, match="sha256 mismatch"):
        verify_corpus(spec.name, root)


def test_oov_without_unk(bare):
    spec, root = bare
    _write(root, spec.name, "train", b"a b\n")
    _write(root, spec.name, "valid", b"a\n")
    path = _write(root, spec.name, "test", b"a b\n\nb z a\n")
    with pytest.raises(DataError, match=rf"{path.resolve()}: line 3: word 'z' is not in the train vocabulary"):
        load_corpus(spec.name, root)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    train=st.binary(max_size=64) | st.text(max_size=64).map(str.encode),
    valid=st.binary(max_size=32) | st.sampled_from([b"a\n", b"\n", b" <unk> \n"]),
)
def test_random_bytes_load_or_data_error(bare, train, valid):
    spec, root = bare
    _write(root, spec.name, "train", train)
    _write(root, spec.name, "valid", valid)
    _write(root, spec.name, "test", train)
    try:
        corpus = load_corpus(spec.name, root, cache=False)
    except DataError as err:
        assert "\n" not in str(err)
        assert str(root.resolve()) in str(err)
    else:
        assert corpus.train.numel() == len(tokenize(train.decode()))
        assert corpus.test.tolist() == corpus.train.tolist()


def test_cli_bad_file_one_line(tmp_path):
    (tmp_path / "ptb").mkdir()
    for split in SPLITS:
        (tmp_path / "ptb" / f"{split}.txt").write_bytes(b" a b \n")
    result = subprocess.run([sys.executable, "-m", "ess.data", "stats", "ptb", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'ptb' / 'train.txt'}: truncated")


def test_cli_in_process(tiny, capsys):
    spec, root = tiny
    assert cli_main(["stats", spec.name, "--data-dir", str(root)]) == 0
    assert "train 12 / valid 4 / test 3 tokens, vocabulary 8" in capsys.readouterr().out
    assert cli_main(["verify", spec.name, "--data-dir", str(root)]) == 0
    assert capsys.readouterr().out.count("sha256 ok") == 3
    _write(root, spec.name, "test", b"")
    assert cli_main(["verify", spec.name, "--data-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty file" in err
    assert cli_main(["list", "--data-dir", str(root)]) == 0
    assert f"{spec.name}\tmissing" not in capsys.readouterr().out


# --------------------------------------------------------------------------- batching


def test_batchify_layout():
    data = torch.arange(11)
    batched = batchify(data, 3)
    assert batched.shape == (3, 3) and batched.dtype == torch.long
    assert batched.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # column b = b-th chunk, remainder trimmed
    batched[0, 0] = 99
    assert data[0] == 0  # never aliases the (cached) corpus tensor
    assert batchify(data, 1).shape == (11, 1)
    single = batchify(data, 1)
    single[0, 0] = 99
    assert data[0] == 0
    with pytest.raises(DataError):
        batchify(torch.arange(5), 3)


def test_get_batch_targets_are_shifted_inputs():
    source = batchify(torch.arange(40), 4)  # [10, 4]
    data, targets = get_batch(source, 2, 5)
    assert data.shape == targets.shape == (5, 4)
    assert torch.equal(targets[:-1], data[1:])
    assert torch.equal(targets, source[3:8])
    assert torch.equal(targets, data + 1)  # consecutive ids within each column
    data, targets = get_batch(source, 6, 35)  # clipped to the remaining rows
    assert data.shape == (3, 4) and torch.equal(targets, source[7:10])
    assert num_tokens(source) == 9 * 4


def _collect(iterator):
    return [(d.clone(), t.clone(), n) for d, t, n in iterator]


def test_bptt_iterator_covers_every_token_once():
    source = batchify(torch.arange(4003), 4)  # 1000 rows
    batches = _collect(BPTTIterator(source, 35, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.cat([t for _, t, _ in batches]), source[1:])
    assert torch.equal(torch.cat([d for d, _, _ in batches]), source[:-1])
    lengths = [n for _, _, n in batches]
    assert all(5 <= n <= 55 for n in lengths[:-1]) and 1 <= lengths[-1] <= 55
    assert len(set(lengths)) > 5  # lengths really vary


def test_bptt_iterator_length_distribution():
    source = batchify(torch.arange(200_000), 1)
    lengths = [n for _, _, n in BPTTIterator(source, 10, generator=torch.Generator().manual_seed(1),
                                             max_seq_len_delta=5, min_seq_len=3)][:-1]
    assert min(lengths) >= 3 and max(lengths) <= 15
    assert 15 in lengths and 3 in lengths  # both clips are reached with std 5 around bptt 10
    mean = sum(lengths) / len(lengths)
    assert 9.0 < mean < 10.5


def test_bptt_iterator_darts_search_lengths():
    # DARTS's search loop: bptt, or bptt / 2 with probability 0.05, no normal draw
    source = batchify(torch.arange(100_000), 1)
    lengths = [n for _, _, n in BPTTIterator(source, 35, generator=torch.Generator().manual_seed(2),
                                             length_noise=False)][:-1]
    assert set(lengths) == {35, 17}
    assert 0.03 < lengths.count(17) / len(lengths) < 0.08


def test_bptt_iterator_same_seed_same_lengths():
    source = batchify(torch.arange(5000), 2)

    def lengths(seed):
        return [n for _, _, n in BPTTIterator(source, 35, generator=torch.Generator().manual_seed(seed))]

    assert lengths(7) == lengths(7)
    assert lengths(7) != lengths(8)


def test_bptt_iterator_default_generator_follows_global_seed():
    source = batchify(torch.arange(3000), 2)
    torch.manual_seed(5)
    first = [n for *_, n in BPTTIterator(source, 35)]
    torch.manual_seed(5)
    assert [n for *_, n in BPTTIterator(source, 35)] == first


def test_bptt_iterator_resume_is_exact():
    source = batchify(torch.arange(6000), 3)
    generator = torch.Generator().manual_seed(123)
    reference = _collect(BPTTIterator(source, 35, generator=torch.Generator().manual_seed(123)))

    first = BPTTIterator(source, 35, generator=generator)
    head = [next(first) for _ in range(len(reference) // 2)]
    state, rng = first.state_dict(), generator.get_state()
    list(first)  # the run goes on (and consumes randomness) after the checkpoint

    restored_generator = torch.Generator()
    restored_generator.set_state(rng)
    resumed = BPTTIterator(source, 35, generator=restored_generator)
    resumed.load_state_dict(state)
    tail = _collect(resumed)
    assert resumed.batches == len(reference)
    got = head + tail
    assert [n for *_, n in got] == [n for *_, n in reference]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, reference))


def test_bptt_iterator_rejects_state_of_other_source():
    state = BPTTIterator(batchify(torch.arange(100), 2), 5).state_dict()
    with pytest.raises(CheckpointError, match="50 rows"):
        BPTTIterator(batchify(torch.arange(100), 4), 5).load_state_dict(state)


def test_fixed_length_iterator():
    source = batchify(torch.arange(1000), 10)  # 100 rows -> 99 target rows
    lengths = [n for _, _, n in BPTTIterator(source, 35, random_length=False)]
    assert lengths == [35, 35, 29]
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    list(BPTTIterator(source, 35, random_length=False, generator=generator))
    assert torch.equal(generator.get_state(), before)  # evaluation draws nothing


# --------------------------------------------------------------------------- download


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
        sizes={s: len(TINY[s]) for s in SPLITS}, sha256={s: _sha(TINY[s]) for s in SPLITS},
        download=DownloadSpec(url=archive.as_uri(), sha256=_sha(archive.read_bytes()),
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
        spec, sizes={s: len(TINY[s]) for s in SPLITS}, sha256={s: _sha(TINY[s]) for s in SPLITS}))
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
        spec, download=dataclasses.replace(spec.download, sha256=_sha(archive.read_bytes()))))
    target = download_corpus("ptb", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert verify_corpus("ptb", tmp_path / "data")["test"][0] == target / "test.txt"
