"""Tag schemes (IOB1, IOB2/BIO, BIOES), spans and conversions between them.

A tag is ``O`` or ``P-TYPE`` with prefix ``P`` in ``B I E S``; the type is everything after the first
hyphen (``B-creative-work`` has type ``creative-work``), as conlleval splits it.

:func:`tag_spans` reads the entities of one sentence as ``(type, start, end)`` triples (``end``
exclusive). On B/I/O tags (IOB1 and IOB2 alike) it follows conlleval's ``startOfChunk``/``endOfChunk``
rules exactly: ``B-X`` always starts a span, ``I-X`` continues an open ``X`` span and otherwise starts one
(so an ``I-X`` after ``O`` or after a ``Y`` span starts a new span, whatever the nominal scheme), ``O``
closes. ``E-X`` and ``S-X`` are read the usual BIOES way: ``E-X`` ends the open ``X`` span (or is a
one-token span on its own), ``S-X`` is a one-token span. Because spans are scheme-independent,
converting is reading spans and writing them back (:func:`spans_to_tags`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

Span = tuple[str, int, int]  # (type, start, end), end exclusive

SCHEMES = ("iob1", "bio", "bioes")
SCHEME_ALIASES = {"iob1": "iob1", "iob2": "bio", "bio": "bio", "bioes": "bioes", "iobes": "bioes"}
_PREFIXES = {"iob1": "BI", "bio": "BI", "bioes": "BIES"}


def normalise_scheme(scheme: str) -> str:
    """``iob1``, ``bio`` (alias ``iob2``) or ``bioes`` (alias ``iobes``); a ValueError otherwise."""
    try:
        return SCHEME_ALIASES[scheme.lower()]
    except KeyError:
        raise ValueError(f"unknown tag scheme {scheme!r} (known: iob1, iob2/bio, bioes/iobes)") from None


def split_tag(tag: str) -> tuple[str, str]:
    """``'B-PER' -> ('B', 'PER')``, ``'O' -> ('O', '')``; a ValueError for anything else."""
    if tag == "O":
        return "O", ""
    prefix, sep, typ = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not typ:
        raise ValueError(f"tag {tag!r} is not O or B-/I-/E-/S- followed by a type")
    return prefix, typ


def is_valid_tag(tag: str, scheme: str) -> bool:
    """Whether ``tag`` can occur in a file of ``scheme`` (prefix check only)."""
    try:
        prefix, _ = split_tag(tag)
    except ValueError:
        return False
    return prefix == "O" or prefix in _PREFIXES[normalise_scheme(scheme)]


def tag_spans(tags: Sequence[str]) -> list[Span]:
    """The spans of one sentence, in order (see the module docstring for the rules)."""
    spans: list[Span] = []
    open_type: str | None = None
    open_start = 0
    for i, tag in enumerate(tags):
        prefix, typ = split_tag(tag)
        if prefix == "I" and open_type == typ:
            continue
        if prefix == "E" and open_type == typ:
            spans.append((typ, open_start, i + 1))
            open_type = None
            continue
        if open_type is not None:
            spans.append((open_type, open_start, i))
            open_type = None
        if prefix in ("B", "I"):
            open_type, open_start = typ, i
        elif prefix in ("E", "S"):
            spans.append((typ, i, i + 1))
    if open_type is not None:
        spans.append((open_type, open_start, len(tags)))
    return spans


def spans_to_tags(spans: Iterable[Span], length: int, scheme: str) -> list[str]:
    """Write non-overlapping spans as tags of ``scheme``.

    IOB1: ``I-X`` throughout, ``B-X`` only for a span that directly follows another ``X`` span.
    BIO: ``B-X`` then ``I-X``. BIOES: ``S-X`` for one token, else ``B-X``, ``I-X``..., ``E-X``.
    """
    scheme = normalise_scheme(scheme)
    tags = ["O"] * length
    prev_end, prev_type = -1, None
    for typ, start, end in sorted(spans, key=lambda s: s[1]):
        if not 0 <= start < end <= length:
            raise ValueError(f"span {(typ, start, end)} does not fit a sentence of {length} tokens")
        if any(t != "O" for t in tags[start:end]):
            raise ValueError(f"span {(typ, start, end)} overlaps another span")
        if scheme == "iob1":
            tags[start:end] = [f"I-{typ}"] * (end - start)
            if prev_end == start and prev_type == typ:
                tags[start] = f"B-{typ}"
        elif scheme == "bio":
            tags[start:end] = [f"B-{typ}"] + [f"I-{typ}"] * (end - start - 1)
        elif end - start == 1:
            tags[start] = f"S-{typ}"
        else:
            tags[start:end] = [f"B-{typ}"] + [f"I-{typ}"] * (end - start - 2) + [f"E-{typ}"]
        prev_end, prev_type = end, typ
    return tags


def convert_tags(tags: Sequence[str], scheme: str) -> list[str]:
    """The same spans written in ``scheme`` (whatever scheme ``tags`` are in)."""
    return spans_to_tags(tag_spans(tags), len(tags), scheme)


def tag_set(types: Iterable[str], scheme: str) -> list[str]:
    """``O`` then every ``P-TYPE`` of ``scheme``, types sorted: the label set a tagger predicts."""
    prefixes = _PREFIXES[normalise_scheme(scheme)]
    return ["O"] + [f"{p}-{t}" for t in sorted(set(types)) for p in prefixes]


def allowed_transitions(labels: Sequence[str], scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean ``(transitions [K, K], start [K], end [K])`` of the well-formed sequences of ``scheme``.

    BIO: ``I-X`` only after ``B-X`` or ``I-X`` (never first). BIOES: after ``B-X``/``I-X`` only
    ``I-X``/``E-X``; ``I-X``/``E-X`` only after those; a sentence starts with ``O``/``B``/``S`` and ends
    with ``O``/``E``/``S``. IOB1 allows everything (any sequence is well formed).
    """
    scheme = normalise_scheme(scheme)
    parts = [split_tag(t) for t in labels]
    K = len(labels)
    trans = torch.ones(K, K, dtype=torch.bool)
    start = torch.ones(K, dtype=torch.bool)
    end = torch.ones(K, dtype=torch.bool)
    if scheme == "iob1":
        return trans, start, end
    for j, (pj, tj) in enumerate(parts):
        inside = pj in ("I", "E") if scheme == "bioes" else pj == "I"
        if inside:
            start[j] = False
        if scheme == "bioes" and pj in ("B", "I"):
            end[j] = False
        for i, (pi, ti) in enumerate(parts):
            open_i = pi in ("B", "I") if scheme == "bioes" else False
            if inside:
                trans[i, j] = pi in ("B", "I") and ti == tj
            elif open_i:
                trans[i, j] = False  # an open BIOES span must go on with I-/E- of its type
    return trans, start, end


__all__ = ["SCHEMES", "Span", "allowed_transitions", "convert_tags", "is_valid_tag", "normalise_scheme",
           "spans_to_tags", "split_tag", "tag_set", "tag_spans"]
