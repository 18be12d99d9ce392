"""Markdown for results.md: numbers as its tables show them, tables from rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def num(value: Any, digits: int = 1) -> str:
    """``value`` with thousands separators and ``digits`` decimals; "-" for what is missing or not finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(v) else f"{v:,.{digits}f}"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``(header, key or callable)`` columns."""
    head = "| " + " | ".join(h for h, _ in columns) + " |\n|" + "---|" * len(columns) + "\n"
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")   # a genotype's "| concat" must not end the cell

    body = "".join("| " + " | ".join(cell(c(r) if callable(c) else r.get(c, "-")) for _, c in columns) + " |\n"
                   for r in rows)
    return head + body


def interval(row: Mapping[str, Any], value: str) -> str:
    """``value``'s geometric mean in ``row`` with its 95% interval."""
    return (f"{num(row.get(f'{value}_geo_mean'))} [{num(row.get(f'{value}_ci_low'))}, "
            f"{num(row.get(f'{value}_ci_high'))}]")


def p_value(value: float) -> str:
    """A p-value to three significant digits; "-" for one that could not be computed."""
    return f"{value:.3g}" if value == value else "-"


def ratio_words(a: str, b: str, ci_low: float, ci_high: float) -> str:
    """What the 95% interval of the ratio ``a / b`` says, in percent of ``b``: "cannot be told apart" with the range
    when it holds 1, else the direction and how far."""
    low, high = 100 * (ci_low - 1), 100 * (ci_high - 1)
    if ci_low <= 1 <= ci_high:
        return f"cannot be told apart: {a}'s value is from {-low:.1f}% lower to {high:.1f}% higher than {b}'s"
    near, far = sorted((abs(low), abs(high)))
    return f"{a}'s value is {'lower' if high < 0 else 'higher'} than {b}'s by {near:.1f}% to {far:.1f}%"
