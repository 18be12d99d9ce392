"""Bad input everywhere (issue #7, part 4): every reader and parser either returns a valid object or raises
the project's own error (:class:`ess.errors.ESSError`) with a one-line message naming the file, and the line
or field where one applies. Any other exception (KeyError, ValueError, UnicodeDecodeError, RecursionError,
yaml or json errors ...) fails the test.

Each reader gets hypothesis strategies of two kinds: random input (bytes, text, JSON values, YAML documents,
argument vectors) and *mutations of a valid example* (lines deleted, duplicated, swapped or replaced, a
column changed, bytes flipped, inserted or cut off, a BOM, CRLF line ends, a field given another value or
type, keys added or removed, deep nesting). Hand-written cases pin the messages.

The number of inputs tried per input class is counted and printed at the end of the module (and written as
JSON to ``$ESS_RELIABILITY_COUNTS`` when set); ``ESS_FUZZ_SCALE=10`` multiplies every ``max_examples``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ess.adapters.ray.config import JobConfig
from ess.config import config_from_mapping, config_to_dict, load_yaml, resolve_config, save_config
from ess.data import (
    SPLITS,
    CorpusSpec,
    DownloadSpec,
    download_corpus,
    load_corpus,
    register_corpus,
    tokenize,
    unregister_corpus,
)
from ess.errors import ConfigError, DataError, ESSError, GenotypeError
from ess.search import SearchConfig
from ess.space.genotype import (
    DARTS_V2,
    Edge,
    ESSGenotype,
    InterGenotype,
    InterNode,
    genotype_from_dict,
    parse_genotype_json,
)
from ess.space.ops import PRIMITIVES
from ess.space.refs import load_genotype
from ess.tagging.conll import TASKS, parse_conll, read_conll
from ess.tagging.embeddings import read_glove
from ess.tagging.schemes import is_valid_tag
from ess.train import TrainConfig
from ess.transfer import TransferConfig

# --------------------------------------------------------------------------------------------------
# Bookkeeping: inputs tried per class, and the one check every rejection must pass

SCALE = float(os.environ.get("ESS_FUZZ_SCALE", "1"))
TRIED: collections.Counter[str] = collections.Counter()
VALID: collections.Counter[str] = collections.Counter()
REJECTED: collections.Counter[str] = collections.Counter()
USAGE: collections.Counter[str] = collections.Counter()  # command lines argparse refused (usage + error, status 2)
MAX_MESSAGE = 600  # characters of a message besides the file names it quotes


def short_id(value: Any) -> str:
    """A short test id for a long parameter (a 5000-character path, a 100,000-deep bracket run)."""
    if isinstance(value, type):
        return value.__name__
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 24 else f"{text[:16]}...({len(text)})"


def fuzz(n: int):
    """hypothesis settings for ``n`` examples (times ``$ESS_FUZZ_SCALE``), no deadline."""
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def check_message(err: ESSError, names: tuple[str, ...] = (), quoted: str = "") -> str:
    """A rejection's message: non-empty, one line, quoting each of ``names``, and no longer than
    :data:`MAX_MESSAGE` plus the names (and up to three copies of ``quoted``, a user-given path)."""
    msg = str(err)
    assert msg.strip(), f"{type(err).__name__} with an empty message"
    assert len(msg.splitlines()) == 1 and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
    assert "Traceback" not in msg
    budget = MAX_MESSAGE + sum(len(n) for n in names) + 3 * len(quoted.encode("unicode_escape"))
    assert len(msg) <= budget, f"message too long ({len(msg)}): {msg[:200]!r}"
    for name in names:
        assert name in msg, f"message does not name {name!r}: {msg!r}"
    return msg


def attempt(kind: str, fn: Callable[[], Any], *, error: type[ESSError] = ESSError,
            names: tuple[str, ...] = (), quoted: str = "") -> Any:
    """Run one input: return the value, or the :class:`ESSError` (checked); anything else propagates."""
    TRIED[kind] += 1
    try:
        value = fn()
    except ESSError as err:
        assert isinstance(err, error), f"expected {error.__name__}, got {type(err).__name__}: {err}"
        check_message(err, names, quoted)
        REJECTED[kind] += 1
        return err
    VALID[kind] += 1
    return value


@pytest.fixture(scope="module", autouse=True)
def _inputs_tried_summary(request):
    yield
    rows = {k: {"tried": TRIED[k], "valid": VALID[k], "rejected": REJECTED[k],
                **({"usage": USAGE[k]} if USAGE[k] else {})} for k in sorted(TRIED)}
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and rows:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            _write_summary(reporter, rows)
    out = os.environ.get("ESS_RELIABILITY_COUNTS")
    if out:
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")


def _write_summary(reporter, rows: dict[str, dict[str, int]]) -> None:
    reporter.write_line("")
    reporter.write_line(f"inputs tried per class (ESS_FUZZ_SCALE={SCALE:g}):")
    for k, r in rows.items():
        usage = f"  {r['usage']:>5} argparse usage errors" if "usage" in r else ""
        reporter.write_line(f"  {k:<42} {r['tried']:>6} tried  {r['valid']:>6} valid  "
                            f"{r['rejected']:>6} rejected with an ESSError{usage}")


# --------------------------------------------------------------------------------------------------
# Generic mutations of a valid example

FIELD_VALUES = [b"", b" ", b"\t", b"O", b"B-PER", b"I-", b"X-LOC", b"B-", b"-DOCSTART-", b"nan", b"inf", b"1e999",
                b"-1", b"0", b"9" * 40, b"\xff", b"\xef\xbb\xbf", b"\xc3", b"\x00", b"\r", b"\x85", b"\xe2\x80\xa8",
                b"null", b"[", b"{", b"!!python/object/apply:os.system ['true']", b"&a [*a]", b"\"", b"'"]
LINE_OPS = ("delete", "duplicate", "swap", "replace", "column", "blank", "crlf", "cr")
BYTE_OPS = ("flip", "truncate", "insert", "bom", "latin1")


@st.composite
def mutated(draw, sample: bytes, column_sep: bytes | None = b" ", max_ops: int = 3) -> bytes:
    """``sample`` after 1..``max_ops`` line-level and byte-level mutations."""
    lines = sample.split(b"\n")
    data: bytes | None = None
    for op in draw(st.lists(st.sampled_from(LINE_OPS + BYTE_OPS), min_size=1, max_size=max_ops)):
        if op in BYTE_OPS and data is None:
            data = b"\n".join(lines)
        if data is not None and op in LINE_OPS:
            lines, data = data.split(b"\n"), None
        if op in LINE_OPS:
            i = draw(st.integers(0, max(len(lines) - 1, 0)))
            if not lines:
                lines = [b""]
            if op == "delete":
                del lines[i]
            elif op == "duplicate":
                lines.insert(i, lines[i])
            elif op == "swap":
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            elif op == "replace":
                lines[i] = draw(st.sampled_from(FIELD_VALUES) | st.binary(max_size=24)
                                | st.text(max_size=24).map(lambda t: t.encode("utf-8")))
            elif op == "column":
                sep = column_sep or b" "
                cols = lines[i].split(sep)
                k = draw(st.integers(0, max(len(cols) - 1, 0)))
                how = draw(st.sampled_from(("drop", "dup", "set", "add")))
                value = draw(st.sampled_from(FIELD_VALUES) | st.binary(max_size=8))
                if how == "drop" and cols:
                    del cols[k]
                elif how == "dup" and cols:
                    cols.insert(k, cols[k])
                elif how == "set" and cols:
                    cols[k] = value
                else:
                    cols.append(value)
                lines[i] = sep.join(cols)
            elif op == "blank":
                lines.insert(i, draw(st.sampled_from([b"", b" ", b"\t", b"  \t "])))
            elif op == "crlf":
                lines = [ln + b"\r" for ln in lines]
            elif op == "cr":
                lines = [b"\r".join(lines)]
        else:
            assert data is not None
            i = draw(st.integers(0, max(len(data) - 1, 0)))
            if op == "flip" and data:
                data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
            elif op == "truncate":
                data = data[:i]
            elif op == "insert":
                data = data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
            elif op == "bom":
                data = b"\xef\xbb\xbf" + data
            elif op == "latin1":
                data = data[:i] + b"\xe9" + data[i:]
    return data if data is not None else b"\n".join(lines)


def raw_or_mutated(sample: bytes, column_sep: bytes | None = b" ", max_size: int = 400):
    """Random bytes, random text, or a mutation of ``sample``."""
    return st.one_of(st.binary(max_size=max_size), st.text(max_size=max_size // 2).map(lambda t: t.encode("utf-8")),
                     mutated(sample, column_sep), mutated(sample, column_sep, max_ops=6))


# --------------------------------------------------------------------------------------------------
# Checkpoint paths (the contents are covered by test_safe_defaults.py and tests/test_checkpoint.py)


@pytest.mark.parametrize("name", ["x" * 5000, "a\x00b", "/tmp/" + "y" * 300 + "/c.pt", "", "/", "two\nlines.pt"],
                         ids=short_id)
@pytest.mark.parametrize("fallback", [False, True])
def test_checkpoint_unusable_paths(name, fallback):
    from ess.checkpoint import load_checkpoint
    from ess.errors import CheckpointError

    err = attempt("checkpoint paths (hand cases)", lambda: load_checkpoint(name, fallback=fallback),
                  error=CheckpointError, quoted=name)
    assert isinstance(err, CheckpointError)


# --------------------------------------------------------------------------------------------------
# Language-model corpora: load_corpus (missing, empty, non-UTF-8, wrong sha, random bytes)

FUZZ_CORPUS = "reliability-fuzz"
SHA_CORPUS = "reliability-sha"
LM_TRAIN = (b" aer banknote berlitz calloway centrust cluett fromstein gitano guterman\n"
            b" pierre <unk> N years old will join the board as a nonexecutive director nov. N\n"
            b" mr. <unk> is chairman of <unk> n.v. the dutch publishing group\n\n")
LM_VALID = b" the board will join mr. <unk>\n"
LM_TEST = b" pierre is chairman of the group\n"
FILES = {s: f"{s}.txt" for s in SPLITS}


@pytest.fixture(scope="module")
def fuzz_corpus():
    register_corpus(CorpusSpec(name=FUZZ_CORPUS, files=FILES), overwrite=True)
    yield FUZZ_CORPUS
    unregister_corpus(FUZZ_CORPUS)


def _write_corpus(root: Path, name: str, splits: dict[str, bytes | None]) -> dict[str, Path]:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, data in splits.items():
        path = d / FILES[split]
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(data)
        paths[split] = path
    return paths


def _check_corpus(corpus, texts: dict[str, bytes]) -> None:
    n = len(corpus.vocab)
    assert "<eos>" in corpus.vocab
    for split in SPLITS:
        ids = corpus.split(split)
        assert ids.dtype == torch.long and ids.dim() == 1 and ids.numel() > 0
        assert int(ids.min()) >= 0 and int(ids.max()) < n
    assert corpus.vocab.decode(corpus.train) == tokenize(texts["train"].decode("utf-8"))


@fuzz(120)
@given(train=raw_or_mutated(LM_TRAIN), valid=raw_or_mutated(LM_VALID), test=st.sampled_from([LM_TEST, b"\n", b""]))
def test_load_corpus_random_and_mutated_files(fuzz_corpus, tmp_path, train, valid, test):
    texts = {"train": train, "valid": valid, "test": test}
    paths = _write_corpus(tmp_path, fuzz_corpus, texts)
    out = attempt("corpus files (load_corpus)", lambda: load_corpus(fuzz_corpus, tmp_path, cache=False),
                  error=DataError)
    if isinstance(out, DataError):
        assert any(str(p) in str(out) for p in paths.values()), f"names no file: {out}"
    else:
        _check_corpus(out, texts)


@pytest.mark.parametrize("case,pattern", [
    ("missing", r"train\.txt: no such file"),
    ("empty", r"valid\.txt: empty file"),
    ("not_utf8", r"valid\.txt: not UTF-8 text: invalid byte 0xff at byte offset \d+ \(line 2\)"),
    ("no_newline", r"test\.txt: truncated: the last line"),
    ("directory", r"train\.txt: not a regular file"),
    ("oov_no_unk", r"test\.txt: line 1: word 'zebra' is not in the train vocabulary"),
], ids=short_id)
def test_load_corpus_hand_cases(fuzz_corpus, tmp_path, case, pattern):
    splits: dict[str, bytes | None] = {"train": LM_TRAIN, "valid": LM_VALID, "test": LM_TEST}
    if case == "missing":
        splits["train"] = None
    elif case == "empty":
        splits["valid"] = b""
    elif case == "not_utf8":
        splits["valid"] = b" the board\n will \xff join\n"
    elif case == "no_newline":
        splits["test"] = b" the board"
    elif case == "oov_no_unk":
        splits = {"train": b" the cat\n", "valid": b" the\n", "test": b" zebra\n"}
    paths = _write_corpus(tmp_path, fuzz_corpus, splits)
    if case == "directory":
        paths["train"].unlink()
        paths["train"].mkdir()
    err = attempt("corpus files (hand cases)", lambda: load_corpus(fuzz_corpus, tmp_path, cache=False),
                  error=DataError)
    assert isinstance(err, DataError)
    assert re.search(pattern, str(err)), str(err)
    assert str(tmp_path) in str(err)


def test_load_corpus_wrong_sha256(tmp_path):
    import hashlib

    good = {"train": LM_TRAIN, "valid": LM_VALID, "test": LM_TEST}
    register_corpus(CorpusSpec(name=SHA_CORPUS, files=FILES,
                               sha256={s: hashlib.sha256(b).hexdigest() for s, b in good.items()}), overwrite=True)
    try:
        _write_corpus(tmp_path, SHA_CORPUS, good)
        assert load_corpus(SHA_CORPUS, tmp_path, cache=False).train.numel() > 0
        _write_corpus(tmp_path, SHA_CORPUS, {"valid": LM_VALID.replace(b"board", b"beard")})
        err = attempt("corpus files (hand cases)", lambda: load_corpus(SHA_CORPUS, tmp_path, cache=False),
                      error=DataError)
        assert re.search(r"valid\.txt: sha256 mismatch: file has [0-9a-f]{64}", str(err)), str(err)
    finally:
        unregister_corpus(SHA_CORPUS)


@pytest.mark.parametrize("data_dir", ["x" * 5000, "a\x00b", "/tmp/" + "y" * 300 + "/z", "multi\nline"], ids=short_id)
def test_load_corpus_unusable_data_dir(fuzz_corpus, data_dir):
    err = attempt("corpus files (hand cases)", lambda: load_corpus(fuzz_corpus, data_dir, cache=False),
                  error=DataError, quoted=os.path.abspath(data_dir.replace("\x00", "")))
    assert isinstance(err, DataError)


# --------------------------------------------------------------------------------------------------
# Corpus download: archive checks (random bytes, damaged zip/tar, wrong members), no network

DL_CORPUS = "reliability-download"
DL_MEMBERS = {s: f"fz.{s}.txt" for s in SPLITS}
DL_CONTENT = {"train": LM_TRAIN, "valid": LM_VALID, "test": LM_TEST}


@pytest.fixture(scope="module")
def dl_corpus():
    register_corpus(CorpusSpec(name=DL_CORPUS, files=FILES,
                               download=DownloadSpec(url="file:///nonexistent/archive.zip", members=DL_MEMBERS)),
                    overwrite=True)
    yield DL_CORPUS
    unregister_corpus(DL_CORPUS)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


VALID_MEMBERS = {f"ptb/{DL_MEMBERS[s]}": DL_CONTENT[s] for s in SPLITS}


@st.composite
def member_sets(draw) -> dict[str, bytes]:
    """The valid members with names or contents changed, members dropped or added."""
    members = dict(VALID_MEMBERS)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(members) or ["x"]))
        how = draw(st.sampled_from(("drop", "rename", "content", "extra", "dup_base")))
        if how == "drop" and name in members:
            del members[name]
        elif how == "rename" and name in members:
            members[draw(st.sampled_from(["fz.train.txt.bak", "__MACOSX/ptb/._fz.valid.txt", "FZ.TEST.TXT",
                                          "a/b/" + name.split("/")[-1]]))] = members.pop(name)
        elif how == "content" and name in members:
            members[name] = draw(mutated(members[name]) | st.binary(max_size=64))
        elif how == "extra":
            members[draw(st.text(min_size=1, max_size=12))] = draw(st.binary(max_size=16))
        elif how == "dup_base" and name in members:
            members["copy/" + name.split("/")[-1]] = members[name]
    return members


ARCHIVES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([_zip(VALID_MEMBERS), _tar(VALID_MEMBERS), _tar(VALID_MEMBERS, "w")]).flatmap(
        lambda a: mutated(a, column_sep=None)),
    member_sets().map(_zip),
    member_sets().map(lambda m: _tar(m, "w:gz")),
    member_sets().map(lambda m: _tar(m, "w:xz")),
)


@fuzz(100)
@given(archive=ARCHIVES)
def test_download_random_and_damaged_archives(dl_corpus, tmp_path, archive):
    source = tmp_path / "archive.bin"
    source.write_bytes(archive)
    out = attempt("download archives (download_corpus)",
                  lambda: download_corpus(dl_corpus, tmp_path / "data", url=str(source), progress=False, force=True),
                  error=DataError, names=(source.name,))
    if not isinstance(out, DataError):
        for split in SPLITS:
            assert (out / FILES[split]).read_bytes() == DL_CONTENT[split] or (out / FILES[split]).stat().st_size > 0


@pytest.mark.parametrize("url", ["x" * 5000, "a\x00b", "file:///no/such/archive.zip", "http://[::1", "ftp:/",
                                 "no-such-file.zip", ""], ids=short_id)
def test_download_unusable_sources(dl_corpus, tmp_path, url):
    err = attempt("download archives (hand cases)",
                  lambda: download_corpus(dl_corpus, tmp_path / "data", url=url, progress=False, force=True),
                  error=DataError, quoted=url)
    assert isinstance(err, DataError)


def _zip_with(flag_bit: int = 0, method: int | None = None) -> bytes:
    """The valid zip with every member marked encrypted (``flag_bit=1``) or compressed by ``method``."""
    import struct

    data = bytearray(_zip(VALID_MEMBERS))
    for sig, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        i = data.find(sig)
        while i >= 0:
            data[i + flags_at] |= flag_bit
            if method is not None:
                data[i + method_at:i + method_at + 2] = struct.pack("<H", method)
            i = data.find(sig, i + 4)
    return bytes(data)


@pytest.mark.parametrize("archive,pattern", [
    (_zip_with(method=99), r"damaged or unsupported archive \(That compression method is not supported"),
    (_zip_with(flag_bit=1), r"damaged or unsupported archive \(File .* is encrypted"),
], ids=["zip-method-99", "zip-encrypted"])
def test_download_unsupported_zip_members(dl_corpus, tmp_path, archive, pattern):
    source = tmp_path / "odd.zip"
    source.write_bytes(archive)
    err = attempt("download archives (hand cases)",
                  lambda: download_corpus(dl_corpus, tmp_path / "data", url=str(source), progress=False, force=True),
                  error=DataError, names=("odd.zip",))
    assert isinstance(err, DataError) and re.search(pattern, str(err)), str(err)


def test_download_into_a_data_dir_that_is_a_file(dl_corpus, tmp_path):
    source = tmp_path / "good.zip"
    source.write_bytes(_zip(VALID_MEMBERS))
    (tmp_path / "file").write_text("not a directory")
    err = attempt("download archives (hand cases)",
                  lambda: download_corpus(dl_corpus, tmp_path / "file", url=str(source), progress=False, force=True),
                  error=DataError)
    assert isinstance(err, DataError) and "cannot write" in str(err), str(err)


def test_download_wrong_sha256_is_refused(tmp_path):
    """A local archive whose sha256 differs from the registered one is refused and installs nothing."""
    name = "reliability-download-sha"
    register_corpus(CorpusSpec(name=name, files=FILES, download=DownloadSpec(
        url="file:///nonexistent.zip", members=DL_MEMBERS, sha256="0" * 64)), overwrite=True)
    try:
        source = tmp_path / "good.zip"
        source.write_bytes(_zip(VALID_MEMBERS))
        err = attempt("download archives (hand cases)",
                      lambda: download_corpus(name, tmp_path / "data", url=str(source), progress=False),
                      error=DataError, names=("good.zip",))
        assert "archive sha256 mismatch" in str(err) and "0" * 64 in str(err)
        assert not (tmp_path / "data" / name).exists()
    finally:
        unregister_corpus(name)


# --------------------------------------------------------------------------------------------------
# Genotype JSON: random JSON values, mutated valid genotypes, random and mutated text

VALID_GENOTYPE = ESSGenotype(
    DARTS_V2.intra,
    InterGenotype(3, (InterNode(Edge("tanh", 0), Edge("relu", 2)), InterNode(Edge("sigmoid", 3), Edge("identity", 1))),
                  "sum", True),
    InterGenotype(2, (InterNode(Edge("relu", 1), Edge("tanh", 0)),), "product", False))
VALID_GENOTYPE_DICT = VALID_GENOTYPE.to_dict()
GENOTYPE_KEYS = ["intra", "history", "input", "recurrent", "concat", "m", "nodes", "a", "b", "combination",
                 "residual"]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.integers(-3, 12),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
                         st.sampled_from([*PRIMITIVES, "Tanh", "conv", "", "product", "sum", "search"]))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(GENOTYPE_KEYS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=16)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_genotype_dicts(draw) -> tuple[Any, tuple]:
    """A valid genotype dict with one place changed; returns it and the path changed."""
    data = copy.deepcopy(VALID_GENOTYPE_DICT)
    path = draw(st.sampled_from(_paths(data)))
    how = draw(st.sampled_from(("value", "delete", "extra_key", "duplicate", "wrap", "deep", "empty", "op", "pred")))
    if not path:
        return (draw(json_values) if how == "value" else [data] if how == "wrap" else {}), path
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if how == "value":
        parent[key] = draw(json_values)
    elif how == "delete":
        del parent[key]
    elif how == "extra_key" and isinstance(parent[key], dict):
        parent[key][draw(st.text(max_size=6) | st.sampled_from(GENOTYPE_KEYS))] = draw(json_scalars)
    elif how == "duplicate" and isinstance(parent[key], list) and parent[key]:
        parent[key].append(parent[key][-1])
    elif how == "wrap":
        parent[key] = [parent[key]]
    elif how == "deep":
        value: Any = parent[key]
        for _ in range(draw(st.integers(1, 200))):
            value = [value]
        parent[key] = value
    elif how == "empty":
        parent[key] = type(parent[key])() if isinstance(parent[key], (list, dict, str)) else None
    elif how == "op":
        parent[key] = draw(st.sampled_from([*PRIMITIVES, "TANH", "conv3", "", " relu"]))
    elif how == "pred":
        parent[key] = draw(st.integers(-3, 20) | st.sampled_from([1.0, "1", None, True, 10**30]))
    return data, path


def _check_genotype(g: ESSGenotype) -> None:
    assert isinstance(g, ESSGenotype)
    assert genotype_from_dict(json.loads(g.to_json()), "round trip") == g
    assert g.intra.steps >= 1 and g.history.m >= 1 and g.input.m >= 1


@fuzz(250)
@given(data=json_values)
def test_genotype_random_json_values(data):
    out = attempt("genotype JSON (random values)", lambda: parse_genotype_json(json.dumps(data), "g.json"),
                  error=GenotypeError, names=("g.json",))
    if not isinstance(out, GenotypeError):
        _check_genotype(out)


@fuzz(400)
@given(mutation=mutated_genotype_dicts())
def test_genotype_mutated_valid_dicts(mutation):
    data, path = mutation
    out = attempt("genotype JSON (mutated genotypes)", lambda: genotype_from_dict(data, "mut.json"),
                  error=GenotypeError, names=("mut.json",))
    if isinstance(out, GenotypeError):
        section = path[0] if path and path[0] in ("intra", "history", "input") else None
        msg = str(out)
        assert "top level" in msg or any(s in msg for s in ("intra", "history", "input")), msg
        if section is not None and path != (section,) and len(path) > 1:
            # a change inside one section is reported in that section (or at the top level)
            assert section in msg or "top level" in msg, (path, msg)
    else:
        _check_genotype(out)


GENOTYPE_TEXT = VALID_GENOTYPE.to_json().encode()


@fuzz(200)
@given(text=raw_or_mutated(GENOTYPE_TEXT, column_sep=b",", max_size=300))
def test_genotype_files_random_and_mutated_text(tmp_path, text):
    path = tmp_path / "genotype.json"
    path.write_bytes(text)
    out = attempt("genotype JSON (files: random/mutated text)", lambda: load_genotype(path), error=GenotypeError,
                  names=(str(path),))
    if not isinstance(out, GenotypeError):
        _check_genotype(out)


@pytest.mark.parametrize("text,pattern", [
    ("", r"not valid JSON \(line 1, column 1"),
    ("[" * 100_000 + "]" * 100_000, r"not valid JSON"),
    ("{\"intra\": {\"recurrent\": [[\"conv\", 0]]}}", r"intra\.recurrent\[0\]\.op: unknown op 'conv'"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", 3]]}}",
     r"intra\.recurrent\[0\]\.pred: predecessor 3 out of range 0\.\.0"),
    ("{\"intra\": {\"recurrent\": []}}", r"intra\.recurrent: wrong node count"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", 0]]}, \"history\": {\"m\": 0, \"nodes\": []}}", r"history\.m: expected "
     r"an integer >= 1, got 0"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", 0]]}, \"input\": {\"m\": 1, \"nodes\": [], \"residual\": false}}",
     r"input\.nodes: wrong node count"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", 0]]}, \"extra\": 1}", r"top level: unknown field 'extra'"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", 0]]}, \"history\": {\"nodes\": []}}", r"history: missing field 'm'"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", 1.0e0]]}}", r"intra\.recurrent\[0\]\.pred: expected an integer"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", " + "9" * 5000 + "]]}}", r"not valid JSON"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", 0]], \"concat\": [1, 1]}}", r"intra\.concat: a node is listed twice"),
    ("{\"intra\": {\"recurrent\": [[\"none\", 0]]}}", r"intra\.recurrent\[0\]\.op: 'none'"),
    ("{\"intra\": {\"recurrent\": [[\"relu\", 0]]}, \"history\": {\"m\": 2, \"nodes\": [{\"a\": [\"relu\", 0]}]}}",
     r"history\.nodes\[0\]: missing field 'b'"),
], ids=short_id)
def test_genotype_hand_cases(tmp_path, text, pattern):
    path = tmp_path / "hand.json"
    path.write_text(text, encoding="utf-8")
    err = attempt("genotype JSON (hand cases)", lambda: load_genotype(path), error=GenotypeError,
                  names=(str(path),))
    assert isinstance(err, GenotypeError) and re.search(pattern, str(err)), str(err)


@pytest.mark.parametrize("name", ["NO_SUCH", "x" * 5000, "a\x00b", "/tmp/" + "y" * 300 + "/g.json", "two\nlines",
                                  "/", ""], ids=short_id)
def test_genotype_unusable_names(name):
    err = attempt("genotype JSON (hand cases)", lambda: load_genotype(name), error=GenotypeError, quoted=name)
    assert isinstance(err, GenotypeError)


def test_genotype_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"intra": {"recurrent": [["r\xe9lu", 0]]}}')
    err = attempt("genotype JSON (hand cases)", lambda: load_genotype(path), error=GenotypeError, names=(str(path),))
    assert "not UTF-8 text: invalid byte 0xe9 at byte offset" in str(err)


# --------------------------------------------------------------------------------------------------
# CoNLL-2003 / WNUT-2017 / CoNLL-2000 column files

CONLL_SAMPLES = {
    "conll2003": (b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n"
                  b"call NN I-NP O\n. . O O\n\nPeter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n\n"),
    "wnut17": (b"@paulwalk\tO\nIt\tO\n's\tO\nthe\tO\nview\tO\n\t\nEmpire\tB-location\nState\tI-location\n"
               b"Building\tI-location\n=\tO\nESB\tB-location\n.\tO\n\n"),
    "conll2000": (b"Confidence NN B-NP\nin IN B-PP\nthe DT B-NP\npound NN I-NP\n\nChancellor NNP O\nof IN B-PP\n"
                  b"the DT B-NP\nExchequer NNP I-NP\n\n"),
}
LINE_ERROR = re.compile(r"^(?P<src>.*):(?P<line>\d+): ")


def _check_sentences(sentences, task: str) -> None:
    scheme = TASKS[task].format.scheme
    for s in sentences:
        assert len(s.words) == len(s.tags) > 0 and s.line >= 1
        assert all(w and "\n" not in w for w in s.words)
        assert all(is_valid_tag(t, scheme) for t in s.tags)


def _check_line_error(err: ESSError, source: str, data: bytes) -> None:
    msg = str(err)
    assert msg.startswith(source), msg
    match = LINE_ERROR.match(msg)
    if match and match.group("src") == source:
        assert 1 <= int(match.group("line")) <= data.count(b"\n") + 1, msg


@pytest.mark.parametrize("task", sorted(CONLL_SAMPLES))
@fuzz(100)
@given(data=st.data())
def test_conll_files_random_and_mutated(tmp_path, task, data):
    sep = b"\t" if TASKS[task].format.separator == "\t" else b" "
    raw = data.draw(raw_or_mutated(CONLL_SAMPLES[task], column_sep=sep, max_size=300), label="file bytes")
    path = tmp_path / f"{task}.txt"
    path.write_bytes(raw)
    out = attempt(f"CoNLL files ({task})", lambda: read_conll(path, TASKS[task].format), error=DataError,
                  names=(str(path),))
    if isinstance(out, DataError):
        _check_line_error(out, str(path), raw)
    else:
        _check_sentences(out, task)


@pytest.mark.parametrize("task", sorted(CONLL_SAMPLES))
@fuzz(100)
@given(data=st.data())
def test_conll_text_random_and_mutated(task, data):
    alphabet = st.sampled_from(list("aB-IOXPER \t\r\n\ufeff\x85\u2028\x0b\x0c") + ["-DOCSTART-", "B-PER", "I-LOC"])
    text = data.draw(st.one_of(st.lists(alphabet, max_size=60).map("".join), st.text(max_size=100),
                               mutated(CONLL_SAMPLES[task], b"\t" if task == "wnut17" else b" ").map(
                                   lambda b: b.decode("utf-8", errors="replace"))), label="text")
    out = attempt(f"CoNLL text ({task})", lambda: parse_conll(text, TASKS[task].format, "src.txt"), error=DataError,
                  names=("src.txt",))
    if isinstance(out, DataError):
        assert LINE_ERROR.match(str(out)), str(out)
    else:
        _check_sentences(out, task)


@pytest.mark.parametrize("task,data,pattern", [
    ("conll2003", b"EU NNP B-NP\n", r":1: expected 4 whitespace-separated columns, got 3"),
    ("conll2003", b"EU NNP B-NP B-ORG\nx y z Q-ORG\n", r":2: tag 'Q-ORG' is not a IOB1 tag"),
    ("conll2003", b"EU NNP B-NP E-ORG\n", r":1: tag 'E-ORG' is not a IOB1 tag"),
    ("wnut17", b"a b\tO\nc O\n", r":2: expected 2 TAB-separated columns, got 1"),
    ("wnut17", b"\tO\n", r":1: empty word in column 1"),
    ("wnut17", b"x\tQ-" + b"y" * 5000 + b"\n", r":1: tag 'Q-yyyy.*\.\.\.' is not a BIO tag"),
    ("wnut17", b"x\tB-" + b"y" * 5000 + b"\nz\tO\n\xff\n", r":3: not UTF-8 text"),
    ("conll2000", b"\xef\xbb\xbfConfidence NN B-NP\r\nin IN B-PP\r\n\r\n", None),
    ("conll2000", b"-DOCSTART- -X- O\n\n\n", r": no sentences"),
    ("conll2000", b"", r": no sentences"),
    ("conll2000", b"a NN B-NP\n" * 3 + b"b NN I-NP extra\n", r":4: expected 3 whitespace-separated columns, got 4"),
], ids=short_id)
def test_conll_hand_cases(tmp_path, task, data, pattern):
    path = tmp_path / "hand.txt"
    path.write_bytes(data)
    out = attempt(f"CoNLL files ({task})", lambda: read_conll(path, TASKS[task].format), error=DataError,
                  names=(str(path),))
    if pattern is None:
        assert [s.words for s in out] == [("Confidence", "in")] and [s.tags for s in out] == [("B-NP", "B-PP")]
    else:
        assert isinstance(out, DataError) and re.search(pattern, str(out)), str(out)


# --------------------------------------------------------------------------------------------------
# GloVe text files

GLOVE_SAMPLE = b"the 0.1 0.2 0.3\n, -0.5 1e-3 2\nnew york 1 2 3\ncat 4 5 6\n"
GLOVE_W2V = b"4 3\n" + GLOVE_SAMPLE


@fuzz(200)
@given(raw=raw_or_mutated(GLOVE_SAMPLE) | raw_or_mutated(GLOVE_W2V), keep=st.none() | st.just({"the", "cat"}))
def test_glove_random_and_mutated(tmp_path, raw, keep):
    path = tmp_path / "vectors.txt"
    path.write_bytes(raw)
    out = attempt("GloVe files (read_glove)", lambda: read_glove(path, 3, keep=keep), error=DataError,
                  names=(str(path),))
    if isinstance(out, DataError):
        _check_line_error(out, str(path), raw)
    else:
        assert out or keep is not None  # with keep, a file of other words gives no vectors
        assert all(v.shape == (3,) and bool(torch.isfinite(v).all()) for v in out.values())
        assert keep is None or set(out) <= keep


@pytest.mark.parametrize("data,pattern", [
    (b"\xc2\xb2 3\nthe 1 2 3\n", r":1: .*word_dim is 3"),               # superscript two: isdigit() but not int()
    (b"3 " + b"9" * 5000 + b"\nthe 1 2 3\n", r":1: word2vec header says"),
    (b"the 1 2\n", r":1: 2 numbers after the word but word_dim is 3"),
    (b"the 1 2 nan\n", r":1: non-finite number"),
    (b"the 1 2 1e999\n", r":1: non-finite number"),
    (b"the 1 2 x\n", r":1: field 4 is not a number"),
    (b"w" * 5000 + b" 1 2 inf\n", r":1: non-finite number in the vector of 'wwww"),
    (b"", r": no vectors"),
    (b"the 1 2 3\n\xff 1 2 3\n", r":2: not UTF-8 text"),
], ids=short_id)
def test_glove_hand_cases(tmp_path, data, pattern):
    path = tmp_path / "glove.txt"
    path.write_bytes(data)
    err = attempt("GloVe files (hand cases)", lambda: read_glove(path, 3), error=DataError, names=(str(path),))
    assert isinstance(err, DataError) and re.search(pattern, str(err)), str(err)


# --------------------------------------------------------------------------------------------------
# Config YAML for each config class: random documents, wrong types, NaN/inf, huge ints, unsafe tags

CONFIG_CLASSES = {"SearchConfig": SearchConfig, "TrainConfig": TrainConfig, "TransferConfig": TransferConfig,
                  "JobConfig": JobConfig}
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 500), st.integers(-(2**70), 2**70), st.floats(),
    st.sampled_from([0, -1, 1, 2**63, 10**400 // 10**350, 0.5, 1.0, -0.0, 1e-300, 1e308]),
    st.text(max_size=12),
    st.sampled_from(["1", "-1", "0", "1.5", "nan", "inf", "1e400", "1_000", "0x10", "true", "no", "none", "", " ",
                     "joint", "intra", "inter", "DARTS_V2", "lstm", "ptb", "conll2003", "sgd", "product", "search",
                     "lr=1", "epochs=2 nhid=8", "a", "[1, 2]", "x=[1"]),
)
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def yaml_docs(cls):
    names = _field_names(cls)
    keys = st.sampled_from(names) | st.sampled_from([n.replace("_", "-") for n in names]) | st.text(max_size=8)
    return st.one_of(
        st.dictionaries(keys, yaml_values, max_size=4).map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
        yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
        st.text(max_size=80),
    ).map(lambda t: t.encode("utf-8"))


UNSAFE_YAML = [b"lr: !!python/object/apply:os.system ['true']\n", b"!!python/object:ess.search.SearchConfig {}\n",
               b"seed: !!python/name:os.system\n", b"a: !!binary aGVsbG8=\n", b"x: &a [*a]\n"]


def config_texts(cls):
    valid = yaml.safe_dump(config_to_dict(cls())).encode("utf-8")
    return st.one_of(yaml_docs(cls), mutated(valid, column_sep=b": "), mutated(valid, column_sep=b" ", max_ops=5),
                     st.sampled_from(UNSAFE_YAML),
                     st.tuples(st.sampled_from(UNSAFE_YAML), mutated(valid)).map(lambda t: t[1] + b"\n" + t[0]))


def _check_config(cfg, cls, tmp_path: Path) -> None:
    """A valid config survives save_config -> load_yaml -> config_from_mapping unchanged."""
    assert isinstance(cfg, cls)
    again = config_from_mapping(cls, load_yaml(save_config(cfg, tmp_path / "saved.yaml")), "saved")
    assert again == cfg


def _derived(cfg: JobConfig) -> None:
    """The job's search/train/transfer configs of every trial of its grids (as the trainables build them)."""
    from ess.adapters.ray.grid import search_variants, transfer_variants
    from ess.adapters.ray.spec import trial_config

    for variant in search_variants(cfg):
        trial_config(cfg.search, variant, "variant")
    for variant in transfer_variants(cfg, cfg.cells):
        trial_config(cfg.transfer, variant, "variant")
    assert isinstance(cfg.train, TrainConfig)


