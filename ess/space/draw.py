"""Draw an :class:`~ess.space.genotype.ESSGenotype` as one figure, with matplotlib alone (no graphviz).

The figure has three panels: the intra cell pi on top (inputs ``x^_t`` and ``h^_{t-1}`` feed ``s0``, the
states are laid out as a tree by depth, the ``concat`` states feed ``h_t`` through a mean), and the two
inter cells below it, side by side when they fit under it, else one above the other (the history DAG f
over ``h_{t-1..t-m}``, the input DAG g over ``x_t..x_{t-m+1}``, each drawn with only the inputs it
reads; its nodes ``s1, s2 ...`` in order, left to right, top to bottom; every node combines its branches
``a`` and ``b`` by a product or a sum, the output is the residual plus the mean of the nodes). Boxes
carry the names of :mod:`ess.space.notation`; edges are coloured by op and labelled with it.

Everything is laid out in data units at one scale in x and y (:mod:`ess.space.routing` routes the
edges and places the labels); fonts keep their size in points whatever the scale. Only the
object-oriented API is used (``Figure`` and the Agg canvas), never pyplot, so no global state leaks.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from matplotlib.transforms import Bbox

from ess.checkpoint import atomic_write_bytes
from ess.errors import ESSError, GenotypeError
from ess.space.genotype import ESSGenotype, InterGenotype, IntraGenotype
from ess.space.notation import ARROW, INTRA_INPUTS, OUTPUTS, node_name, state, states_text, tex
from ess.space.ops import PRIMITIVES, ZERO
from ess.space.routing import BENDS, place_label, preferring, route

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

# Font sizes in points, never scaled: at DPI 150 an edge label's lowercase letters are about 12 px tall
# in the PNG itself, so they stay legible when a viewer (MLflow's artifact preview) shrinks it to fit.
LABEL_PT = 10.5
BOX_PT = 13.0
TITLE_PT = 12.5
LEGEND_PT = 10.5
SUPTITLE_PT = 15.0
EDGE_LABEL, NODE_LABEL = "edge-label", "node-label"   # gids of the drawn labels (SVG ids too)

DX = 1.9  # column spacing of the intra cell (data units; one unit is at most one inch)
DX_INTER = 2.3  # of the inter cells, whose edges carry longer labels ("a: identity")
DY = 1.0  # row spacing
NODE_SIZE = (0.66, 0.44)
IO_SIZE = (0.96, 0.5)
MARGIN = 0.45  # data units around a panel's boxes
MAX_WIDTH_IN = 22.0


# --------------------------------------------------------------------------------------------------
# Panel model: boxes and arrows in data units, every box named by ess.space.notation


@dataclass
class _Box:
    x: float
    y: float
    name: str  # the notation's name (s3, h_{t-1}, x^_t): the text drawn is its mathtext
    kind: str  # input, init, node or output
    suffix: str = ""  # drawn after the name (the combination symbol of an inter node)

    @property
    def size(self) -> tuple[float, float]:
        return IO_SIZE if self.kind in ("input", "output") else NODE_SIZE

    @property
    def text(self) -> str:
        return tex(self.name) + self.suffix

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
    op: str | None  # the edge's op (None: a structure edge)
    colour: str
    branch: str = ""  # a or b (inter edges)
    dashed: bool = False
    bends: tuple[float, ...] = BENDS
    note: str | None = None  # the label of a structure edge (residual, identity)

    @property
    def label(self) -> str | None:
        if self.op is None:
            return self.note
        return f"{self.branch}: {self.op}" if self.branch else self.op


@dataclass
class _Panel:
    part: str
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

    def edges(self) -> list[tuple[str, str, str, str]]:
        """``(part, edge, branch, op)`` of every op edge as drawn, edges named as in the weight tables."""
        return [(self.part, f"{self.boxes[a.dst].name}{ARROW}{self.boxes[a.src].name}", a.branch, a.op)
                for a in self.arrows if a.op is not None]


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
    out = OUTPUTS["intra"]
    panel = _Panel("intra", f"intra cell $\\pi$ (DARTS cell): {tex(out)} = mean({states_text(intra.concat, tex)})")
    y0 = -row[0] * DY
    for key, name, dy in zip(("x", "h"), INTRA_INPUTS, (0.36, -0.36)):
        panel.boxes[key] = _Box(0.0, y0 + dy * DY, name, "input")
    for i in range(intra.steps + 1):
        panel.boxes[f"n{i}"] = _Box((depth[i] + 1) * DX, -row[i] * DY, node_name("intra", i),
                                    "init" if i == 0 else "node")
    panel.boxes["out"] = _Box((max(depth.values()) + 2) * DX, centre, out, "output")
    for key in ("x", "h"):
        panel.arrows.append(_Arrow(key, "n0", None, STRUCTURE_COLOUR))
    for i, edge in enumerate(intra.recurrent, start=1):
        panel.arrows.append(_Arrow(f"n{edge.pred}", f"n{i}", edge.op, _op_colour(edge.op)))
    for i in intra.concat:
        panel.arrows.append(_Arrow(f"n{i}", "out", None, STRUCTURE_COLOUR, dashed=True))
    return panel


# --------------------------------------------------------------------------------------------------
# Inter cells: the inputs they read in the first column, nodes in order by depth, the output last

_CELL_NAMES = {"history": "history cell $f$", "input": "input cell $g$"}
_SYMBOLS = {"product": r"\odot", "sum": "+"}


def _inter_title(inter: InterGenotype, part: str) -> str:
    out, base = tex(OUTPUTS[part]), tex(node_name(part, 0, inter.m))
    if inter.is_identity:
        return f"{_CELL_NAMES[part]}: identity ({out} = {base}, m={inter.m})"
    n = len(inter.nodes)  # >= 1: a cell without nodes is the identity
    mean = tex(state(1)) if n == 1 else f"mean({states_text(range(1, n + 1), tex)})"
    residual = f"{base} + " if inter.residual else ""
    settings = f"m={inter.m}, {inter.combination}, {'residual' if inter.residual else 'no residual'}"
    return (f"{_CELL_NAMES[part]} ({settings})\n{out} = {residual}{mean},  "
            f"$s_k = a_k {_SYMBOLS[inter.combination]} b_k$")


def _inter_columns(inter: InterGenotype) -> list[int]:
    """The column of every node: one right of its deepest predecessor, never left of the node before it
    (so ``s1, s2, ...`` read left to right, top to bottom)."""
    m, columns = inter.m, []
    for node in inter.nodes:
        deps = [columns[e.pred - m] if e.pred >= m else 0 for e in (node.a, node.b)]
        columns.append(max(1 + max(deps), columns[-1] if columns else 1))
    return columns


def _inter_panel(inter: InterGenotype, part: str) -> _Panel:
    m = inter.m
    panel = _Panel(part, _inter_title(inter, part))
    used = sorted({e.pred for n in inter.nodes for e in (n.a, n.b) if e.pred < m} | ({0} if inter.residual else set()))
    centre = -(len(used) - 1) / 2 * DY
    for r, j in enumerate(used):  # only the inputs the cell reads
        panel.boxes[f"i{j}"] = _Box(0.0, -r * DY, node_name(part, j, m), "input")
    columns = _inter_columns(inter)
    symbol = f"$\\ {_SYMBOLS[inter.combination]}$"
    for d in sorted(set(columns)):
        column = [k for k, c in enumerate(columns) if c == d]
        for r, k in enumerate(column):
            y = centre + ((len(column) - 1) / 2 - r) * DY
            panel.boxes[f"i{m + k}"] = _Box(d * DX_INTER, y, node_name(part, m + k, m), "node", symbol)
    out_x = (max(columns) + 1) * DX_INTER if inter.nodes else 1.3 * DX_INTER
    panel.boxes["out"] = _Box(out_x, centre, OUTPUTS[part], "output")
    for k, node in enumerate(inter.nodes):
        dst = f"i{m + k}"
        same = node.a.pred == node.b.pred
        for edge, branch, bend in ((node.a, "a", -0.22), (node.b, "b", 0.22)):  # a above b
            panel.arrows.append(_Arrow(f"i{edge.pred}", dst, edge.op, _op_colour(edge.op), branch=branch,
                                       bends=preferring(bend if same else 0.0)))
    for k in range(len(inter.nodes)):
        panel.arrows.append(_Arrow(f"i{m + k}", "out", None, STRUCTURE_COLOUR, dashed=True))
    if inter.residual:
        panel.arrows.append(_Arrow("i0", "out", None, STRUCTURE_COLOUR,
                                   note="residual" if inter.nodes else "identity"))
    return panel


def _panels(genotype: ESSGenotype) -> list[_Panel]:
    return [_intra_panel(genotype.intra), _inter_panel(genotype.history, "history"),
            _inter_panel(genotype.input, "input")]


def picture_edges(genotype: ESSGenotype) -> list[tuple[str, str, str, str]]:
    """``(part, edge, branch, op)`` of every op edge the picture of ``genotype`` draws, in drawing order;
    ``edge`` joins the names of the boxes it connects (``s3 <- s1``), as the weight tables name edges."""
    return [edge for panel in _panels(genotype) for edge in panel.edges()]


# --------------------------------------------------------------------------------------------------
# Rendering


def _route_all(panel: _Panel) -> None:
    extent = panel.box_extent()
    panel.routes = []
    for arrow in panel.arrows:
        src, dst = panel.boxes[arrow.src], panel.boxes[arrow.dst]
        others = [b for name, b in panel.boxes.items() if name not in (arrow.src, arrow.dst)]
        panel.routes.append(route(src, dst, others, arrow.bends, panel.routes, extent))


def _draw_panel(ax, panel: _Panel, renderer: RendererBase) -> None:
    ax.set_axis_off()
    ax.set_title(panel.title, fontsize=TITLE_PT, loc="left")
    taken = [b.bbox(pad=0.04) for b in panel.boxes.values()]
    for box in panel.boxes.values():
        w, h = box.size
        ax.add_patch(FancyBboxPatch((box.x - w / 2, box.y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor=_FILL[box.kind], edgecolor="#333333", linewidth=1.1, zorder=3))
        ax.text(box.x, box.y, box.text, ha="center", va="center", fontsize=BOX_PT, zorder=4, gid=NODE_LABEL)
    for index, (arrow, points) in enumerate(zip(panel.arrows, panel.routes)):
        ax.add_patch(FancyArrowPatch(path=MplPath(points), arrowstyle="-|>", mutation_scale=13,
                                     color=arrow.colour, linewidth=1.7 if arrow.op else 1.2,
                                     linestyle="--" if arrow.dashed else "-", zorder=2,
                                     shrinkA=0, shrinkB=0))
        if arrow.label:
            text = ax.text(0, 0, arrow.label, ha="center", va="center", fontsize=LABEL_PT, color=arrow.colour,
                           zorder=5, gid=EDGE_LABEL, bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                                                           "edgecolor": "none"})
            others = panel.routes[:index] + panel.routes[index + 1:]
            place_label(ax, renderer, text, points, taken, others)


def _legend_handles() -> list[Line2D]:
    handles = [Line2D([0], [0], color=_op_colour(op), linewidth=2, label=op) for op in PRIMITIVES if op != ZERO]
    handles.append(Line2D([0], [0], color=STRUCTURE_COLOUR, linewidth=1.2, label="input / residual"))
    handles.append(Line2D([0], [0], color=STRUCTURE_COLOUR, linewidth=1.2, linestyle="--", label="into the mean"))
    return handles


def _rows(widths: Sequence[float]) -> list[list[int]]:
    """Panels by row: the intra cell on top, the inter cells side by side below it when they fit under
    its width (or under :data:`SIDE_BY_SIDE_IN`), else one above the other, so the figure stays narrow."""
    if widths[1] + widths[2] + GAP_IN <= max(widths[0], SIDE_BY_SIDE_IN):
        return [[0], [1, 2]]
    return [[0], [1], [2]]


SIDE, GAP_IN, HEAD_IN = 0.4, 0.5, 0.9  # inches: figure sides, between panels, above the first row
SIDE_BY_SIDE_IN = 12.0


def figure(genotype: ESSGenotype, title: str | None = None) -> Figure:
    """The picture of ``genotype`` as a matplotlib Figure (Agg canvas): the panels at one scale, laid out in
    rows. Its edge labels carry the gid :data:`EDGE_LABEL`, its box labels :data:`NODE_LABEL`."""
    panels = _panels(genotype)
    for panel in panels:
        _route_all(panel)
    extents = [p.extent() for p in panels]
    widths = [x1 - x0 for x0, x1, _, _ in extents]
    heights = [y1 - y0 for _, _, y0, y1 in extents]
    rows = _rows(widths)
    content = max(sum(widths[i] for i in row) + GAP_IN * (len(row) - 1) for row in rows)
    scale = min(1.0, (MAX_WIDTH_IN - 2 * SIDE) / content)
    fig_w = max(content * scale + 2 * SIDE, 8.0)
    heads = [0.85 if any("\n" in panels[i].title for i in row) else 0.5 for row in rows]  # room for titles
    row_h = [max(heights[i] for i in row) * scale for row in rows]
    fig_h = HEAD_IN + sum(heads) + sum(row_h) + SIDE
    fig = Figure(figsize=(fig_w, fig_h), dpi=100)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.suptitle(title or "ESS genotype", fontsize=SUPTITLE_PT, y=1 - 0.3 / fig_h)
    fig.legend(handles=_legend_handles(), loc="upper center", ncol=6, frameon=False, fontsize=LEGEND_PT,
               bbox_to_anchor=(0.5, 1 - 0.5 / fig_h))
    avail, top = fig_w - 2 * SIDE, fig_h - HEAD_IN
    for row, head, h in zip(rows, heads, row_h):
        top -= head + h
        extra = (avail - GAP_IN * (len(row) - 1) - sum(widths[i] for i in row) * scale) / len(row)
        left = SIDE
        for i in row:
            w = widths[i] * scale + extra
            ax = fig.add_axes((left / fig_w, top / fig_h, w / fig_w, h / fig_h))
            x0, x1, y0, y1 = extents[i]
            cx, cy = (x0 + x1) / 2, (y1 + y0) / 2
            ax.set_xlim(cx - w / scale / 2, cx + w / scale / 2)
            ax.set_ylim(cy - h / scale / 2, cy + h / scale / 2)
            ax.set_gid(panels[i].part)
            _draw_panel(ax, panels[i], renderer)
            left += w + GAP_IN
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
    fig = figure(genotype, title)
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
    fig = figure(genotype, title)
    try:
        return [atomic_write_bytes(path, _save(fig, fmt)) for path, fmt in targets]
    finally:
        fig.clear()
