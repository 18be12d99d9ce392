"""Readers for CoNLL-style column files: CoNLL-2003 NER, WNUT-2017 NER and CoNLL-2000 chunking.

One token per line, columns separated by whitespace (CoNLL-2003, CoNLL-2000) or by a TAB (WNUT-2017);
a line that is empty **or holds only whitespace** ends a sentence (WNUT-2017's train file breaks
sentences on 2,394 lines holding a lone TAB). ``-DOCSTART-`` lines mark documents: they end the
current sentence and are not tokens. Each task names the column holding the word and the one holding
the tag, and the tag scheme of its files (CoNLL-2003: IOB1; WNUT-2017, CoNLL-2000: IOB2).

Every problem with a file is a :class:`~ess.errors.DataError` whose one-line message reads
``FILE:LINE: what is wrong``. CoNLL-2000 has no dev split; :func:`carve_dev` holds out a fixed,
reproducible set of train sentences (chosen by a hash of their index, so it is the same on every
machine, Python and library version).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ess.checkpoint import atomic_write_text
from ess.data import resolve_data_dir
from ess.errors import DataError, decode_utf8
from ess.tagging.schemes import is_valid_tag, normalise_scheme

DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words, its tags (in the file's scheme) and the file line it starts on."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    line: int = 0

    def __len__(self) -> int:
        return len(self.words)


@dataclass(frozen=True)
class ColumnFormat:
    """How to read one task's files."""

    columns: int                 # exact number of columns on a token line
    word_column: int
    tag_column: int
    separator: str | None = None  # None: any run of whitespace; "\t": exactly one TAB
    scheme: str = "bio"           # tag scheme of the files: iob1 or bio (iob2)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    directory: str                        # under the data directory
    files: dict[str, str | None]          # split -> file name (None: no such split)
    format: ColumnFormat
    description: str = ""


TASKS: dict[str, TaskSpec] = {
    "conll2003": TaskSpec(
        "conll2003", "conll2003", {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
        ColumnFormat(columns=4, word_column=0, tag_column=3, scheme="iob1"),
        "CoNLL-2003 English NER (word POS chunk NER, IOB1)"),
    "wnut17": TaskSpec(
        "wnut17", "wnut17", {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
        ColumnFormat(columns=2, word_column=0, tag_column=1, separator="\t", scheme="bio"),
        "WNUT-2017 emerging entities (word<TAB>tag, IOB2)"),
    "conll2000": TaskSpec(
        "conll2000", "conll2000", {"train": "train.txt", "valid": None, "test": "test.txt"},
        ColumnFormat(columns=3, word_column=0, tag_column=2, scheme="bio"),
        "CoNLL-2000 chunking (word POS chunk, IOB2; dev carved from train)"),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


def parse_conll(text: str, fmt: ColumnFormat, source: str = "<text>") -> list[Sentence]:
    """Sentences of a column file's text; ``source`` names the file in error messages."""
    scheme = normalise_scheme(fmt.scheme)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0

    def flush() -> None:
        nonlocal words, tags
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags), first))
            words, tags = [], []

    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            flush()
            continue
        cols = line.split(fmt.separator) if fmt.separator else line.split()
        if cols[0].strip() == DOCSTART:
            flush()
            continue
        if len(cols) != fmt.columns:
            sep = "TAB-separated" if fmt.separator == "\t" else "whitespace-separated"
            raise DataError(f"{source}:{number}: expected {fmt.columns} {sep} columns, got {len(cols)}: "
                            f"{line.strip()[:80]!r}")
        # With an explicit separator the word is kept exactly as written (raw tweets).
        word, tag = cols[fmt.word_column], cols[fmt.tag_column].strip()
        if not word:
            raise DataError(f"{source}:{number}: empty word in column {fmt.word_column + 1}")
        if not is_valid_tag(tag, scheme):
            shown = tag if len(tag) <= 40 else tag[:37] + "..."
            raise DataError(f"{source}:{number}: tag {shown!r} is not a {scheme.upper()} tag "
                            f"(O, B-TYPE or I-TYPE) in column {fmt.tag_column + 1}")
        if not words:
            first = number
        words.append(word)
        tags.append(tag)
    flush()
    return sentences


