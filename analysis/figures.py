"""Figures of a job's runs (matplotlib, Agg; no pyplot state), each a ``Figure`` for :func:`save_figure`.

:func:`save_figure` writes a figure as PNG and SVG (atomically, with no timestamps, so reruns are identical).

* :func:`curves_figure`: a per-epoch metric (search valid perplexity) per arm, the line the mean over
  seeds and the band its spread (one standard deviation by default);
* :func:`final_figure`: a per-trial value (final perplexity) per arm: the mean with error bars (the
  95% Student-t confidence interval by default) and every seed as a dot;
* :func:`op_heatmap_figure`: the share of each op in the derived genotypes, arms x (part, op);
* :func:`entropy_figure`: relative architecture-weight entropy and the identity share over epochs;
* :func:`genotype_picture`: the best genotype drawn by :func:`ess.space.draw.draw_genotype`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.arms import ARM, arm_namer, present
from analysis.errors import AnalysisError, MissingMetricError
from analysis.genotypes import parse_genotype
from analysis.stats import aggregate, epoch_curves
from ess.checkpoint import atomic_write_bytes
from ess.space.draw import draw_genotype

FORMATS = ("png", "svg")
DPI = 150
BANDS = ("std", "ci", "minmax", "none")
INTERVALS = ("ci", "std", "sem", "none")
_PALETTE = matplotlib.colormaps["tab10"].colors
_LABELS = {"valid/ppl": "search valid perplexity",
           "arch/entropy": "architecture-weight entropy (relative to its maximum)",
           "genotype/identity_share": "identity share of the genotype",
           "final_valid_ppl": "final search valid perplexity", "best_valid_ppl": "best search valid perplexity",
           "retrain_valid_ppl": "retrained valid perplexity", "test_ppl": "test perplexity (retrained)",
           "search_seconds": "search training time (s)", "retrain/valid/ppl": "retrain valid perplexity"}


def label(metric: str) -> str:
    """A readable axis label for a metric name."""
    return _LABELS.get(metric, metric)


def _colours(arms: Sequence[str]) -> dict[str, Any]:
    return {arm: _PALETTE[i % len(_PALETTE)] for i, arm in enumerate(dict.fromkeys(arms))}


def _arm_colours(curves: Mapping[Any, pd.DataFrame]) -> dict[str, Any]:
    """One colour per arm over several panels' curves (an arm may be missing from some panels)."""
    return _colours(list(dict.fromkeys(a for c in curves.values() for a in c["arm"])))


def _arm_legend(fig: Figure, axes: Any) -> None:
    """One legend entry per arm, from whichever panel draws it."""
    legend: dict[str, Any] = {}
    for ax in np.ravel(axes):
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=8, frameon=False)


