"""Typed, immutable genotypes: the discrete architectures that search derives and retraining uses.

* :class:`IntraGenotype` is the DARTS recurrent cell (reference.md section 3): node ``i`` (1-based)
  takes one ``(op, predecessor)`` edge from a node ``j < i`` (node 0 is the initial node computed from
  ``[x^_t, h^_{t-1}]``); the output is the mean of the ``concat`` nodes.
* :class:`InterGenotype` is one inter-cell DAG of ESS (reference.md section 2). Its first ``m``
  indices are the inputs (index 0 the most recent: ``h_{t-1}`` for the history DAG, ``x_t`` for the
  input DAG); node ``k`` (0-based) sits at index ``m + k`` and is ``F(alpha; beta) = a ⊙ b`` of two
  branches, each an ``(op, predecessor)`` edge from an index ``< m + k``. The output is the residual
  (index 0) plus the mean of the nodes. With no nodes it is the identity (the plain RNN).
* :class:`ESSGenotype` holds the intra cell and the two inter cells (history over ``h``, input over ``x``).

Every constructor validates; the JSON readers report the file and the field of the first problem.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ess.checkpoint import atomic_write_text
from ess.errors import GenotypeError
from ess.space.ops import OPS, PRIMITIVES, ZERO

COMBINATIONS: tuple[str, ...] = ("product", "sum")
_REPR_LIMIT = 60


def _short(value: Any) -> str:
    """``repr(value)`` cut to one short line, so that error messages stay one line whatever the input."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT - 3] + "..."


@dataclass(frozen=True)
class Edge:
    """One chosen edge: apply ``op`` to the linear map of node ``pred``."""

    op: str
    pred: int

    def __iter__(self):  # lets an Edge unpack like DARTS's (op, pred) tuples
        yield self.op
        yield self.pred


def _as_edge(value: Any, where: str) -> Edge:
    """An :class:`Edge` from an Edge or an ``(op, pred)`` pair; anything else is a :class:`GenotypeError`."""
    if isinstance(value, Edge):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return Edge(value[0], value[1])
    raise GenotypeError(f"{where}: expected an (op, predecessor) pair, got {_short(value)}")


def _check_edge(edge: Edge, limit: int, where: str) -> None:
    if not isinstance(edge.op, str) or edge.op not in OPS:
        raise GenotypeError(f"{where}.op: unknown op {_short(edge.op)} (known: {', '.join(PRIMITIVES)})")
    if edge.op == ZERO:
        raise GenotypeError(f"{where}.op: 'none' (the zero op) cannot be chosen in a genotype")
    if isinstance(edge.pred, bool) or not isinstance(edge.pred, int):
        raise GenotypeError(f"{where}.pred: expected an integer, got {_short(edge.pred)}")
    if not 0 <= edge.pred < limit:
        raise GenotypeError(f"{where}.pred: predecessor {edge.pred} out of range 0..{limit - 1}")


@dataclass(frozen=True)
class IntraGenotype:
    """The DARTS recurrent cell: ``recurrent[i-1]`` is the edge into node ``i``."""

    recurrent: tuple[Edge, ...]
    concat: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "recurrent", tuple(
            _as_edge(e, f"intra.recurrent[{i}]") for i, e in enumerate(_as_tuple(self.recurrent, "intra.recurrent"))))
        object.__setattr__(self, "concat", _as_tuple(self.concat, "intra.concat"))
        if not self.recurrent:
            raise GenotypeError("intra.recurrent: wrong node count: a cell needs at least one node")
        for i, edge in enumerate(self.recurrent, start=1):
            _check_edge(edge, i, f"intra.recurrent[{i - 1}]")
        if not self.concat:
            raise GenotypeError("intra.concat: wrong node count: no output node")
        n = len(self.recurrent)
        for k, node in enumerate(self.concat):
            if isinstance(node, bool) or not isinstance(node, int) or not 1 <= node <= n:
                raise GenotypeError(f"intra.concat[{k}]: node {_short(node)} out of range 1..{n}")
        if len(set(self.concat)) != len(self.concat):
            raise GenotypeError("intra.concat: a node is listed twice")

    @property
    def steps(self) -> int:
        return len(self.recurrent)