@pytest.mark.parametrize("name", sorted(CONFIG_CLASSES))
@fuzz(120)
@given(data=st.data())
def test_config_yaml_random_and_mutated(tmp_path, name, data):
    cls = CONFIG_CLASSES[name]
    raw = data.draw(config_texts(cls), label="yaml")
    path = tmp_path / "config.yaml"
    path.write_bytes(raw)
    out = attempt(f"config YAML ({name})", lambda: config_from_mapping(cls, load_yaml(path), str(path)),
                  error=ConfigError, names=(str(path),))
    if isinstance(out, ConfigError):
        assert str(out).startswith(f"{path}: "), str(out)
    else:
        _check_config(out, cls, tmp_path)
        if cls is JobConfig:
            attempt("config YAML (JobConfig derived configs)", lambda: _derived(out), error=ConfigError)


@pytest.mark.parametrize("name", sorted(CONFIG_CLASSES))
@fuzz(80)
@given(data=st.data())
def test_config_mappings_wrong_types(name, data):
    """``config_from_mapping`` on one field set to a value of any type (the YAML already parsed)."""
    cls = CONFIG_CLASSES[name]
    field = data.draw(st.sampled_from(_field_names(cls)), label="field")
    value = data.draw(yaml_values, label="value")
    out = attempt(f"config mappings ({name})", lambda: config_from_mapping(cls, {field: value}, "mapping.yaml"),
                  error=ConfigError, names=("mapping.yaml",))
    if isinstance(out, ConfigError):
        msg = str(out)
        assert field in msg or field.replace("_", "-") in msg or "expected" in msg or "must" in msg, msg


