"""Word-level language-model corpora: registry, validation and loading.

Tokenisation follows the AWD-LSTM / DARTS ``data.py``: every line of a split is split on
whitespace and one ``<eos>`` is appended to it, so an empty line is the single token ``<eos>``.
The vocabulary is the train split's tokens in order of first appearance (``<eos>`` included).
Unlike AWD-LSTM, which also adds valid/test words to the dictionary, valid/test words outside
the train vocabulary map to ``<unk>`` (or are an error when the vocabulary has none); for PTB
and WikiText-2 the two rules give the same ids because their valid/test sets have no such words.

Every problem with a file (missing, empty, not UTF-8, truncated, wrong checksum) is raised as a
:class:`~ess.errors.DataError` whose one-line message starts with the file's full path.

A *generated* corpus (a spec with a ``generator``, e.g. :mod:`ess.data.planted`) is never downloaded and
never written into the data directory: it lives in ``$ESS_GENERATED_DIR``, else
``$XDG_CACHE_HOME/ess/corpora`` (``~/.cache/ess/corpora``), as ``<name>-<fingerprint>/`` (the
fingerprint hashes the generator's parameters), whatever ``data_dir`` says. :func:`load_corpus` and
:func:`verify_corpus` generate it on first use, in a temporary directory renamed into place, so
concurrent first uses never see a partial corpus (each may generate; the first rename wins, the
others discard their identical copy). The generator's manifest records each split's size and sha256,
which are then checked like a registered corpus's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import torch

from ess.errors import DataError

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
DATA_DIR_ENV = "ESS_DATA_DIR"
DEFAULT_DATA_DIR = "data"
GENERATED_DIR_ENV = "ESS_GENERATED_DIR"


def one_line(text: object) -> str:
    """Collapse ``text`` to a single line, so that error messages stay one line long."""
    return " ".join(str(text).split())


@dataclass(frozen=True)
class DownloadSpec:
    """Where a corpus archive can be fetched from and which archive members hold its splits.

    ``members`` maps a split to a glob pattern matched against member *basenames*
    (e.g. ``"ptb.train.txt"``); ``sha256`` is the archive's hash, or None when unknown.
    """

    url: str
    members: Mapping[str, str]
    sha256: str | None = None


class CorpusGenerator(Protocol):
    """What a generated corpus's spec carries (value-comparable, e.g. a frozen dataclass of parameters).

    ``generate(out, name)`` writes the split files and the manifest into the existing empty directory
    ``out``; the manifest (JSON, file name ``manifest``) holds at least ``fingerprint``, ``bytes`` and
    ``sha256`` (per split); ``summary(manifest)`` is a one-line description for the user.
    """

    manifest: str

    def fingerprint(self) -> str: ...

    def generate(self, out: Path, name: str) -> Mapping[str, Any]: ...

    def summary(self, manifest: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True)
class CorpusSpec:
    """A registered corpus: the file of each split and, when known, its byte size and sha256.

    ``sizes``/``sha256`` may be None as a whole or per split; only known values are checked.
    A spec with a ``generator`` is generated on first use (see the module docstring), not downloaded.
    """

    name: str
    files: Mapping[str, str]
    sizes: Mapping[str, int | None] | None = None
    sha256: Mapping[str, str | None] | None = None
    download: DownloadSpec | None = None
    generator: CorpusGenerator | None = None

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.files]
        if missing:
            raise ValueError(f"corpus spec {self.name!r} lacks the split(s) {', '.join(missing)}")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"corpus name {self.name!r} must be a plain directory name")
        if self.download is not None:
            absent = [s for s in SPLITS if s not in self.download.members]
            if absent:
                raise ValueError(f"download spec of {self.name!r} lacks members for {', '.join(absent)}")
        if self.download is not None and self.generator is not None:
            raise ValueError(f"corpus spec {self.name!r} is either downloaded or generated, not both")

    def size(self, split: str) -> int | None:
        return None if self.sizes is None else self.sizes.get(split)

    def digest(self, split: str) -> str | None:
        value = None if self.sha256 is None else self.sha256.get(split)
        return value.lower() if value else None


CORPORA: dict[str, CorpusSpec] = {}


def register_corpus(spec: CorpusSpec, *, overwrite: bool = False) -> CorpusSpec:
    """Add ``spec`` to :data:`CORPORA`; re-registering a name needs ``overwrite=True``."""
    if spec.name in CORPORA and not overwrite and CORPORA[spec.name] != spec:
        raise ValueError(f"corpus {spec.name!r} is already registered (pass overwrite=True to replace it)")
    CORPORA[spec.name] = spec
    return spec


def unregister_corpus(name: str) -> None:
    """Remove a corpus from the registry and drop its cached loads (no error if absent)."""
    CORPORA.pop(name, None)
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]


def get_spec(name: str) -> CorpusSpec:
    """The registered spec of ``name``; a :class:`DataError` listing the known names otherwise."""
    try:
        return CORPORA[name]
    except KeyError:
        known = ", ".join(sorted(CORPORA)) or "none"
        raise DataError(f"unknown corpus {name!r}; known corpora: {known}") from None


_SPLIT_FILES = MappingProxyType({s: f"{s}.txt" for s in SPLITS})

register_corpus(CorpusSpec(
    name="ptb",
    files=_SPLIT_FILES,
    sizes=MappingProxyType({"train": 5_101_618, "valid": 399_782, "test": 449_945}),
    sha256=MappingProxyType({
        "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    }),
    download=DownloadSpec(
        url="https://github.com/timbmg/RNNLM/raw/4e5bddfd042beb3e1aa1f282954cc31567294c83/data/ptb.zip",
        sha256="6957baa63e145820032f12d3f1e6f4ba71789c3f5dbf289902bc3f0a96beef7a",
        members=MappingProxyType({s: f"ptb.{s}.txt" for s in SPLITS}),
    ),
))

register_corpus(CorpusSpec(
    name="wikitext-2",
    files=_SPLIT_FILES,
    sizes=MappingProxyType({"train": 10_797_148, "valid": 1_121_681, "test": 1_256_449}),
    sha256=MappingProxyType({
        "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    }),
    download=DownloadSpec(
        url="https://wikitext.smerity.com/wikitext-2-v1.zip",
        sha256=None,
        members=MappingProxyType({s: f"wiki.{s}.tokens" for s in SPLITS}),
    ),
))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$ESS_DATA_DIR``, else ``./data``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def generated_root() -> Path:
    """Where generated corpora live: ``$ESS_GENERATED_DIR``, else ``$XDG_CACHE_HOME/ess/corpora``
    (``~/.cache/ess/corpora``). Never the data directory, which may be read-only and shared."""
    explicit = os.environ.get(GENERATED_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache).expanduser() / "ess" / "corpora"


def corpus_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/<name>``, the directory holding the split files of corpus ``name``.

    For a generated corpus: ``<generated_root()>/<name>-<fingerprint>``, whatever ``data_dir``.
    Nothing is generated here.
    """
    spec = CORPORA.get(name)
    if spec is not None and spec.generator is not None:
        return generated_root() / f"{name}-{spec.generator.fingerprint()}"
    return resolve_data_dir(data_dir) / name


