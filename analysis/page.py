"""The report's page: sections in Markdown beside HTML, tables as CSV, figures as PNG with SVG.

:class:`Page` collects headings, text, tables (``tables/<name>.csv`` with every column; the page shows
the chosen ones) and figures (``figures/<name>.png|svg``); :meth:`Page.write` writes ``report.md`` and
``report.html`` with the notes at the end. Every file is written atomically.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ess.checkpoint import atomic_write_text
from ess.errors import ESSError

MAX_ROWS = 40

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table.table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
table.table th,table.table td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
table.table th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}
.notes li{color:#8a4b00}.more{font-size:12px;color:#777}code{background:#f3f3f3;padding:0 3px}"""


def cell(value: Any) -> str:
    """A value as a table shows it: empty for missing, whole floats as ints, 4 significant digits below 100."""
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if abs(value) >= 100:
            return f"{value:.2f}"
        return f"{value:.4g}"
    return str(value)


def _columns(table: pd.DataFrame, columns: Sequence[str] | None, drop_empty: bool) -> pd.DataFrame:
    if columns is not None:
        table = table[[c for c in columns if c in table.columns]]
    if drop_empty and len(table):
        table = table[[c for c in table.columns if (table[c].map(cell) != "").any()]]
    return table


def markdown_table(table: pd.DataFrame, columns: Sequence[str] | None = None, max_rows: int = MAX_ROWS,
                   drop_empty: bool = False) -> str:
    """A GitHub-flavoured Markdown table (numbers to 4 significant digits; ``|`` escaped)."""
    table = _columns(table, columns, drop_empty)
    if not len(table.columns):
        return "(no columns)\n"
    shown = table.head(max_rows)

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(str(c)) for c in shown.columns) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(shown[c]) else "---" for c in shown.columns) + "|"]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(esc(cell(v)) for v in row) + " |")
    if len(table) > max_rows:
        lines.append(f"\n({len(table) - max_rows} more rows in the CSV)")
    return "\n".join(lines) + "\n"


def html_table(table: pd.DataFrame, columns: Sequence[str] | None = None, max_rows: int = MAX_ROWS,
               drop_empty: bool = False) -> str:
    """The table as HTML (the values formatted as in :func:`markdown_table`)."""
    table = _columns(table, columns, drop_empty)
    head = table.head(max_rows)
    shown = (head.map(cell) if hasattr(head, "map") else head.applymap(cell)) if len(table) else table
    text = shown.to_html(index=False, border=0, classes="table", escape=True, na_rep="")
    if len(table) > max_rows:
        text += f"<p class=\"more\">({len(table) - max_rows} more rows in the CSV)</p>"
    return text


class Page:
    """Collects sections (Markdown and HTML side by side), tables and figures; ``draw=False``: no figures."""

    def __init__(self, out: Path, draw: bool = True):
        self.out, self.draw = out, draw
        self.md: list[str] = []
        self.html: list[str] = []
        self.tables: dict[str, Path] = {}
        self.figures: dict[str, list[Path]] = {}
        self.notes: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        """A note (something left out), once."""
        if text not in self.notes:
            self.notes.append(text)

    def csv(self, name: str, table: pd.DataFrame) -> Path:
        """Write ``tables/<name>.csv`` only (not shown on the page)."""
        self.tables[name] = atomic_write_text(self.out / "tables" / f"{name}.csv", table.to_csv(index=False))
        return self.tables[name]

    def table(self, name: str, table: pd.DataFrame, caption: str, columns: Sequence[str] | None = None,
              shown: pd.DataFrame | None = None, drop_empty: bool = False) -> None:
        """Write ``tables/<name>.csv`` (all columns) and show ``shown`` (or ``table``) on the page
        (``drop_empty``: without the columns no row has a value in)."""
        self.csv(name, table)
        rel = f"tables/{name}.csv"
        view = table if shown is None else shown
        self.md.append(f"{caption} ([{name}.csv]({rel}))\n\n" + markdown_table(view, columns, drop_empty=drop_empty))
        self.html.append(f"<p>{html.escape(caption)} (<a href=\"{rel}\">{html.escape(name)}.csv</a>)</p>"
                         + html_table(view, columns, drop_empty=drop_empty))

    def figure(self, name: str, make: Callable[[Path], list[Path]], caption: str) -> None:
        """Draw with ``make(base)`` (returns the files); a figure that cannot be drawn becomes a note."""
        if not self.draw:
            return
        base = self.out / "figures" / name
        try:
            paths = make(base)
        except ESSError as err:
            self.note(f"figure {name} left out: {err}")
            return
        self.figures[name] = paths
        png, svg = f"figures/{name}.png", f"figures/{name}.svg"
        self.md.append(f"![{caption}]({png})\n\n*{caption}* ([SVG]({svg}))\n")
        self.html.append(f"<figure><a href=\"{svg}\"><img src=\"{png}\" alt=\"{html.escape(caption)}\"></a>"
                         f"<figcaption>{html.escape(caption)} (<a href=\"{svg}\">SVG</a>)</figcaption></figure>")

    def write(self, title: str) -> tuple[Path, Path]:
        """``report.md`` and ``report.html`` (titled ``title``), the notes last; their paths."""
        md, body = list(self.md), list(self.html)
        if self.notes:
            md.append("## Notes\n\n" + "\n".join(f"- {n}" for n in self.notes) + "\n")
            body.append("<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
                        + "</ul>")
        markdown = atomic_write_text(self.out / "report.md", "\n".join(md))
        page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")
        return markdown, atomic_write_text(self.out / "report.html", page)


__all__ = ["MAX_ROWS", "Page", "cell", "html_table", "markdown_table"]
