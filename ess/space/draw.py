"""Draw an :class:`~ess.space.genotype.ESSGenotype` as one figure, with matplotlib alone (no graphviz).

The figure has three panels: the intra cell pi on top (inputs ``x^_t`` and ``h^_{t-1}`` feed node 0,
the nodes are laid out as a tree by depth, the ``concat`` nodes feed ``h_t`` through a mean), and the
two inter cells below (the history DAG f over ``h_{t-1..t-m}`` and the input DAG g over
``x_t..x_{t-m+1}``; every node combines its branches ``a`` and ``b`` by a product or a sum, the output
is the residual plus the mean of the nodes). Edges are coloured by op and labelled with it.

Everything is laid out in data units at one scale in x and y, so edge curves are computed in data
coordinates: each edge tries a few arcs and S-curves and keeps the cheapest (crossing a box costs most,
then retracing an earlier edge, leaving the panel and detours), and each label tries a few positions
along its edge and keeps the first that covers no box, earlier label or other edge. Only the
object-oriented API is used (``Figure`` and the Agg canvas), never pyplot, so no global state leaks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as MplPath
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from ess.checkpoint import atomic_write_bytes
from ess.errors import ESSError, GenotypeError
from ess.space.genotype import ESSGenotype, InterGenotype, IntraGenotype
from ess.space.ops import PRIMITIVES, ZERO

FORMATS: tuple[str, ...] = ("png", "svg")
DPI = 150

OP_COLOURS: dict[str, str] = {
    "tanh": "#1f77b4",
    "relu": "#d62728",
    "sigmoid": "#2ca02c",
    "identity": "#9467bd",
}
STRUCTURE_COLOUR = "#8c8c8c"  # edges that carry no op: cell inputs, the mean, the residual
_FILL = {"input": "#e8eef7", "init": "#fdf0d5", "node": "#ffffff", "output": "#e3f1e0"}

DX = 1.8  # column spacing (data units; one unit is at most one inch)
DY = 1.0  # row spacing
NODE_SIZE = (0.62, 0.42)
IO_SIZE = (0.9, 0.46)
MARGIN = 0.45  # data units around a panel's boxes
MAX_WIDTH_IN = 22.0
_BENDS = (0.0, 0.18, -0.18, 0.32, -0.32, 0.5, -0.5, 0.7, -0.7)
_LABEL_TS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78, 0.15, 0.85)


# --------------------------------------------------------------------------------------------------
# Panel model: boxes and arrows in data units


@dataclass
class _Box:
    x: float
    y: float
    text: str
    kind: str  # input, init, node or output
    fontsize: float = 11.0

    @property
    def size(self) -> tuple[float, float]:
        return IO_SIZE if self.kind in ("input", "output") else NODE_SIZE

    def contains(self, points: np.ndarray, pad: float = 0.0) -> np.ndarray:
        w, h = self.size
        return ((np.abs(points[:, 0] - self.x) <= w / 2 + pad)
                & (np.abs(points[:, 1] - self.y) <= h / 2 + pad))

    def bbox(self, pad: float = 0.0) -> Bbox:
        w, h = self.size
        return Bbox.from_extents(self.x - w / 2 - pad, self.y - h / 2 - pad,
                                 self.x + w / 2 + pad, self.y + h / 2 + pad)


@dataclass
class _Arrow:
    src: str
    dst: str
    label: str | None
    colour: str
    dashed: bool = False
    bends: tuple[float, ...] = _BENDS


@dataclass
class _Panel:
    title: str
    boxes: dict[str, _Box] = field(default_factory=dict)
    arrows: list[_Arrow] = field(default_factory=list)
    routes: list[np.ndarray] = field(default_factory=list)  # one curve per arrow, once routed

    def box_extent(self) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)`` of the boxes."""
        xs = [b.x + s * b.size[0] / 2 for b in self.boxes.values() for s in (-1, 1)]
        ys = [b.y + s * b.size[1] / 2 for b in self.boxes.values() for s in (-1, 1)]
        return min(xs), max(xs), min(ys), max(ys)

    def extent(self) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)`` of the boxes and the routed curves, plus the margin."""
        x0, x1, y0, y1 = self.box_extent()
        for points in self.routes:
            x0, x1 = min(x0, points[:, 0].min()), max(x1, points[:, 0].max())
            y0, y1 = min(y0, points[:, 1].min()), max(y1, points[:, 1].max())
        return x0 - MARGIN, x1 + MARGIN, y0 - MARGIN, y1 + MARGIN


def _op_colour(op: str) -> str:
    return OP_COLOURS.get(op, "#444444")


# --------------------------------------------------------------------------------------------------
# Intra cell: a tree (every node has one predecessor), drawn by depth with leaves in DFS order


def _tree_rows(intra: IntraGenotype) -> dict[int, float]:
    """Row of every node: leaves get consecutive rows in DFS order, a parent the mean of its children."""
    n = intra.steps
    children: dict[int, list[int]] = {i: [] for i in range(n + 1)}
    for i, edge in enumerate(intra.recurrent, start=1):
        children[edge.pred].append(i)
    row: dict[int, float] = {}
    stack, leaves = [0], 0
    while stack:
        v = stack.pop()
        if children[v]:
            stack.extend(reversed(children[v]))
        else:
            row[v] = float(leaves)
            leaves += 1
    for v in range(n, -1, -1):  # children have larger indices than their parent
        if children[v]:
            row[v] = sum(row[c] for c in children[v]) / len(children[v])
    return row


def _intra_panel(intra: IntraGenotype) -> _Panel:
    depth = {0: 0}
    for i, edge in enumerate(intra.recurrent, start=1):
        depth[i] = depth[edge.pred] + 1
    row = _tree_rows(intra)
    rows = list(row.values())
    centre = -(min(rows) + max(rows)) / 2 * DY
    concat = ", ".join(map(str, intra.concat))
    panel = _Panel(title=f"intra cell $\\pi$ (DARTS cell): $h_t$ = mean of nodes {concat}")
    y0 = -row[0] * DY
    panel.boxes["x"] = _Box(0.0, y0 + 0.36 * DY, r"$\hat{x}_t$", "input")
    panel.boxes["h"] = _Box(0.0, y0 - 0.36 * DY, r"$\hat{h}_{t-1}$", "input")
    for i in range(intra.steps + 1):
        panel.boxes[f"n{i}"] = _Box((depth[i] + 1) * DX, -row[i] * DY, str(i), "init" if i == 0 else "node")
    panel.boxes["out"] = _Box((max(depth.values()) + 2) * DX, centre, r"$h_t$", "output")
    for name in ("x", "h"):
        panel.arrows.append(_Arrow(name, "n0", None, STRUCTURE_COLOUR))
    for i, edge in enumerate(intra.recurrent, start=1):
        panel.arrows.append(_Arrow(f"n{edge.pred}", f"n{i}", edge.op, _op_colour(edge.op)))
    for i in intra.concat:
        panel.arrows.append(_Arrow(f"n{i}", "out", None, STRUCTURE_COLOUR, dashed=True))
    return panel


# --------------------------------------------------------------------------------------------------
# Inter cells: m inputs in the first column, nodes in columns by depth, the output last


def _inter_names(kind: str, m: int) -> tuple[list[str], str, str]:
    """Labels of the inputs, of the output and of the residual input for the history or input DAG."""
    if kind == "history":
        return [f"$h_{{t-{i + 1}}}$" for i in range(m)], r"$\hat{h}_{t-1}$", "h_{t-1}"
    return (["$x_t$"] + [f"$x_{{t-{i}}}$" for i in range(1, m)]), r"$\hat{x}_t$", "x_t"


def _inter_title(inter: InterGenotype, kind: str) -> str:
    name = "history cell $f$" if kind == "history" else "input cell $g$"
    _, out, base = _inter_names(kind, inter.m)
    if inter.is_identity:
        return f"{name}: identity ({out} = ${base}$, m={inter.m})"
    symbol = r"\odot" if inter.combination == "product" else "+"
    n = len(inter.nodes)  # >= 1: a cell without nodes is the identity
    mean = "$s_1$" if n == 1 else f"mean$(s_1..s_{{{n}}})$"
    residual = f"${base}$ + " if inter.residual else ""
    settings = f"m={inter.m}, {inter.combination}, {'residual' if inter.residual else 'no residual'}"
    return f"{name} ({settings})\n{out} = {residual}{mean},  $s_k = a_k {symbol} b_k$"


def _inter_panel(inter: InterGenotype, kind: str) -> _Panel:
    m = inter.m
    inputs, out_text, _ = _inter_names(kind, m)
    panel = _Panel(title=_inter_title(inter, kind))
    centre = -(m - 1) / 2 * DY
    ys = [-i * DY for i in range(m)]
    depth = [0] * m
    for i, text in enumerate(inputs):
        panel.boxes[f"i{i}"] = _Box(0.0, ys[i], text, "input")
    for node in inter.nodes:
        depth.append(1 + max(depth[node.a.pred], depth[node.b.pred]))
        # provisional row: the barycentre of its two predecessors, used to order each column
        ys.append((ys[node.a.pred] + ys[node.b.pred]) / 2)
    symbol = r"\odot" if inter.combination == "product" else "+"
    for d in range(1, max(depth) + 1):
        # top to bottom by provisional row (rows are negative going down), ties by index
        column = sorted((i for i in range(m, len(depth)) if depth[i] == d), key=lambda i: (-ys[i], i))
        for j, i in enumerate(column):
            ys[i] = centre + ((len(column) - 1) / 2 - j) * DY
            panel.boxes[f"i{i}"] = _Box(d * DX, ys[i], f"$s_{{{i - m + 1}}}\\ {symbol}$", "node")
    out_x = (max(depth) + 1) * DX if inter.nodes else 1.3 * DX
    panel.boxes["out"] = _Box(out_x, centre, out_text, "output")
    for k, node in enumerate(inter.nodes):
        dst = f"i{m + k}"
        same = node.a.pred == node.b.pred
        panel.arrows.append(_Arrow(f"i{node.a.pred}", dst, f"a: {node.a.op}", _op_colour(node.a.op),
                                   bends=_preferring(0.22 if same else 0.0)))
        panel.arrows.append(_Arrow(f"i{node.b.pred}", dst, f"b: {node.b.op}", _op_colour(node.b.op),
                                   bends=_preferring(-0.22 if same else 0.0)))
    for k in range(len(inter.nodes)):
        panel.arrows.append(_Arrow(f"i{m + k}", "out", None, STRUCTURE_COLOUR, dashed=True))
    if inter.residual:
        label = "residual" if inter.nodes else "identity"
        panel.arrows.append(_Arrow("i0", "out", label, STRUCTURE_COLOUR))
    return panel


def _preferring(bend: float) -> tuple[float, ...]:
    """The bend candidates with ``bend`` first and the others ordered by closeness to it."""
    return tuple(sorted(set(_BENDS) | {bend}, key=lambda b: (abs(b - bend), -b * np.sign(bend or 1))))


# --------------------------------------------------------------------------------------------------
# Rendering


def _cubic(p0: np.ndarray, c1: np.ndarray, c2: np.ndarray, p3: np.ndarray, n: int = 160) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t ** 2 * c2 + t ** 3 * p3


def _candidates(p0: np.ndarray, p3: np.ndarray, bends: Sequence[float]) -> list[np.ndarray]:
    """Curves from p0 to p3: arcs bent sideways by ``bends`` x length, then S-curves leaving and
    arriving horizontally that change rows early, midway or late."""
    d = p3 - p0
    curves = []
    for bend in bends:
        control = (p0 + p3) / 2 + bend * np.array([d[1], -d[0]])
        curves.append(_cubic(p0, p0 + 2 / 3 * (control - p0), p3 + 2 / 3 * (control - p3), p3))
    for early, late in ((0.5, 0.5), (0.9, 0.1), (0.1, 0.9), (1.0, 0.0), (0.0, 1.0)):
        c1 = p0 + np.array([early * d[0], 0.0])
        c2 = p3 - np.array([late * d[0], 0.0])
        curves.append(_cubic(p0, c1, c2, p3))
    return curves


def _clip(points: np.ndarray, src: _Box, dst: _Box, pad: float = 0.03) -> np.ndarray:
    """The part of the curve between the border of the source box and the border of the target box."""
    outside_src = ~src.contains(points, pad)
    outside_dst = ~dst.contains(points, pad)
    first = int(np.argmax(outside_src))
    last = len(points) - 1 - int(np.argmax(outside_dst[::-1]))
    return points[first:last + 1] if last > first + 1 else points[[0, -1]]


def _length(points: np.ndarray) -> float:
    return float(np.hypot(*np.diff(points, axis=0).T).sum())


def _route(arrow: _Arrow, boxes: dict[str, _Box], drawn: list[np.ndarray],
           extent: tuple[float, float, float, float]) -> np.ndarray:
    """The cheapest curve: crossing another box costs most, then retracing an earlier edge, then
    leaving the area of the boxes and detours, then the arrow's own order of preference."""
    src, dst = boxes[arrow.src], boxes[arrow.dst]
    p0, p3 = np.array([src.x, src.y]), np.array([dst.x, dst.y])
    others = [b for name, b in boxes.items() if name not in (arrow.src, arrow.dst)]
    x0, x1, y0, y1 = extent
    straight = max(float(np.hypot(*(p3 - p0))), 1e-9)
    best, best_cost = None, float("inf")
    for rank, curve in enumerate(_candidates(p0, p3, arrow.bends)):
        points = _clip(curve, src, dst)
        hits = sum(bool(b.contains(points, pad=0.1).any()) for b in others)
        mid = points[len(points) // 2]
        retrace = sum(bool(np.min(np.hypot(*(path - mid).T)) < 0.15) for path in drawn)
        excursion = max(0.0, y0 - points[:, 1].min()) + max(0.0, points[:, 1].max() - y1) + \
            max(0.0, x0 - points[:, 0].min()) + max(0.0, points[:, 0].max() - x1)
        detour = _length(curve) / straight - 1
        cost = 100 * hits + 10 * retrace + 4 * excursion + 2 * detour + 0.05 * rank
        if cost < best_cost:
            best, best_cost = points, cost
    return best


def _route_all(panel: _Panel) -> None:
    extent = panel.box_extent()
    panel.routes = []
    for arrow in panel.arrows:
        panel.routes.append(_route(arrow, panel.boxes, panel.routes, extent))


def _overlap(a: Bbox, others: Iterable[Bbox]) -> float:
    total = 0.0
    for b in others:
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        if w > 0 and h > 0:
            total += w * h
    return total


def _crossings(box: Bbox, curves: Iterable[np.ndarray]) -> int:
    """How many curves pass under ``box``."""
    return sum(bool(((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1)
                     & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)).any()) for points in curves)


