"""Genotype pictures as people read them: label size in the PNG, no overlaps, nodes in order, used inputs only."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from ess.space import draw
from ess.space.genotype import DARTS_V2, Edge, ESSGenotype, InterGenotype, InterNode

#: s3 reads only inputs (a depth-first layout drew it left of s2); the input cell reads x_t and x_{t-1} of three
CROWDED = ESSGenotype(
    DARTS_V2.intra,
    history=InterGenotype(3, (InterNode(Edge("relu", 2), Edge("tanh", 0)),
                              InterNode(Edge("sigmoid", 3), Edge("identity", 2)),
                              InterNode(Edge("tanh", 1), Edge("relu", 2)),
                              InterNode(Edge("identity", 4), Edge("sigmoid", 5)))),
    input=InterGenotype(3, (InterNode(Edge("relu", 0), Edge("tanh", 1)),
                            InterNode(Edge("sigmoid", 0), Edge("sigmoid", 0)),
                            InterNode(Edge("tanh", 0), Edge("tanh", 3)))))


@pytest.fixture(scope="module")
def drawn():
    """The figure of :data:`CROWDED`, its PNG as grey levels at the PNG's own size, and its renderer."""
    fig = draw.figure(CROWDED, "crowded")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=draw.DPI, facecolor="white")
    grey = np.asarray(Image.open(buffer).convert("L")).astype(int)
    yield fig, grey, fig.canvas.get_renderer()
    fig.clear()


def _texts(ax, gid):
    return [t for t in ax.texts if t.get_gid() == gid]


def test_edge_labels_are_legible_in_the_png_itself(drawn):
    """Gap: labels shrank with the figure (to ~7 px); now every label's letters are >= 15 px tall from the top of
    its tallest letter to the baseline (every op name has one), which puts its lowercase letters at >= ~11 px."""
    fig, grey, renderer = drawn
    px = draw.DPI / fig.dpi
    heights = {}
    for ax in fig.axes:
        for text in _texts(ax, draw.EDGE_LABEL):
            box = text.get_window_extent(renderer)
            crop = grey[int(grey.shape[0] - box.y1 * px):int(grey.shape[0] - box.y0 * px),
                        int(box.x0 * px):int(box.x1 * px)]
            ink = np.nonzero((crop < 200).any(axis=1))[0]
            heights[(ax.get_gid(), text.get_text())] = int(ink.max() - ink.min() + 1)
    assert len(heights) >= 10 and min(heights.values()) >= 15, heights


def test_no_label_covers_another_label_or_a_box(drawn):
    fig, _, renderer = drawn
    for ax in fig.axes:
        labels = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(ax, draw.EDGE_LABEL)]
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(ax, draw.NODE_LABEL)]
        for i, (name, box) in enumerate(labels):
            for other, other_box in labels[:i] + boxes:
                assert not box.overlaps(other_box), (ax.get_gid(), name, other)


def _states(ax) -> list[tuple[int, float, float]]:
    """``(k, x, y)`` of the boxes of the nodes s_k of an inter panel."""
    out = []
    for text in _texts(ax, draw.NODE_LABEL):
        match = re.match(r"\$s_\{(\d+)\}\$", text.get_text())
        if match:
            out.append((int(match.group(1)), *text.get_position()))
    return out


def test_inter_nodes_are_drawn_in_order_and_only_the_inputs_read(drawn):
    fig, _, _ = drawn
    panels = {ax.get_gid(): ax for ax in fig.axes}
    assert list(panels) == ["intra", "history", "input"]
    for part in ("history", "input"):
        states = _states(panels[part])
        reading = sorted(states, key=lambda s: (round(s[1], 6), -s[2]))    # left to right, top to bottom
        assert [k for k, _, _ in reading] == list(range(1, len(getattr(CROWDED, part).nodes) + 1)), part
    names = {t.get_text() for t in _texts(panels["input"], draw.NODE_LABEL)}
    assert {"$x_t$", "$x_{t-1}$"} <= names and "$x_{t-2}$" not in names
    history = {t.get_text() for t in _texts(panels["history"], draw.NODE_LABEL)}
    assert {"$h_{t-1}$", "$h_{t-2}$", "$h_{t-3}$"} <= history
    reads_oldest = InterGenotype(3, (InterNode(Edge("relu", 2), Edge("tanh", 2)),), residual=False)
    svg = draw.render_genotype(ESSGenotype(DARTS_V2.intra, input=reads_oldest), "svg").decode()
    assert svg.count('<g id="input">') == 1
    section = svg.split('<g id="input">')[1]
    assert "relu" in section and section.count("x_t") == 0     # no residual: x_t is not read, not drawn