@pytest.mark.parametrize("text,pattern", [
    (b"lr: .nan\n", r"lr: expected a finite number, got nan"),
    (b"lr: .inf\n", r"lr: expected a finite number, got inf"),
    (b"lr: 1e400\n", r"lr: expected a finite number"),
    (b"lr: " + b"1" * 400 + b"\n", r"lr: expected a number"),
    (b"epochs: " + b"1" * 5000 + b"\n", r"not valid YAML \(Exceeds the limit"),
    (b"seed: 100000000000000000000000\n", r"seed: integer 100000000000000000000000 out of range"),
    (b"epochs: '12'\n", None),
    (b"epochs: ten\n", r"epochs: expected an integer, got 'ten'"),
    (b"dropout: [0.1]\n", r"dropout: expected a number, got \[0\.1\]"),
    (b"run_dir: {a: 1}\n", r"run_dir: expected a string"),
    (b"run_dir: !!binary aGVsbG8=\n", r"run_dir: expected a string, got b'hello'"),
    (b"lr: 1\nlr: 2\n", r"not valid YAML at line 2, column 1 \(found duplicate key 'lr'\)"),
    (b"lr: !!python/object/apply:os.system ['true']\n", r"YAML tag '!!python/object/apply:os\.system' at line 1"),
    (b"a: " + b"[" * 10000 + b"]" * 10000 + b"\n", r"not valid YAML \(nested too deeply\)"),
    (b"lr: 1\n\xff: 2\n", r"not UTF-8 text: invalid byte 0xff at byte offset 6 \(line 2\)"),
    (b"- 1\n- 2\n", r"expected a mapping of config keys, got list"),
    (b"? [a, b]\n: 1\n", r"found unhashable key"),
    (b"1: 2\n", r"unknown key 1 for"),
    (b"\xef\xbb\xbflr: 3\n", None),
    (b"m: 0\n", r"m: must be positive, got 0"),
    (b"mode: both\n", r"mode: unknown mode 'both'"),
    (b"emsize: -4\n", r"emsize: must be positive, got -4"),
    (b"mode: " + b"x" * 5000 + b"\n", r"mode: unknown mode 'xxxx.*\.\.\.$"),
], ids=short_id)
def test_config_hand_cases(tmp_path, text, pattern):
    path = tmp_path / "hand.yaml"
    path.write_bytes(text)
    out = attempt("config YAML (hand cases)", lambda: config_from_mapping(SearchConfig, load_yaml(path), str(path)),
                  error=ConfigError, names=(str(path),))
    if pattern is None:
        assert isinstance(out, SearchConfig)
    else:
        assert isinstance(out, ConfigError) and re.search(pattern, str(out)), str(out)