# --------------------------------------------------------------------------- generated corpora


def read_manifest(generator: CorpusGenerator, root: Path) -> dict[str, Any]:
    """The manifest of a generated corpus in ``root``; a :class:`DataError` if unreadable or of other parameters."""
    path = Path(root) / generator.manifest
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        sizes, digests, fingerprint = manifest["bytes"], manifest["sha256"], manifest["fingerprint"]
        if not all(isinstance(sizes[s], int) and isinstance(digests[s], str) for s in SPLITS):
            raise ValueError("bad bytes/sha256 entries")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; {root} is not a complete generated corpus (delete it to "
                        "regenerate)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = one_line(getattr(err, "strerror", None) or err) or type(err).__name__
        raise DataError(f"{path}: unreadable manifest of a generated corpus ({reason}); delete {root} to "
                        "regenerate it") from None
    if fingerprint != generator.fingerprint():
        raise DataError(f"{path}: generated with other parameters (fingerprint {fingerprint}, expected "
                        f"{generator.fingerprint()}); delete {root} or choose another directory")
    return manifest


def write_generated(generator: CorpusGenerator, name: str, target: str | os.PathLike) -> bool:
    """Generate a corpus into ``target`` atomically; False (and nothing done) if it is already there.

    The files are written into a fresh temporary directory beside ``target``, which is then renamed to
    ``target``: another process sees either nothing or the complete corpus. When two processes race,
    the loser's rename fails, it finds the winner's manifest and drops its own copy.
    """
    target = Path(target)
    if (target / generator.manifest).is_file():
        read_manifest(generator, target)  # refuse a directory generated with other parameters
        return False
    parent = target.parent
    hint = f"set ${GENERATED_DIR_ENV} to a writable directory"
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{parent}: cannot create the directory for generated corpus {name!r} "
                        f"({one_line(err.strerror or err)}); {hint}") from None
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        generator.generate(tmp, name)
        _fsync_dir(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / generator.manifest).is_file():  # another process won the race
                read_manifest(generator, target)
                return False
            if target.exists():
                raise DataError(f"{target}: exists and is not a generated corpus; remove it or choose "
                                "another directory") from None
            raise
        _fsync_dir(parent)
        return True
    except OSError as err:
        raise DataError(f"{target}: cannot write generated corpus {name!r} ({one_line(err.strerror or err)}); "
                        f"{hint}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
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


def ensure_generated(name: str) -> tuple[Path, dict[str, Any]]:
    """Generate corpus ``name`` unless present (saying once on stderr where); its directory and manifest."""
    spec = get_spec(name)
    if spec.generator is None:
        raise DataError(f"corpus {name!r} is not a generated corpus")
    root = corpus_dir(name)
    if write_generated(spec.generator, name, root):
        manifest = read_manifest(spec.generator, root)
        print(f"ess.data: generated corpus {name!r} in {root}: {spec.generator.summary(manifest)}",
              file=sys.stderr, flush=True)
        return root, manifest
    return root, read_manifest(spec.generator, root)


def _checked_spec(spec: CorpusSpec) -> CorpusSpec:
    """``spec``, or for a generated corpus (generated here if needed) with its manifest's sizes and sha256."""
    if spec.generator is None:
        return spec
    _, manifest = ensure_generated(spec.name)
    return dataclasses.replace(spec, sizes=dict(manifest["bytes"]), sha256=dict(manifest["sha256"]))


# --------------------------------------------------------------------------- validation


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
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: not UTF-8 text: invalid byte 0x{data[err.start]:02x} at byte offset {err.start} (line {line})"
        ) from None
    if not data.endswith((b"\n", b"\r")):
        start = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        raise DataError(f"{path}: truncated: the last line (from byte offset {start}) has no trailing newline")
    digest = spec.digest(split)
    if digest is not None:
        actual = sha256_hex(data)
        if actual != digest:
            raise DataError(f"{path}: sha256 mismatch: file has {actual}, corpus {spec.name!r} expects {digest}")
    return text