@dataclass(frozen=True)
class InterNode:
    """One inter-cell node ``F(alpha; beta) = a ⊙ b`` (or ``a + b``) of two branches."""

    a: Edge
    b: Edge

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", _as_edge(self.a, "a"))
        object.__setattr__(self, "b", _as_edge(self.b, "b"))


@dataclass(frozen=True)
class InterGenotype:
    """One inter-cell DAG over the last ``m`` hidden states (or inputs)."""

    m: int = 1
    nodes: tuple[InterNode, ...] = ()
    combination: str = "product"
    residual: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(
            _as_inter_node(n, f"nodes[{k}]") for k, n in enumerate(_as_tuple(self.nodes, "nodes"))))
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1:
            raise GenotypeError(f"m: expected an integer >= 1, got {_short(self.m)}")
        if not isinstance(self.combination, str) or self.combination not in COMBINATIONS:
            raise GenotypeError(
                f"combination: unknown {_short(self.combination)} (known: {', '.join(COMBINATIONS)})")
        if not isinstance(self.residual, bool):
            raise GenotypeError(f"residual: expected true or false, got {_short(self.residual)}")
        for k, node in enumerate(self.nodes):
            _check_edge(node.a, self.m + k, f"nodes[{k}].a")
            _check_edge(node.b, self.m + k, f"nodes[{k}].b")
        if not self.nodes and not self.residual:
            raise GenotypeError("nodes: wrong node count: a cell without nodes needs the residual")

    @property
    def is_identity(self) -> bool:
        return not self.nodes and self.residual


def _as_tuple(value: Any, where: str) -> tuple:
    if not isinstance(value, (list, tuple, range)):
        raise GenotypeError(f"{where}: expected a sequence, got {_short(value)}")
    return tuple(value)


def _as_inter_node(value: Any, where: str) -> InterNode:
    if isinstance(value, InterNode):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            return InterNode(value[0], value[1])
        except GenotypeError as err:
            raise GenotypeError(f"{where}.{err}") from None
    raise GenotypeError(f"{where}: expected an InterNode or an (a, b) pair of edges, got {_short(value)}")


IDENTITY_INTER = InterGenotype(m=1, nodes=(), combination="product", residual=True)


@dataclass(frozen=True)
class ESSGenotype:
    """A full ESS architecture: intra cell pi, history DAG f over h, input DAG g over x."""

    intra: IntraGenotype
    history: InterGenotype = field(default=IDENTITY_INTER)
    input: InterGenotype = field(default=IDENTITY_INTER)

    def __post_init__(self) -> None:
        if not isinstance(self.intra, IntraGenotype):
            raise GenotypeError(f"intra: expected an IntraGenotype, got {type(self.intra).__name__}")
        for name in ("history", "input"):
            if not isinstance(getattr(self, name), InterGenotype):
                raise GenotypeError(
                    f"{name}: expected an InterGenotype, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "intra": {
                "recurrent": [[e.op, e.pred] for e in self.intra.recurrent],
                "concat": list(self.intra.concat),
            },
            "history": _inter_to_dict(self.history),
            "input": _inter_to_dict(self.input),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype") -> ESSGenotype:
        return genotype_from_dict(data, source)


def _inter_to_dict(inter: InterGenotype) -> dict[str, Any]:
    return {
        "m": inter.m,
        "combination": inter.combination,
        "residual": inter.residual,
        "nodes": [{"a": [n.a.op, n.a.pred], "b": [n.b.op, n.b.pred]} for n in inter.nodes],
    }


# --------------------------------------------------------------------------------------------------
# JSON reading with errors that name the source and the field


def _expect(cond: bool, source: str, where: str, msg: str) -> None:
    if not cond:
        raise GenotypeError(f"{source}: {where}: {msg}")


def _edge_from(value: Any, source: str, where: str) -> Edge:
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise GenotypeError(f"{source}: {where}: expected an [op, predecessor] pair, got {_short(value)}")
    return Edge(value[0], value[1])