def test_config_accepts_numpy_numbers_as_tune_samples_them():
    import numpy as np

    cfg = config_from_mapping(SearchConfig, {"epochs": np.int64(3), "lr": np.float32(2.5), "steps": np.float64(4.0)},
                              "tune sample")
    assert (cfg.epochs, cfg.lr, cfg.steps) == (3, 2.5, 4) and type(cfg.epochs) is int and type(cfg.lr) is float
    err = attempt("config mappings (hand cases)", lambda: config_from_mapping(
        SearchConfig, {"epochs": np.float64("nan")}, "tune sample"), error=ConfigError)
    assert isinstance(err, ConfigError) and "epochs: expected an integer" in str(err)


@pytest.mark.parametrize("name", ["x" * 5000, "a\x00b", "/tmp/" + "y" * 300 + "/c.yaml", "/", "two\nlines.yaml"],
                         ids=short_id)
def test_config_unusable_paths(name):
    err = attempt("config YAML (hand cases)", lambda: load_yaml(name), error=ConfigError, quoted=name)
    assert isinstance(err, ConfigError)


# -- validation that belongs in the configs' __post_init__ -------------------------------------------------


@pytest.mark.parametrize("cls,mapping,field", [
    (SearchConfig, {"combination": "bogus"}, "combination"),
    (SearchConfig, {"softmax_scope": "global"}, "softmax_scope"),
    (SearchConfig, {"implementation": "turbo"}, "implementation"),
    (SearchConfig, {"mode": "inter", "intra_genotype": "NO_SUCH_GENOTYPE"}, "intra_genotype"),
    (SearchConfig, {"mode": "intra", "combination": "search"}, "combination"),   # intra-only run, inter weights
    (TrainConfig, {"genotype": "NO_SUCH_GENOTYPE"}, "genotype"),
    (TransferConfig, {"cell": "NO_SUCH_GENOTYPE"}, "cell"),
    (JobConfig, {"modes": ["intra"], "space": {"m": ["choice", [1, 2]]}}, "space"),   # intra-only, inter knob
    (JobConfig, {"modes": ["intra"], "n_inter": [1, 2]}, "n_inter"),
    (JobConfig, {"modes": ["intra"], "search": {"combination": "search"}}, "combination"),
    (JobConfig, {"space": {"lr": ["choice", []]}}, "space"),                          # empty search space
    (JobConfig, {"space": {"lr": ["uniform", 5, 1]}}, "space"),
    (JobConfig, {"space": {"lr": ["loguniform", 0, 1]}}, "space"),
    (JobConfig, {"space": {"lr": ["gaussian", 0, 1]}}, "space"),
    (JobConfig, {"space": {"learning_rate": ["uniform", 1, 2]}}, "space"),
    (JobConfig, {"space": {"lr": "uniform"}}, "space"),
], ids=short_id)
def test_configs_reject_inconsistent_values(cls, mapping, field):
    err = attempt("config mappings (cross-field hand cases)",
                  lambda: config_from_mapping(cls, mapping, "job.yaml"), error=ESSError, names=("job.yaml",))
    assert isinstance(err, ESSError), f"{cls.__name__} accepted {mapping}"
    assert field in str(err), str(err)


