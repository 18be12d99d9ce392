"""Vocabularies (words, characters, labels), sentence encoding and length-bucketed batches.

Words are looked up normalised (lower-cased, digits replaced by ``0``, both optional); characters keep
their case, so the character features carry capitalisation. The word vocabulary is the train words
(``min_count`` or more occurrences) plus, when pre-trained vectors are given, every word of any split
that has a vector (Lample et al. 2016): test words never get trained rows, but keep their pre-trained
ones. Labels are the training scheme's tags of the types seen in train.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ess.tagging.conll import Sentence
from ess.tagging.schemes import convert_tags, split_tag, tag_set

PAD, UNK = "<pad>", "<unk>"
MAX_WORD_CHARS = 50  # longer tokens (URLs) keep their first 50 characters for the character features
_DIGIT = re.compile(r"\d")


def normalise_word(word: str, lower: bool = True, zero_digits: bool = True) -> str:
    if zero_digits:
        word = _DIGIT.sub("0", word)
    return word.lower() if lower else word


@dataclass
class Vocab:
    words: list[str]            # 0 <pad>, 1 <unk>
    chars: list[str]            # 0 <pad>, 1 <unk>
    labels: list[str]           # training-scheme tags, "O" first
    scheme: str                 # training scheme
    lower: bool = True
    zero_digits: bool = True
    singletons: frozenset[int] = frozenset()  # word ids seen once in train (for UNK replacement)

    def __post_init__(self) -> None:
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.char_index = {c: i for i, c in enumerate(self.chars)}
        self.label_index = {t: i for i, t in enumerate(self.labels)}

    def to_dict(self) -> dict:
        return {"words": list(self.words), "chars": list(self.chars), "labels": list(self.labels),
                "scheme": self.scheme, "lower": self.lower, "zero_digits": self.zero_digits,
                "singletons": sorted(self.singletons)}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(list(d["words"]), list(d["chars"]), list(d["labels"]), d["scheme"], bool(d["lower"]),
                   bool(d["zero_digits"]), frozenset(int(i) for i in d["singletons"]))

    def norm(self, word: str) -> str:
        return normalise_word(word, self.lower, self.zero_digits)


def build_vocab(train: Sequence[Sentence], scheme: str, *, lower: bool = True, zero_digits: bool = True,
                min_count: int = 1, pretrained: Iterable[str] = ()) -> Vocab:
    """Vocabulary from the train sentences; ``pretrained``: normalised words that have a vector."""
    counts = Counter(normalise_word(w, lower, zero_digits) for s in train for w in s.words)
    words = [PAD, UNK] + sorted(w for w, c in counts.items() if c >= min_count)
    known = set(words)
    words += sorted(w for w in set(pretrained) if w not in known)
    chars = [PAD, UNK] + sorted({c for s in train for w in s.words for c in w})
    types = {split_tag(t)[1] for s in train for t in s.tags if t != "O"}
    index = {w: i for i, w in enumerate(words)}
    singletons = frozenset(index[w] for w, c in counts.items() if c == 1 and w in index)
    return Vocab(words, chars, tag_set(types, scheme), scheme, lower, zero_digits, singletons)


@dataclass
class Encoded:
    words: list[int]
    chars: list[list[int]]
    labels: list[int]           # training-scheme label ids (empty when not needed)


def encode(sentence: Sentence, vocab: Vocab, with_labels: bool = True) -> Encoded:
    wi, ci = vocab.word_index, vocab.char_index
    words = [wi.get(vocab.norm(w), 1) for w in sentence.words]
    chars = [[ci.get(c, 1) for c in w[:MAX_WORD_CHARS]] for w in sentence.words]
    labels: list[int] = []
    if with_labels:
        tags = convert_tags(sentence.tags, vocab.scheme)
        # Types unseen in train cannot be predicted; their tokens are trained as O.
        labels = [vocab.label_index.get(t, 0) for t in tags]
    return Encoded(words, chars, labels)


@dataclass
class Batch:
    words: Tensor        # [T, B]
    chars: Tensor        # [T, B, L]
    mask: Tensor         # [T, B] bool
    labels: Tensor       # [T, B] (zeros when unlabelled)
    lengths: Tensor      # [B]
    index: list[int]     # positions of these sentences in the split

    def to(self, device: torch.device) -> Batch:
        return Batch(self.words.to(device), self.chars.to(device), self.mask.to(device), self.labels.to(device),
                     self.lengths.to(device), self.index)

    @property
    def size(self) -> int:
        return len(self.index)


def collate(items: Sequence[Encoded], index: list[int]) -> Batch:
    B = len(items)
    T = max(len(e.words) for e in items)
    L = max(len(c) for e in items for c in e.chars)
    words = torch.zeros(T, B, dtype=torch.long)
    chars = torch.zeros(T, B, L, dtype=torch.long)
    labels = torch.zeros(T, B, dtype=torch.long)
    lengths = torch.tensor([len(e.words) for e in items], dtype=torch.long)
    for b, e in enumerate(items):
        n = len(e.words)
        words[:n, b] = torch.tensor(e.words)
        for t, c in enumerate(e.chars):
            chars[t, b, : len(c)] = torch.tensor(c)
        if e.labels:
            labels[:n, b] = torch.tensor(e.labels)
    mask = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)
    return Batch(words, chars, mask, labels, lengths, list(index))


def train_batches(data: Sequence[Encoded], batch_size: int, generator: torch.Generator,
                  bucket: int = 50) -> list[Batch]:
    """Shuffled batches of similar lengths: shuffle, sort within pools of ``bucket`` batches, shuffle batches."""
    order = torch.randperm(len(data), generator=generator).tolist()
    groups: list[list[int]] = []
    pool = batch_size * bucket
    for start in range(0, len(order), pool):
        chunk = sorted(order[start: start + pool], key=lambda i: len(data[i].words))
        groups += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(groups), generator=generator).tolist()
    return [collate([data[i] for i in groups[p]], groups[p]) for p in perm]


def eval_batches(data: Sequence[Encoded], batch_size: int) -> list[Batch]:
    """Batches of sentences sorted by length (results are put back in order by ``Batch.index``)."""
    order = sorted(range(len(data)), key=lambda i: len(data[i].words))
    return [collate([data[i] for i in order[s: s + batch_size]], order[s: s + batch_size])
            for s in range(0, len(order), batch_size)]


__all__ = ["MAX_WORD_CHARS", "PAD", "UNK", "Batch", "Encoded", "Vocab", "build_vocab", "collate", "encode",
           "eval_batches", "normalise_word", "train_batches"]