def read_conll(path: str | os.PathLike, fmt: ColumnFormat) -> list[Sentence]:
    """Read one column file; a one-line :class:`DataError` naming the file (and line) if unusable."""
    path = Path(path)
    if not os.path.exists(path):  # os.path: a name the OS refuses (too long, NUL byte) reads as missing
        raise DataError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    sentences = parse_conll(decode_utf8(data, f"{path}:{{line}}", DataError), fmt, str(path))
    if not sentences:
        raise DataError(f"{path}: no sentences (empty file or only -DOCSTART-/blank lines)")
    return sentences


def carve_dev(sentences: Sequence[Sentence], size: int, seed: int = 2000) -> tuple[list[Sentence], list[Sentence]]:
    """Split ``sentences`` into (train, dev) with ``size`` dev sentences, both in file order.

    The dev sentences are those whose index has the smallest ``sha256(f"{seed}:{index}")``: the same
    split on every machine and version, independent of the run's seed.
    """
    if not 0 < size < len(sentences):
        raise DataError(f"cannot hold out {size} dev sentences from {len(sentences)} train sentences")
    ranked = sorted(range(len(sentences)),
                    key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    dev_ids = set(ranked[:size])
    train = [s for i, s in enumerate(sentences) if i not in dev_ids]
    dev = [s for i, s in enumerate(sentences) if i in dev_ids]
    return train, dev


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[Sentence]
    dev: list[Sentence]
    test: list[Sentence]
    paths: dict[str, str]


def task_paths(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    spec = get_task(name)
    root = resolve_data_dir(data_dir) / spec.directory
    return {split: root / f for split, f in spec.files.items() if f is not None}


def load_task(name: str, data_dir: str | os.PathLike | None = None, dev_sentences: int = 1000,
              dev_seed: int = 2000) -> TaskData:
    """Train, dev and test sentences of a task (tags in the files' scheme).

    Without a dev file (CoNLL-2000), ``dev_sentences`` train sentences are held out by
    :func:`carve_dev`; ``paths['valid']`` then reads ``"<train file> (held out)"``.
    """
    spec = get_task(name)
    paths = task_paths(name, data_dir)
    for path in paths.values():
        if not os.path.exists(path):
            files = ", ".join(f for f in spec.files.values() if f)
            raise DataError(f"{path}: no such file; put {files} of task {name!r} in {path.parent} "
                            "(--data-dir, else $ESS_DATA_DIR, else ./data)")
    train = read_conll(paths["train"], spec.format)
    test = read_conll(paths["test"], spec.format)
    if "valid" in paths:
        dev = read_conll(paths["valid"], spec.format)
        dev_name = str(paths["valid"])
    else:
        train, dev = carve_dev(train, dev_sentences, dev_seed)
        dev_name = f"{paths['train']} (held out: {dev_sentences} sentences, seed {dev_seed})"
    return TaskData(spec, train, dev, test, {"train": str(paths["train"]), "valid": dev_name,
                                             "test": str(paths["test"])})


def write_conll(path: str | os.PathLike, sentences: Sequence[Sentence], predictions: Sequence[Sequence[str]]) -> Path:
    """``word gold predicted`` lines, a blank line after each sentence: the input of the conlleval script."""
    lines = []
    for sent, pred in zip(sentences, predictions, strict=True):
        for word, gold, guess in zip(sent.words, sent.tags, pred, strict=True):
            lines.append(f"{word} {gold} {guess}\n")
        lines.append("\n")
    return atomic_write_text(Path(path), "".join(lines))


__all__ = ["DOCSTART", "TASKS", "ColumnFormat", "Sentence", "TaskData", "TaskSpec", "carve_dev", "get_task",
           "load_task", "parse_conll", "read_conll", "task_paths", "write_conll"]