@pytest.mark.parametrize("value,field", [
    ("lr=" + "1" * 5000, "lr"), ("lr=" + "[" * 5000, "lr"), ("epochs=" + "9" * 30, "epochs"), ("lr=.nan", "lr"),
    ("dropout=[0.1", "dropout"), ("nhid=-3,emsize=-3", "emsize"), ("bogus=1", "bogus"),
], ids=short_id)
def test_job_override_strings_give_config_errors(value, field):
    """``--search 'k=v ...'`` values: parsed by YAML where they can be, else kept as strings, then validated
    as SearchConfig fields when the JobConfig is made (before any trial)."""
    def run():
        config_from_mapping(JobConfig, {"search": value}, "job.yaml")

    err = attempt("config mappings (JobConfig overrides)", run, error=ConfigError)
    assert isinstance(err, ConfigError) and field in str(err), str(err)


def test_default_hparam_space_of_an_intra_search_has_no_inter_knobs():
    """hparam_search's default space varies m and n_inter: not in an intra-only search, where they do nothing."""
    from ess.adapters.ray.grid import tune_space as _space

    assert {"m", "n_inter"} <= set(_space(config_from_mapping(JobConfig, {"modes": ["joint"]}, "x")))
    space = _space(config_from_mapping(JobConfig, {"modes": ["intra"]}, "x"))
    assert "lr" in space and not {"m", "n_inter"} & set(space)