def verify_corpus(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, tuple[Path, int, str]]:
    """Check every split file of ``name`` (presence, size, UTF-8, sha256) without tokenising.

    Returns ``{split: (path, bytes, sha256)}``; raises :class:`DataError` on the first bad file.
    """
    spec = _checked_spec(get_spec(name))
    root = corpus_dir(name, data_dir)
    report = {}
    for split in SPLITS:
        path = root / spec.files[split]
        data = read_split_bytes(spec, split, path)
        check_split_bytes(spec, split, path, data)
        report[split] = (path, len(data), sha256_hex(data))
    return report


# --------------------------------------------------------------------------- tokenisation


def tokenize(text: str) -> list[str]:
    """AWD-LSTM/DARTS tokens of a file's text: each line's whitespace-split words plus ``<eos>``.

    Line ends are those of Python's universal-newline file reading (``\\n``, ``\\r\\n``, ``\\r``), as
    in ``data.py``'s ``for line in f``. Replacing each newline by `` <eos> `` and splitting once
    gives the same tokens as the per-line loop, at C speed.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"  # a last line without newline still gets its <eos>, as in data.py
    return text.replace("\n", f" {EOS} ").split()


@dataclass
class Vocabulary:
    """Token <-> id maps; ids are in order of first appearance in the train split."""

    itos: list[str]
    stoi: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stoi:
            self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary itos has duplicate tokens")

    @classmethod
    def from_tokens(cls, tokens: Iterable[str]) -> Vocabulary:
        return cls(list(dict.fromkeys(tokens)))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    @property
    def unk_index(self) -> int | None:
        return self.stoi.get(UNK)

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        """Ids of ``tokens`` as a 1-D long tensor; unknown tokens become ``<unk>`` (DataError if none)."""
        ids = self._ids(tokens)
        if ids.size and ids.min() < 0:
            bad = tokens[int(np.argmax(ids < 0))]
            raise DataError(f"token {bad!r} is not in the vocabulary, which has no {UNK}")
        return torch.from_numpy(ids)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return [self.itos[i] for i in ids]

    def _ids(self, tokens: Sequence[str]) -> np.ndarray:
        """Ids as int64, with -1 for a token missing from a vocabulary without ``<unk>``."""
        unk = self.unk_index
        default = -1 if unk is None else unk
        return np.fromiter(map(self.stoi.get, tokens, repeat(default)), dtype=np.int64, count=len(tokens))


def _line_of_token(text: str, index: int) -> int:
    """1-based line number of the ``index``-th token of ``tokenize(text)`` (error path only)."""
    seen, number = 0, 0
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        seen += len(line.split()) + 1
        if seen > index:
            return number
    return number


def _encode_split(vocab: Vocabulary, tokens: list[str], text: str, path: Path) -> torch.Tensor:
    ids = vocab._ids(tokens)
    if ids.size and ids.min() < 0:
        index = int(np.argmax(ids < 0))
        raise DataError(
            f"{path}: line {_line_of_token(text, index)}: word {tokens[index]!r} is not in the train "
            f"vocabulary, which has no {UNK} to map it to"
        )
    return torch.from_numpy(ids)


# --------------------------------------------------------------------------- loading


@dataclass
class Corpus:
    """A loaded corpus: the vocabulary and each split as a 1-D ``torch.long`` tensor of ids.

    Loads are cached and shared between callers, so treat the tensors as read-only
    (``batchify`` copies them).
    """

    name: str
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    path: Path

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        return getattr(self, name)


_CACHE: dict[tuple, tuple[CorpusSpec, Corpus]] = {}


def _file_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return (str(path), None)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def clear_corpus_cache() -> None:
    """Forget every cached :func:`load_corpus` result."""
    _CACHE.clear()


def load_corpus(name: str, data_dir: str | os.PathLike | None = None, *, cache: bool = True) -> Corpus:
    """Load, validate and tokenise corpus ``name`` from ``<data_dir>/<name>/``.

    Results are cached in-process, keyed by the resolved directory and each file's
    size/mtime/inode, so a changed file is re-read. Raises :class:`DataError` naming the file
    for every data problem, and for an unknown ``name``. A generated corpus is read from its own
    directory (see the module docstring), generated there first if needed; ``data_dir`` is ignored.
    """
    spec = get_spec(name)
    checked = _checked_spec(spec)
    root = corpus_dir(name, data_dir)
    try:
        root = root.resolve()
    except (OSError, ValueError, RuntimeError) as err:  # a NUL byte, a symlink loop, a name too long
        reason = one_line(getattr(err, "strerror", None) or err)
        raise DataError(f"{root}: unusable data directory ({reason})") from None
    paths = {split: root / spec.files[split] for split in SPLITS}
    key = (name, str(root), tuple(_file_key(p) for p in paths.values()))
    if cache and key in _CACHE and _CACHE[key][0] == spec:
        return _CACHE[key][1]
    texts = {}
    for split, path in paths.items():
        texts[split] = check_split_bytes(checked, split, path, read_split_bytes(checked, split, path))
    train_tokens = tokenize(texts["train"])
    vocab = Vocabulary.from_tokens(train_tokens)
    tensors = {"train": _encode_split(vocab, train_tokens, texts["train"], paths["train"])}
    del train_tokens
    for split in ("valid", "test"):
        tensors[split] = _encode_split(vocab, tokenize(texts[split]), texts[split], paths[split])
    corpus = Corpus(name=name, vocab=vocab, path=root, **tensors)
    if cache:
        for stale in [k for k in _CACHE if k[:2] == key[:2]]:  # older versions of the same files
            del _CACHE[stale]
        _CACHE[key] = (spec, corpus)
    return corpus