def _place_label(ax, renderer: RendererBase, text: Text, points: np.ndarray, taken: list[Bbox],
                 other_curves: list[np.ndarray]) -> None:
    """Move ``text`` along its edge to the first spot that overlaps no box, earlier label or other edge."""
    to_data = ax.transData.inverted()
    best, best_cost = None, float("inf")
    for rank, t in enumerate(_LABEL_TS):
        x, y = points[int(round(t * (len(points) - 1)))]
        text.set_position((x, y))
        box = text.get_window_extent(renderer).transformed(to_data).expanded(1.12, 1.25)
        cost = _overlap(box, taken) * 1000 + _crossings(box, other_curves) * 0.5 + rank * 1e-3
        if cost < best_cost:
            best, best_cost = ((x, y), box), cost
        if cost < 1e-2:
            break
    (x, y), box = best
    text.set_position((x, y))
    taken.append(box)


def _draw_panel(ax, panel: _Panel, renderer: RendererBase, font: float) -> None:
    ax.set_axis_off()
    ax.set_title(panel.title, fontsize=11 * font, loc="left")
    taken = [b.bbox(pad=0.04) for b in panel.boxes.values()]
    for box in panel.boxes.values():
        w, h = box.size
        ax.add_patch(FancyBboxPatch((box.x - w / 2, box.y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor=_FILL[box.kind], edgecolor="#333333", linewidth=1.1, zorder=3))
        ax.text(box.x, box.y, box.text, ha="center", va="center", fontsize=box.fontsize * font, zorder=4)
    for index, (arrow, points) in enumerate(zip(panel.arrows, panel.routes)):
        ax.add_patch(FancyArrowPatch(path=MplPath(points), arrowstyle="-|>", mutation_scale=11 * font,
                                     color=arrow.colour, linewidth=1.6 if arrow.label else 1.1,
                                     linestyle="--" if arrow.dashed else "-", zorder=2,
                                     shrinkA=0, shrinkB=0))
        if arrow.label:
            text = ax.text(0, 0, arrow.label, ha="center", va="center", fontsize=8.5 * font, color=arrow.colour,
                           zorder=5, bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                                           "edgecolor": "none"})
            others = panel.routes[:index] + panel.routes[index + 1:]
            _place_label(ax, renderer, text, points, taken, others)