def test_intra_search_with_fixed_inter_knobs_is_fine():
    """The rejections above are about asking to *search* inter weights, not about defaults."""
    assert config_from_mapping(SearchConfig, {"mode": "intra"}, "x").combination == "product"
    assert config_from_mapping(JobConfig, {"modes": ["intra", "joint"], "n_inter": [1, 2]}, "x").n_inter == (1, 2)
    assert config_from_mapping(JobConfig, {"modes": ["joint"], "space": {"m": ["choice", [1, 2]]}}, "x").space


# --------------------------------------------------------------------------------------------------
# Command lines: parse_args + main of search, train and transfer

BAD_VALUES = ["-1", "0", "-0", "1.5", "nan", "inf", "-inf", "1e999", "9" * 30, "abc", "", " ", "true", "none", "\n",
              "x\ny", "DARTS_V9", "\u2713", "0x10", "1_0", "[1, 2]", "{a: 1}", "!!python/object/apply:os.system x",
              "cuda", "cuda:7", "cpu", "meta", "lstm", "joint", "intra", "search", "edge", "reference", "ptb",
              "wnut17", "adam", "bio", "/", "NO_SUCH.json", "-3", "2", "1000000000000"]


def _entry_points():
    from ess import train, transfer
    from ess.search.cli import main as search_main

    return {"search": (search_main, SearchConfig), "train": (train.main, TrainConfig),
            "transfer": (transfer.main, TransferConfig)}


