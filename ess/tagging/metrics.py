"""Span-level precision, recall and F1 as the CoNLL ``conlleval`` script computes them.

An entity (or chunk) is an exact span with its type; spans are read per sentence by
:func:`ess.tagging.schemes.tag_spans` (conlleval's rules on B/I/O tags). A predicted span is correct
when gold has a span with the same start, end and type. Precision = correct / predicted, recall =
correct / gold, F1 = 2PR / (P + R), all in percent; 0 when a denominator is 0 (an all-``O`` tagger
scores 0). Per-type figures count only the spans of that type. ``accuracy`` is conlleval's token
accuracy (tags compared as written, so both sides should be in the same scheme).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ess.tagging.schemes import tag_spans


def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    p = 100.0 * correct / predicted if predicted else 0.0
    r = 100.0 * correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


@dataclass
class TypeScore:
    precision: float
    recall: float
    f1: float
    correct: int
    predicted: int
    gold: int


@dataclass
class SpanScores:
    precision: float
    recall: float
    f1: float
    accuracy: float
    correct: int
    predicted: int
    gold: int
    tokens: int
    per_type: dict[str, TypeScore] = field(default_factory=dict)

    def as_row(self, prefix: str) -> dict[str, Any]:
        """Flat metrics: ``{prefix}/f1``, ``{prefix}/precision`` ... and ``{prefix}/f1/TYPE``."""
        row: dict[str, Any] = {f"{prefix}/f1": self.f1, f"{prefix}/precision": self.precision,
                               f"{prefix}/recall": self.recall, f"{prefix}/accuracy": self.accuracy}
        row.update({f"{prefix}/f1/{t}": s.f1 for t, s in sorted(self.per_type.items())})
        return row

    def report(self) -> str:
        """A conlleval-like text report."""
        lines = [f"processed {self.tokens} tokens with {self.gold} phrases; found: {self.predicted} phrases; "
                 f"correct: {self.correct}.",
                 f"accuracy: {self.accuracy:6.2f}%; precision: {self.precision:6.2f}%; recall: {self.recall:6.2f}%; "
                 f"FB1: {self.f1:6.2f}"]
        for t, s in sorted(self.per_type.items()):
            lines.append(f"{t:>17}: precision: {s.precision:6.2f}%; recall: {s.recall:6.2f}%; FB1: {s.f1:6.2f}  "
                         f"{s.predicted}")
        return "\n".join(lines)


def span_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> SpanScores:
    """Score predicted tag sequences against gold ones (one sequence per sentence, same lengths)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    correct: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    tokens = right_tags = 0
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted ones")
        gs, ps = set(tag_spans(g)), set(tag_spans(p))
        n_gold.update(t for t, _, _ in gs)
        n_pred.update(t for t, _, _ in ps)
        correct.update(t for t, _, _ in gs & ps)
        tokens += len(g)
        right_tags += sum(a == b for a, b in zip(g, p))
    per_type = {}
    for t in sorted(set(n_gold) | set(n_pred)):
        per_type[t] = TypeScore(*_prf(correct[t], n_pred[t], n_gold[t]), correct[t], n_pred[t], n_gold[t])
    c, np_, ng = sum(correct.values()), sum(n_pred.values()), sum(n_gold.values())
    p, r, f = _prf(c, np_, ng)
    return SpanScores(p, r, f, 100.0 * right_tags / tokens if tokens else 0.0, c, np_, ng, tokens, per_type)


__all__ = ["SpanScores", "TypeScore", "span_f1"]