def save_figure(fig: Figure, base: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``base.png`` and ``base.svg`` (atomically); returns the files."""
    base = Path(base)
    written = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise AnalysisError(f"figure format {fmt!r} is not supported ({', '.join(FORMATS)})")
        buffer = BytesIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ess"}):
            fig.savefig(buffer, format=fmt, dpi=DPI, facecolor="white", bbox_inches="tight",
                        metadata={"Date": None} if fmt == "svg" else {"Software": None})
        written.append(atomic_write_bytes(base.with_name(f"{base.name}.{fmt}"), buffer.getvalue()))
    return written


def _band(curve: pd.DataFrame, band: str) -> tuple[np.ndarray, np.ndarray] | None:
    if band == "none":
        return None
    if band == "std":
        lo, hi = curve["mean"] - curve["std"], curve["mean"] + curve["std"]
    elif band == "ci":
        lo, hi = curve["ci_low"], curve["ci_high"]
    elif band == "minmax":
        lo, hi = curve["min"], curve["max"]
    else:
        raise AnalysisError(f"band: unknown {band!r} ({', '.join(BANDS)})")
    return lo.to_numpy(dtype=float), hi.to_numpy(dtype=float)


def _band_text(band: str) -> str:
    return {"std": "band: mean +- 1 sd over seeds", "ci": "band: 95% CI of the mean over seeds",
            "minmax": "band: min to max over seeds", "none": "mean over seeds"}[band]


def _plot_curves(ax: Any, curves: pd.DataFrame, band: str, colours: dict[str, Any]) -> None:
    for arm, curve in curves.groupby("arm", sort=False):
        curve = curve.sort_values("epoch")
        x = curve["epoch"].to_numpy(dtype=float)
        colour = colours[arm]
        n = int(curve["n"].max())
        ax.plot(x, curve["mean"].to_numpy(dtype=float), marker="o", ms=3, lw=1.6, color=colour,
                label=f"{arm} (n={n})")
        spread = _band(curve, band)
        if spread is not None and np.isfinite(spread[0]).any():
            ax.fill_between(x, spread[0], spread[1], color=colour, alpha=0.18, lw=0)
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    if curves["epoch"].nunique() <= 12:
        ax.set_xticks(sorted(curves["epoch"].unique()))


def curves_figure(frame: pd.DataFrame, metric: str = "valid/ppl", by: Sequence[str] = ARM, *,
                  stage: str = "search", band: str = "std", logy: bool = False, title: str | None = None) -> Figure:
    """``metric`` against epoch, one line per arm (the mean over seeds) with a band (``std``, ``ci``, ``minmax``)."""
    curves = epoch_curves(frame, metric, by, stage=stage)
    fig = Figure(figsize=(7.2, 4.0), layout="constrained")
    ax = fig.subplots()
    _plot_curves(ax, curves, band, _colours(curves["arm"]))
    ax.set_ylabel(label(metric))
    if logy:
        ax.set_yscale("log")
        _plain_log_labels(ax)
    ax.set_title(title or f"{label(metric)} per arm ({_band_text(band)})", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8, frameon=False)
    return fig


def final_figure(summary: pd.DataFrame, value: str = "final_valid_ppl", by: Sequence[str] = ARM, *,
                 interval: str = "ci", title: str | None = None, scale: str = "t") -> Figure:
    """``value`` per arm: the mean over seeds with error bars (``ci``: 95% Student-t interval, ``std``,
    ``sem``) and each seed as a dot. ``scale`` is :func:`analysis.stats.aggregate`'s: on the log scale the
    point is the geometric mean and the bars its interval (never below zero)."""
    if interval not in INTERVALS:
        raise AnalysisError(f"interval: unknown {interval!r} ({', '.join(INTERVALS)})")
    table = aggregate(summary, value, by, warn_single=False, scale=scale)
    rows = present(summary, value)
    arms = table["arm"].tolist()
    colours = _colours(arms)
    fig = Figure(figsize=(max(4.0, 1.1 * len(arms) + 2.0), 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(arms), dtype=float)
    geometric = interval == "ci" and "geo_mean" in table and table["geo_mean"].notna().any()
    means = table["geo_mean" if geometric else "mean"].to_numpy(dtype=float)
    if interval == "ci":
        err = np.vstack([means - table["ci_low"].to_numpy(dtype=float), table["ci_high"].to_numpy(dtype=float) - means])
    elif interval in ("std", "sem"):
        spread = table[interval].to_numpy(dtype=float)
        err = np.vstack([spread, spread])
    else:
        err = None
    for i, arm in enumerate(arms):
        e = None if err is None or not np.isfinite(err[:, i]).all() else err[:, i:i + 1]
        ax.errorbar([x[i]], [means[i]], yerr=e, fmt="o", ms=7, capsize=6, lw=1.6, color=colours[arm], zorder=3)
    name = arm_namer(summary, by)
    arm_of_row = [name(r) for r in rows[list(by)].to_dict(orient="records")] if by else ["all"] * len(rows)
    for i, arm in enumerate(arms):
        values = rows[value].to_numpy(dtype=float)[[a == arm for a in arm_of_row]]
        offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
        ax.scatter(x[i] + 0.22 + offsets, values, s=16, facecolors="none", edgecolors=colours[arm], zorder=2)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{a}\n(n={n})" for a, n in zip(arms, table["n"])], fontsize=8,
                       rotation=0 if max((len(a) for a in arms), default=0) <= 14 else 20)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylabel(label(value))
    what = {"ci": "95% CI of the mean", "std": "mean +- 1 sd", "sem": "mean +- 1 sem", "none": "mean"}[interval]
    if geometric:   # the interval of the geometric mean is symmetric on a log axis
        what = "geometric mean, 95% CI"
        ax.set_yscale("log")
        _plain_log_labels(ax)
    ax.set_title(title or f"{label(value)} per arm ({what}; dots: seeds)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _plain_log_labels(ax: Any) -> None:
    """Plain numbers on a log axis (1,500, not 1.5 x 10^3); the minor ticks labelled only within a decade."""
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:.3g}")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if low > 0 and high / low < 10 else matplotlib.ticker.NullFormatter())


def op_heatmap_figure(op_freq: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The share of each op per arm (rows) and part:op (columns) from :func:`analysis.stats.op_frequencies`."""
    if op_freq is None or not len(op_freq):
        raise AnalysisError("op frequencies: no genotype edges to draw")
    table = op_freq.assign(column=op_freq["part"] + ":" + op_freq["op"])
    arms = list(dict.fromkeys(table["arm"]))
    columns = list(dict.fromkeys(table["column"]))
    grid = table.pivot_table(index="arm", columns="column", values="share", aggfunc="first", sort=False)
    grid = grid.reindex(index=arms, columns=columns)
    values = grid.to_numpy(dtype=float)
    fig = Figure(figsize=(max(5.0, 0.62 * len(columns) + 2.4), max(2.4, 0.55 * len(arms) + 1.6)),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 else "black")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(arms)))
    ax.set_yticklabels(arms, fontsize=8)
    colourbar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01)
    colourbar.set_label("share of the part's edges", fontsize=8)
    ax.set_title(title or "ops chosen in the derived genotypes (searched parts; blank: not searched)", fontsize=10)
    return fig


