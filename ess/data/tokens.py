"""Tokenisation of a split's text into ids of the train split's vocabulary.

Tokenisation follows the AWD-LSTM / DARTS ``data.py``: every line of a split is split on
whitespace and one ``<eos>`` is appended to it, so an empty line is the single token ``<eos>``.
The vocabulary is the train split's tokens in order of first appearance (``<eos>`` included).
Unlike AWD-LSTM, which also adds valid/test words to the dictionary, valid/test words outside
the train vocabulary map to ``<unk>`` (or are an error when the vocabulary has none); for PTB
and WikiText-2 the two rules give the same ids because their valid/test sets have no such words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
import torch

from ess.errors import DataError

EOS = "<eos>"
UNK = "<unk>"


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


def encode_split(vocab: Vocabulary, tokens: list[str], text: str, path: Path) -> torch.Tensor:
    ids = vocab._ids(tokens)
    if ids.size and ids.min() < 0:
        index = int(np.argmax(ids < 0))
        raise DataError(
            f"{path}: line {_line_of_token(text, index)}: word {tokens[index]!r} is not in the train "
            f"vocabulary, which has no {UNK} to map it to"
        )
    return torch.from_numpy(ids)