@st.composite
def argvs(draw, cls) -> list[str]:
    names = [n for n in _field_names(cls) if n not in ("threads", "data_dir", "run_dir")]
    flags = [f"--{n.replace('_', '-')}" for n in names] + ["--no-draw", "--config", "--preset", "--resume",
                                                          "--smoke-test", "--bogus", "-x", "--"]
    argv: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        flag = draw(st.sampled_from(flags))
        value = draw(st.sampled_from(BAD_VALUES) | st.text(max_size=10))
        form = draw(st.sampled_from(("pair", "equals", "flag")))
        argv += [flag, value] if form == "pair" else [f"{flag}={value}"] if form == "equals" else [flag]
    return argv


def _run_cli(main, argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as exit_:
            rc = exit_.code if isinstance(exit_.code, int) else 2
            return -rc if rc else 0, err.getvalue()
    return rc, err.getvalue()


def _check_cli(prog: str, rc: int, stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    if rc < 0:  # argparse: usage, then "prog: error: ..." (which quotes raw arguments, newlines and all)
        assert rc == -2, (rc, stderr)
        assert stderr.startswith("usage: ") and ": error: " in stderr, stderr
        return "argparse"
    assert rc == 2, f"exit status {rc}; stderr: {stderr!r}"
    lines = stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert len(lines[0]) < 2000
    return "ESSError"


@pytest.mark.parametrize("prog", ["search", "train", "transfer"])
@fuzz(60)
@given(data=st.data())
def test_cli_random_arguments(tmp_path, prog, data):
    """Any argument vector ends in a usage error or one ``error:`` line (the data directory is empty, so a
    well-formed command stops at the first missing file instead of training)."""
    main, cls = _entry_points()[prog]
    argv = data.draw(argvs(cls), label="argv")
    (tmp_path / "empty").mkdir(exist_ok=True)
    argv = argv + ["--data-dir", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "run"), "--threads", "0"]
    kind = f"command lines ({prog})"
    TRIED[kind] += 1
    rc, stderr = _run_cli(main, argv)
    outcome = _check_cli(prog, rc, stderr)
    (REJECTED if outcome == "ESSError" else USAGE)[kind] += 1


@pytest.mark.parametrize("prog,argv,pattern", [
    ("search", ["--nhid", "-5", "--emsize", "-5"], r"emsize: must be positive"),
    ("search", ["--m", "0"], r"m: must be positive, got 0"),
    ("search", ["--mode", "everything"], r"mode: unknown mode 'everything'"),
    ("search", ["--lr", "nan"], r"--lr: expected a finite number, got 'nan'"),
    ("search", ["--epochs", "1e3"], r"--epochs: expected an integer, got '1e3'"),
    ("search", ["--dropout", "1"], r"dropout: must be in \[0, 1\)"),
    ("search", ["--combination", "bogus"], r"combination"),
    ("search", ["--mode", "intra", "--combination", "search"], r"combination"),
    ("search", ["--mode", "inter", "--intra-genotype", "NOPE"], r"intra_genotype|NOPE"),
    ("train", ["--genotype", "NOPE"], r"genotype|NOPE"),
    ("train", ["--batch-size", "0"], r"batch_size: must be positive"),
    ("train", ["--seed", "99999999999999999999"], r"--seed: integer .* out of range"),
    ("transfer", ["--cell", "NOPE"], r"NOPE"),
    ("transfer", ["--task", "ner"], r"task: unknown task 'ner'"),
    ("transfer", ["--word-dim", "-1"], r"word_dim: must be positive"),
    ("transfer", ["--config", "no/such.yaml"], r"no/such\.yaml: no such config file"),
], ids=short_id)
def test_cli_hand_cases(tmp_path, prog, argv, pattern):
    main, _ = _entry_points()[prog]
    (tmp_path / "empty").mkdir()
    argv = argv + ["--data-dir", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "run"), "--threads", "0"]
    TRIED["command lines (hand cases)"] += 1
    rc, stderr = _run_cli(main, argv)
    assert _check_cli(prog, rc, stderr) == "ESSError"
    REJECTED["command lines (hand cases)"] += 1
    assert re.search(pattern, stderr), stderr
    assert "no such file" not in stderr or "config" in pattern, f"checked only after the data: {stderr}"