def _legend_handles() -> list[Line2D]:
    handles = [Line2D([0], [0], color=_op_colour(op), linewidth=2, label=op) for op in PRIMITIVES if op != ZERO]
    handles.append(Line2D([0], [0], color=STRUCTURE_COLOUR, linewidth=1.2, label="input / residual"))
    handles.append(Line2D([0], [0], color=STRUCTURE_COLOUR, linewidth=1.2, linestyle="--", label="into the mean"))
    return handles


def _figure(genotype: ESSGenotype, title: str | None) -> Figure:
    """Lay the three panels out at one scale (inches per data unit) and draw them."""
    panels = [_intra_panel(genotype.intra), _inter_panel(genotype.history, "history"),
              _inter_panel(genotype.input, "input")]
    for panel in panels:
        _route_all(panel)
    extents = [p.extent() for p in panels]
    widths = [x1 - x0 for x0, x1, _, _ in extents]
    heights = [y1 - y0 for _, _, y0, y1 in extents]
    gap, side, head = 0.5, 0.4, 0.8  # inches
    heads = [0.45, 0.75 if "\n" in panels[1].title + panels[2].title else 0.45]  # room for the panel titles
    content = max(widths[0], widths[1] + widths[2])
    scale = min(1.0, (MAX_WIDTH_IN - 2 * side - gap) / content)
    font = max(0.6, scale)
    fig_w = max(content * scale + 2 * side + gap, 8.0)
    rows = [heights[0] * scale, max(heights[1], heights[2]) * scale]
    fig_h = head + heads[0] + rows[0] + heads[1] + rows[1] + side
    fig = Figure(figsize=(fig_w, fig_h), dpi=100)
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    fig.suptitle(title or "ESS genotype", fontsize=14, y=1 - 0.3 / fig_h)
    fig.legend(handles=_legend_handles(), loc="upper center", ncol=6, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1 - 0.5 / fig_h))
    avail = fig_w - 2 * side
    extra = avail - gap - (widths[1] + widths[2]) * scale
    rects = [  # (left, bottom, width, height) in inches
        (side, side + rows[1] + heads[1], avail, rows[0]),
        (side, side, widths[1] * scale + extra / 2, rows[1]),
        (side + widths[1] * scale + extra / 2 + gap, side, widths[2] * scale + extra / 2, rows[1]),
    ]
    for panel, (x0, x1, y0, y1), (left, bottom, w, h) in zip(panels, extents, rects):
        ax = fig.add_axes((left / fig_w, bottom / fig_h, w / fig_w, h / fig_h))
        cx, cy = (x0 + x1) / 2, (y1 + y0) / 2
        ax.set_xlim(cx - w / scale / 2, cx + w / scale / 2)
        ax.set_ylim(cy - h / scale / 2, cy + h / scale / 2)
        _draw_panel(ax, panel, renderer, font)
    return fig