def entropy_figure(frame: pd.DataFrame, by: Sequence[str] = ARM, *, band: str = "std",
                   title: str | None = None) -> Figure:
    """Two panels over search epochs, both on a fixed 0-1 scale: the entropy of the architecture-weight
    softmaxes relative to its maximum (1: uniform, undecided) and the share of identity edges in the genotype
    derived at each epoch."""
    metrics = [m for m in ("arch/entropy", "genotype/identity_share")
               if m in frame.columns and frame[m].notna().any()]
    if not metrics:
        raise MissingMetricError("metric 'arch/entropy': no search epoch has it (nor 'genotype/identity_share')")
    fig = Figure(figsize=(5.0 * len(metrics) + 1.6, 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    curves = {metric: epoch_curves(frame, metric, by) for metric in metrics}
    colours = _arm_colours(curves)   # an arm without architecture weights (rsws) has only the identity share
    for ax, metric in zip(axes, metrics):
        _plot_curves(ax, curves[metric], band, colours)
        ax.set_ylabel(label(metric))
        ax.set_ylim(-0.03, 1.03)   # both are shares: a fixed scale, so a 0.03% change does not look steep
    _arm_legend(fig, axes)
    fig.suptitle(title or f"collapse signals over the search ({_band_text(band)})", fontsize=10)
    return fig


PART_METRICS = ("entropy", "none_mass", "identity_share")


def parts_figure(frame: pd.DataFrame, by: Sequence[str] = ARM, *, band: str = "std",
                 title: str | None = None) -> Figure:
    """The collapse diagnostics per searched part over search epochs, one panel per (part, metric), all on a
    fixed 0-1 scale: relative entropy (``arch/<part>/entropy``), mass on ``none`` (``arch/<part>/none_mass``)
    and the identity share of the derived edges (``genotype/<part>/identity_share``)."""
    keys = {m: ("genotype" if m == "identity_share" else "arch") for m in PART_METRICS}
    parts = [p for p in ("intra", "history", "input")
             if f"arch/{p}/entropy" in frame.columns and frame[f"arch/{p}/entropy"].notna().any()]
    if not parts:
        raise MissingMetricError("metric 'arch/<part>/entropy': no search epoch has per-part diagnostics")
    fig = Figure(figsize=(4.2 * len(PART_METRICS) + 1.6, 3.2 * len(parts)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(parts), len(PART_METRICS), squeeze=False))
    names = {(part, metric): f"{keys[metric]}/{part}/{metric}" for part in parts for metric in PART_METRICS}
    curves = {pm: epoch_curves(frame, key, by) for pm, key in names.items()
              if key in frame.columns and frame[key].notna().any()}
    colours = _arm_colours(curves)
    for r, part in enumerate(parts):
        for c, metric in enumerate(PART_METRICS):
            ax = axes[r, c]
            if (part, metric) in curves:
                _plot_curves(ax, curves[(part, metric)], band, colours)
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{part}: {metric.replace('_', ' ')}", fontsize=9)
    _arm_legend(fig, axes)   # an intra arm has no inter panels
    fig.suptitle(title or f"collapse diagnostics per part over the search ({_band_text(band)})", fontsize=10)
    return fig


def genotype_picture(genotype: Any, base: str | Path, title: str | None = None) -> list[Path]:
    """Draw a genotype (object or JSON) as ``base.png`` and ``base.svg`` (:func:`ess.space.draw.draw_genotype`)."""
    parsed = parse_genotype(genotype) if isinstance(genotype, str) else genotype
    if parsed is None:
        raise AnalysisError("genotype: not a genotype to draw")
    return draw_genotype(parsed, Path(base), title=title, formats=FORMATS)


__all__ = ["BANDS", "FORMATS", "INTERVALS", "curves_figure", "entropy_figure", "final_figure", "genotype_picture",
           "label", "op_heatmap_figure", "parts_figure", "save_figure"]
