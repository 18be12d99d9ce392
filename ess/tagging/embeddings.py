"""Pre-trained word vectors in the GloVe text format (``word v1 ... vD`` per line).

Also accepted: a word2vec text header (a first line of two integers ``COUNT DIM``), and words that
contain spaces (GloVe 840B has some): the last ``DIM`` fields are the vector, the rest is the word.
Every problem is a one-line :class:`~ess.errors.DataError` ``FILE:LINE: what is wrong``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ess.errors import DataError


def read_glove(path: str | os.PathLike, dim: int, keep: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """``{word: vector}`` from a GloVe text file whose vectors must have ``dim`` numbers.

    ``keep``: only these words are kept (every line's field count is checked, the numbers of the kept
    ones). The first occurrence of a word wins.
    """
    path = Path(path)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DataError(f"{path}: word_dim must be a positive integer, got {dim!r}")
    if not os.path.isfile(path):  # os.path: a name the OS refuses (too long, NUL byte) reads as missing
        raise DataError(f"{path}: no such embeddings file" if not os.path.exists(path)
                        else f"{path}: not a regular file")
    wanted = None if keep is None else set(keep)
    vectors: dict[str, torch.Tensor] = {}
    seen_any = False
    try:
        f = open(path, "rb")
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    with f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not UTF-8 text (invalid byte 0x{raw[err.start]:02x})") from None
            if not line.strip():
                continue
            fields = line.rstrip().split(" ")
            if number == 1 and len(fields) == 2 and all(x.isascii() and x.isdigit() for x in fields):
                if fields[1].lstrip("0") != str(dim):  # no int(): a 5000-digit field must not raise ValueError
                    raise DataError(f"{path}:1: word2vec header says {fields[1][:20]}-dimensional vectors "
                                    f"but word_dim is {dim}")
                continue
            wrong_dim = len(fields) < dim + 1 or (not seen_any and len(fields) > dim + 1
                                                  and _is_number(fields[-dim - 1]))
            if wrong_dim and not seen_any:
                raise DataError(f"{path}:{number}: {len(fields) - 1} numbers after the word but word_dim "
                                f"is {dim} (set --word-dim to the file's dimension)")
            if wrong_dim:
                raise DataError(f"{path}:{number}: expected a word and {dim} numbers, got {len(fields)} fields")
            seen_any = True
            word = " ".join(fields[: len(fields) - dim])
            if not word:
                raise DataError(f"{path}:{number}: empty word")
            if (wanted is not None and word not in wanted) or word in vectors:
                continue
            _check_numbers(fields[-dim:], path, number)
            vec = torch.tensor([float(x) for x in fields[-dim:]])
            if not bool(torch.isfinite(vec).all()):
                raise DataError(f"{path}:{number}: non-finite number in the vector of {word[:40]!r}")
            vectors[word] = vec
    if not seen_any:
        raise DataError(f"{path}: no vectors (empty file)")
    return vectors


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_numbers(fields: list[str], path: Path, number: int) -> None:
    for i, x in enumerate(fields):
        if not _is_number(x):
            raise DataError(f"{path}:{number}: field {i + 2} is not a number: {x[:40]!r}")


@dataclass
class EmbeddingInit:
    weight: torch.Tensor  # [V, dim]
    found: int            # vocabulary rows initialised from the file
    total: int


def lookup(vectors: dict[str, torch.Tensor], word: str) -> torch.Tensor | None:
    """The vector of ``word``, else of its lower-cased form, else None."""
    vec = vectors.get(word)
    return vec if vec is not None else vectors.get(word.lower())


def init_embeddings(words: Sequence[str], dim: int, vectors: dict[str, torch.Tensor] | None = None,
                    generator: torch.Generator | None = None) -> EmbeddingInit:
    """An embedding matrix for ``words``: rows from ``vectors`` where the word (or its lower-cased
    form) has one, others uniform in ``+-sqrt(3 / dim)`` (Lample et al. 2016, Ma & Hovy 2016).
    Row 0 (padding) is zero."""
    bound = math.sqrt(3.0 / dim)
    weight = torch.empty(len(words), dim).uniform_(-bound, bound, generator=generator)
    weight[0].zero_()
    found = 0
    for i, w in enumerate(words[1:], start=1):
        vec = lookup(vectors, w) if vectors else None
        if vec is not None:
            weight[i] = vec
            found += 1
    return EmbeddingInit(weight, found, len(words))


__all__ = ["EmbeddingInit", "init_embeddings", "lookup", "read_glove"]