# --------------------------------------------------------------------------------------------------
# Public entry point


def output_paths(out: Path, formats: Sequence[str] | None) -> list[tuple[Path, str]]:
    """The ``(file, format)`` pairs to write: by suffix, both formats for no suffix, or ``formats``."""
    if formats is not None:
        wanted = [f.lower().lstrip(".") for f in formats]
        bad = [f for f in wanted if f not in FORMATS]
        if bad or not wanted:
            raise ESSError(f"unsupported drawing format {bad[0] if bad else '(none)'!r} "
                           f"(supported: {', '.join(FORMATS)})")
        base = out.with_suffix("") if out.suffix.lower().lstrip(".") in FORMATS else out
        return [(base.with_name(f"{base.name}.{f}"), f) for f in dict.fromkeys(wanted)]
    suffix = out.suffix.lower().lstrip(".")
    if not suffix:
        return [(out.with_name(f"{out.name}.{f}"), f) for f in FORMATS]
    if suffix not in FORMATS:
        raise ESSError(f"{out}: unsupported drawing format '.{suffix}' (use .png or .svg, or no suffix for both)")
    return [(out, suffix)]


def render_genotype(genotype: ESSGenotype, fmt: str, title: str | None = None) -> bytes:
    """The drawing of ``genotype`` as PNG or SVG bytes."""
    if fmt not in FORMATS:
        raise ESSError(f"unsupported drawing format {fmt!r} (supported: {', '.join(FORMATS)})")
    if not isinstance(genotype, ESSGenotype):
        raise GenotypeError(f"cannot draw a {type(genotype).__name__}: expected an ESSGenotype")
    fig = _figure(genotype, title)
    try:
        return _save(fig, fmt)
    finally:
        fig.clear()


def _save(fig: Figure, fmt: str) -> bytes:
    buffer = BytesIO()
    # svg.fonttype none keeps text as <text> elements (searchable, small); no date keeps output stable
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ess"}):
        fig.savefig(buffer, format=fmt, dpi=DPI, facecolor="white",
                    metadata={"Date": None} if fmt == "svg" else {"Software": None})
    return buffer.getvalue()


def draw_genotype(genotype: ESSGenotype, out: str | Path, title: str | None = None,
                  formats: Sequence[str] | None = None) -> list[Path]:
    """Draw the intra cell and both inter cells of ``genotype`` into one figure; return the written files.

    The format follows the suffix of ``out`` (``.png`` at 150 dpi, or ``.svg``); with no suffix, or
    with ``formats=("png", "svg")``, both are written next to each other. Files are written atomically.
    """
    if not isinstance(genotype, ESSGenotype):
        raise GenotypeError(f"cannot draw a {type(genotype).__name__}: expected an ESSGenotype")
    targets = output_paths(Path(out), formats)
    fig = _figure(genotype, title)
    try:
        return [atomic_write_bytes(path, _save(fig, fmt)) for path, fmt in targets]
    finally:
        fig.clear()
