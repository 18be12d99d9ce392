"""Where the edges of a genotype picture run, where their labels sit (in data units, one scale in x, y)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
from matplotlib.backend_bases import RendererBase
from matplotlib.text import Text
from matplotlib.transforms import Bbox

BENDS = (0.0, 0.18, -0.18, 0.32, -0.32, 0.5, -0.5, 0.7, -0.7)
LABEL_TS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78, 0.15, 0.85)
LABEL_SHIFTS = (0.0, 0.22, -0.22, 0.4, -0.4)  # data units across the edge, tried when along it fails


class Box(Protocol):
    """What routing needs of a drawn box: its centre and a point test."""

    x: float
    y: float

    def contains(self, points: np.ndarray, pad: float = 0.0) -> np.ndarray: ...


def preferring(bend: float) -> tuple[float, ...]:
    """The bend candidates with ``bend`` first and the others ordered by closeness to it."""
    return tuple(sorted(set(BENDS) | {bend}, key=lambda b: (abs(b - bend), -b * np.sign(bend or 1))))


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


def _clip(points: np.ndarray, src: Box, dst: Box, pad: float = 0.03) -> np.ndarray:
    """The part of the curve between the border of the source box and the border of the target box."""
    outside_src = ~src.contains(points, pad)
    outside_dst = ~dst.contains(points, pad)
    first = int(np.argmax(outside_src))
    last = len(points) - 1 - int(np.argmax(outside_dst[::-1]))
    return points[first:last + 1] if last > first + 1 else points[[0, -1]]


def _length(points: np.ndarray) -> float:
    return float(np.hypot(*np.diff(points, axis=0).T).sum())


def route(src: Box, dst: Box, others: Sequence[Box], bends: Sequence[float], drawn: list[np.ndarray],
          extent: tuple[float, float, float, float]) -> np.ndarray:
    """The cheapest curve: crossing another box costs most, then retracing an earlier edge, then
    leaving the area of the boxes and detours, then the arrow's own order of preference."""
    p0, p3 = np.array([src.x, src.y]), np.array([dst.x, dst.y])
    x0, x1, y0, y1 = extent
    straight = max(float(np.hypot(*(p3 - p0))), 1e-9)
    best, best_cost = None, float("inf")
    for rank, curve in enumerate(_candidates(p0, p3, bends)):
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


def _normal(points: np.ndarray, index: int) -> np.ndarray:
    """The unit normal of the curve at ``points[index]``."""
    lo, hi = points[max(index - 1, 0)], points[min(index + 1, len(points) - 1)]
    d = hi - lo
    length = float(np.hypot(*d)) or 1.0
    return np.array([-d[1], d[0]]) / length


def place_label(ax, renderer: RendererBase, text: Text, points: np.ndarray, taken: list[Bbox],
                 other_curves: list[np.ndarray]) -> None:
    """Move ``text`` to the first spot along its edge (then beside it) that overlaps no box, earlier
    label or other edge; failing that, to the spot that overlaps least."""
    to_data = ax.transData.inverted()
    best, best_cost = None, float("inf")
    spots = [(shift, t) for shift in LABEL_SHIFTS for t in LABEL_TS]
    for rank, (shift, t) in enumerate(spots):
        index = int(round(t * (len(points) - 1)))
        x, y = points[index] + shift * _normal(points, index)
        text.set_position((x, y))
        box = text.get_window_extent(renderer).transformed(to_data).expanded(1.1, 1.2)
        cost = _overlap(box, taken) * 1000 + _crossings(box, other_curves) * 0.5 + abs(shift) + rank * 1e-3
        if cost < best_cost:
            best, best_cost = ((x, y), box), cost
        if cost < 0.1:
            break
    (x, y), box = best
    text.set_position((x, y))
    taken.append(box)


__all__ = ["BENDS", "LABEL_SHIFTS", "LABEL_TS", "Box", "place_label", "preferring", "route"]
