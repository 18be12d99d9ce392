"""The one notation of genotype states, inputs, edges for humans: tables, descriptions, pictures."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

#: the sequence each inter cell reads (its inputs ``j < m``, ``j = 0`` the newest) and the lag of input 0
INPUTS: dict[str, tuple[str, int]] = {"history": ("h", 1), "input": ("x", 0)}
#: what each part computes: the intra cell ``h_t``, the history cell ``h^_{t-1}``, the input cell ``x^_t``
OUTPUTS: dict[str, str] = {"intra": "h_t", "history": "h^_{t-1}", "input": "x^_t"}
#: what the intra cell's initial state ``s0`` is computed from (the inter cells' outputs)
INTRA_INPUTS: tuple[str, ...] = (OUTPUTS["input"], OUTPUTS["history"])
ARROW = " <- "


def state(k: int) -> str:
    """``s{k}``: state ``k`` of a cell (intra: ``s0`` the initial state; inter: nodes from ``s1``)."""
    return f"s{k}"


def _time(lag: int) -> str:
    return "t" if lag == 0 else f"{{t-{lag}}}"


def _intra_name(index: int, m: int) -> str:
    return state(index)


def _inter_name(part: str, index: int, m: int) -> str:
    if index >= m:
        return state(index - m + 1)
    symbol, first = INPUTS[part]
    return f"{symbol}_{_time(first + index)}"


_NAMERS: dict[str, Callable[[int, int], str]] = {
    "intra": _intra_name,
    **{part: (lambda index, m, part=part: _inter_name(part, index, m)) for part in INPUTS},
}


def node_name(part: str, index: int, m: int = 0) -> str:
    """The name of index ``index`` of ``part``, in the index space of the genotype JSON.

    Intra: index ``i`` is state ``s{i}`` (``s0`` the initial state). Inter: index ``j < m`` is input ``j``
    (history ``h_{t-1}``, ``h_{t-2}`` ...; input ``x_t``, ``x_{t-1}`` ...), index ``m + k`` is node ``s{k+1}``.
    """
    try:
        namer = _NAMERS[part]
    except KeyError:
        raise ValueError(f"unknown genotype part {part!r} (known: {', '.join(_NAMERS)})") from None
    return namer(index, m)


def slot_name(part: str, node: int, m: int = 0, branch: str | None = None) -> str:
    """One decision of a derivation: node ``node``'s incoming edge (``s3``), or an inter branch (``s1.a``)."""
    name = node_name(part, node, m)
    return f"{name}.{branch}" if branch else name


def edge_name(part: str, node: int, pred: int, m: int = 0) -> str:
    """The edge from ``pred`` into ``node`` (both indices of ``part``): ``s3 <- s1``, ``s1 <- h_{t-2}``."""
    return f"{node_name(part, node, m)}{ARROW}{node_name(part, pred, m)}"


def source_names(part: str, limit: int, m: int = 0) -> dict[str, int]:
    """``{name: index}`` of the indices ``0 .. limit-1`` of ``part`` (the reverse of :func:`node_name`)."""
    return {node_name(part, j, m): j for j in range(limit)}


def states_text(nodes: Sequence[int], render: Callable[[str], str] = str) -> str:
    """States ``nodes`` as ``s1..s8`` or ``s2, s5, s6, s9..s11`` (runs of three or more shortened)."""
    runs: list[list[int]] = []
    for k in nodes:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    parts = [f"{render(state(r[0]))}..{render(state(r[-1]))}" if len(r) >= 3 else
             ", ".join(render(state(k)) for k in r) for r in runs]
    return ", ".join(parts)


def states_from_text(text: str) -> list[int]:
    """The reverse of :func:`states_text`: ``"s2, s5..s7"`` -> ``[2, 5, 6, 7]``; ValueError otherwise."""
    out: list[int] = []
    for item in (t.strip() for t in text.split(",")):
        match = re.fullmatch(r"s(\d+)(?:\.\.s(\d+))?", item)
        if not match:
            raise ValueError(f"not a state or a range of states: {item!r}")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        out.extend(range(first, last + 1))
    return out


def tex(name: str) -> str:
    """A name as matplotlib mathtext: ``s3`` -> ``$s_{3}$``, ``h^_{t-1}`` -> ``$\\hat{h}_{t-1}$``."""
    state_match = re.fullmatch(r"s(\d+)", name)
    if state_match:
        return f"$s_{{{state_match.group(1)}}}$"
    return "$" + re.sub(r"([a-z])\^", r"\\hat{\1}", name) + "$"


__all__ = ["ARROW", "INPUTS", "INTRA_INPUTS", "OUTPUTS", "edge_name", "node_name", "slot_name", "source_names",
           "state", "states_from_text", "states_text", "tex"]
