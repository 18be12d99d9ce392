"""Loading of a corpus as validated, tokenised id tensors, cached in-process.

:mod:`ess.data.registry` says where a corpus's files are, :mod:`ess.data.generated` makes a generated
one, :mod:`ess.data.validation` checks each file's bytes and :mod:`ess.data.tokens` tokenises them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ess.data.generated import checked_spec
from ess.data.registry import CORPORA, SPLITS, CorpusSpec, corpus_dir, get_spec
from ess.data.tokens import Vocabulary, encode_split, tokenize
from ess.data.validation import check_split_bytes, one_line, read_split_bytes, sha256_hex
from ess.errors import DataError


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


def unregister_corpus(name: str) -> None:
    """Remove a corpus from the registry and drop its cached loads (no error if absent)."""
    CORPORA.pop(name, None)
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]


def verify_corpus(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, tuple[Path, int, str]]:
    """Check every split file of ``name`` (presence, size, UTF-8, sha256) without tokenising.

    Returns ``{split: (path, bytes, sha256)}``; raises :class:`DataError` on the first bad file.
    """
    spec = checked_spec(get_spec(name))
    root = corpus_dir(name, data_dir)
    report = {}
    for split in SPLITS:
        path = root / spec.files[split]
        data = read_split_bytes(spec, split, path)
        check_split_bytes(spec, split, path, data)
        report[split] = (path, len(data), sha256_hex(data))
    return report


def load_corpus(name: str, data_dir: str | os.PathLike | None = None, *, cache: bool = True) -> Corpus:
    """Load, validate and tokenise corpus ``name`` from ``<data_dir>/<name>/``.

    Results are cached in-process, keyed by the resolved directory and each file's
    size/mtime/inode, so a changed file is re-read. Raises :class:`DataError` naming the file
    for every data problem, and for an unknown ``name``. A generated corpus is read from its own
    directory (see :mod:`ess.data.generated`), generated there first if needed; ``data_dir`` is ignored.
    """
    spec = get_spec(name)
    checked = checked_spec(spec)
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
    tensors = {"train": encode_split(vocab, train_tokens, texts["train"], paths["train"])}
    del train_tokens
    for split in ("valid", "test"):
        tensors[split] = encode_split(vocab, tokenize(texts[split]), texts[split], paths[split])
    corpus = Corpus(name=name, vocab=vocab, path=root, **tensors)
    if cache:
        for stale in [k for k in _CACHE if k[:2] == key[:2]]:  # older versions of the same files
            del _CACHE[stale]
        _CACHE[key] = (spec, corpus)
    return corpus