def test_cli_bad_input_to_the_small_tools(tmp_path):
    """``python -m ess.space validate`` and ``python -m ess.data verify`` on bad files: one line each."""
    from ess.data.__main__ import main as data_main
    from ess.space.__main__ import main as genotype_main

    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{\"intra\": 3}\n")
    for main, argv in ((genotype_main, ["validate", str(bad)]), (genotype_main, ["show", "NOPE"]),
                       (data_main, ["verify", "ptb", "--data-dir", str(tmp_path)]),
                       (data_main, ["stats", "no-such-corpus"])):
        TRIED["command lines (hand cases)"] += 1
        rc, stderr = _run_cli(main, argv)
        assert _check_cli("tool", rc, stderr) == "ESSError"
        REJECTED["command lines (hand cases)"] += 1


def test_resolve_config_cli_values_never_escape_as_other_errors():
    """resolve_config on argparse values of every field: ConfigError or a config (no TypeError/ValueError)."""
    import argparse

    for cls in CONFIG_CLASSES.values():
        for name in _field_names(cls):
            for value in ("nan", "1e999", "-1", "x", "", "9" * 50, "[", "none"):
                TRIED["command lines (resolve_config)"] += 1
                try:
                    resolve_config(cls, argparse.Namespace(config=None, **{name: value}))
                    VALID["command lines (resolve_config)"] += 1
                except ConfigError as err:
                    check_message(err)
                    REJECTED["command lines (resolve_config)"] += 1
                    assert math.isfinite(len(str(err)))