def _json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for messages about JSON input."""
    for types, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"),
                        ((list, tuple), "an array"), (dict, "an object")):
        if isinstance(value, types):
            return name
    return "null" if value is None else type(value).__name__


def _keys(data: Any, allowed: set[str], required: set[str], source: str, where: str) -> None:
    _expect(isinstance(data, dict), source, where, f"expected an object, got {_json_type(data)}")
    unknown = sorted((k for k in data if k not in allowed), key=repr)  # keys need not be strings
    _expect(not unknown, source, where,
            f"unknown field {_short(unknown[0])} (known: {', '.join(sorted(allowed))})" if unknown else "")
    missing = sorted(required - set(data))
    _expect(not missing, source, where, f"missing field {missing[0]!r}" if missing else "")


def _inter_from(data: Any, source: str, where: str) -> InterGenotype:
    _keys(data, {"m", "combination", "residual", "nodes"}, {"m", "nodes"}, source, where)
    nodes_raw = data["nodes"]
    _expect(isinstance(nodes_raw, list), source, f"{where}.nodes", "expected a list")
    nodes = []
    for k, node in enumerate(nodes_raw):
        _keys(node, {"a", "b"}, {"a", "b"}, source, f"{where}.nodes[{k}]")
        nodes.append(InterNode(_edge_from(node["a"], source, f"{where}.nodes[{k}].a"),
                               _edge_from(node["b"], source, f"{where}.nodes[{k}].b")))
    try:
        return InterGenotype(m=data["m"], nodes=tuple(nodes),
                             combination=data.get("combination", "product"),
                             residual=data.get("residual", True))
    except GenotypeError as err:
        raise GenotypeError(f"{source}: {where}.{err}") from None


def genotype_from_dict(data: Any, source: str = "genotype") -> ESSGenotype:
    """Build an :class:`ESSGenotype` from its JSON form, or raise a one-line :class:`GenotypeError`."""
    _keys(data, {"intra", "history", "input"}, {"intra"}, source, "top level")
    intra_raw = data["intra"]
    _keys(intra_raw, {"recurrent", "concat"}, {"recurrent"}, source, "intra")
    rec = intra_raw["recurrent"]
    _expect(isinstance(rec, list), source, "intra.recurrent", "expected a list of [op, predecessor] pairs")
    edges = tuple(_edge_from(e, source, f"intra.recurrent[{i}]") for i, e in enumerate(rec))
    concat = intra_raw.get("concat", list(range(1, len(edges) + 1)))
    _expect(isinstance(concat, list), source, "intra.concat", "expected a list of node numbers")
    try:
        intra = IntraGenotype(edges, tuple(concat))
    except GenotypeError as err:
        raise GenotypeError(f"{source}: {err}") from None
    history = _inter_from(data["history"], source, "history") if "history" in data else IDENTITY_INTER
    inputs = _inter_from(data["input"], source, "input") if "input" in data else IDENTITY_INTER
    return ESSGenotype(intra=intra, history=history, input=inputs)


def parse_genotype_json(text: str, source: str = "genotype") -> ESSGenotype:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise GenotypeError(f"{source}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except (ValueError, RecursionError) as err:  # an over-long integer literal, or nesting too deep
        reason = str(err).splitlines()[0][:100] if str(err) else err.__class__.__name__
        raise GenotypeError(f"{source}: not valid JSON ({reason})") from None
    return genotype_from_dict(data, source)


def save_genotype(genotype: ESSGenotype, path: str | os.PathLike) -> Path:
    """Write the genotype as JSON atomically (temporary file, then rename)."""
    return atomic_write_text(Path(path), genotype.to_json() + "\n")


# --------------------------------------------------------------------------------------------------
# Built-ins (reference.md section 3; ENAS as given in the DARTS code)


def _intra(edges, concat) -> IntraGenotype:
    return IntraGenotype(tuple(Edge(op, pred) for op, pred in edges), tuple(concat))


DARTS_V1 = ESSGenotype(_intra(
    [("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5), ("relu", 1)],
    range(1, 9)))
DARTS_V2 = ESSGenotype(_intra(
    [("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5), ("tanh", 3), ("relu", 5)],
    range(1, 9)))
ENAS = ESSGenotype(_intra(
    [("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3), ("relu", 4), ("relu", 7),
     ("relu", 8), ("relu", 8), ("relu", 8)],
    [2, 5, 6, 9, 10, 11]))

BUILTINS: dict[str, ESSGenotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "ENAS": ENAS}


def builtin_name(ref: Any) -> str | None:
    """The canonical name (``DARTS_V2``) when ``ref`` names a built-in, case-insensitively; else None."""
    if isinstance(ref, str) and ref.strip().upper() in BUILTINS:
        return ref.strip().upper()
    return None
