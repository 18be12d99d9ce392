"""One notation: weight tables, derivations, descriptions, pictures name the same states, inputs, edges."""

from __future__ import annotations

import re

import pytest

from ess.errors import GenotypeError
from ess.space import derive, tables
from ess.space.description import describe, parse_description
from ess.space.draw import picture_edges, render_genotype
from ess.space.genotype import (
    DARTS_V2,
    ENAS,
    Edge,
    ESSGenotype,
    InterGenotype,
    InterNode,
    IntraGenotype,
)
from ess.space.notation import edge_name, node_name, slot_name, states_from_text, states_text, tex
from ess.space.ops import PRIMITIVES
from ess.space.refs import load_genotype

#: a hand-built ESS genotype: a history cell over h_{t-1..t-3}, an input cell (sum, no residual) over x_t, x_{t-1}
ESS = ESSGenotype(
    DARTS_V2.intra,
    history=InterGenotype(3, (InterNode(Edge("relu", 0), Edge("tanh", 1)),
                              InterNode(Edge("sigmoid", 3), Edge("identity", 2)),
                              InterNode(Edge("tanh", 4), Edge("relu", 3)))),
    input=InterGenotype(2, (InterNode(Edge("relu", 0), Edge("tanh", 1)),
                            InterNode(Edge("identity", 2), Edge("sigmoid", 1))), "sum", residual=False))


def test_names_of_states_inputs_and_edges():
    assert [node_name("intra", i) for i in range(3)] == ["s0", "s1", "s2"]
    assert [node_name("history", j, 3) for j in range(5)] == ["h_{t-1}", "h_{t-2}", "h_{t-3}", "s1", "s2"]
    assert [node_name("input", j, 2) for j in range(3)] == ["x_t", "x_{t-1}", "s1"]
    assert edge_name("intra", 3, 1) == "s3 <- s1" and edge_name("history", 4, 2, 3) == "s2 <- h_{t-3}"
    assert slot_name("input", 2, 2, "b") == "s1.b" and slot_name("intra", 8) == "s8"
    assert tex("s12") == "$s_{12}$" and tex("h^_{t-1}") == r"$\hat{h}_{t-1}$" and tex("x_t") == "$x_t$"
    assert states_text([1, 2, 3, 4]) == "s1..s4" and states_text([2, 5, 6, 9, 10, 11]) == "s2, s5, s6, s9..s11"
    assert states_from_text("s2, s5, s6, s9..s11") == [2, 5, 6, 9, 10, 11]
    with pytest.raises(ValueError, match="unknown genotype part 'output'"):
        node_name("output", 0)


def _hot(op: str) -> list[float]:
    return [float(p == op) for p in PRIMITIVES]


def _one_hot_weights(genotype: ESSGenotype) -> dict:
    """The arch-weights JSON a search would write if its weights were one-hot on ``genotype``'s edges."""
    intra = genotype.intra
    rows = [_hot(intra.recurrent[i - 1].op) if intra.recurrent[i - 1].pred == j else [0.0] * len(PRIMITIVES)
            for i, j in tables.intra_rows(intra.steps)]
    out = {"format": tables.FORMAT, "columns": list(PRIMITIVES), "intra": tables.intra_table(rows, intra.steps)}
    for part in ("history", "input"):
        inter = getattr(genotype, part)
        if inter.is_identity:
            out[part] = tables.fixed_part(inter)
            continue
        branches = [[[_hot(e.op) if j == e.pred else [0.0] * len(PRIMITIVES) for j in range(inter.m + k)]
                     for e in (node.a, node.b)] for k, node in enumerate(inter.nodes)]
        out[part] = tables.inter_table(branches, inter.m, "node", inter.combination, inter.residual)
    return out


def _described_edges(text: str) -> set[tuple[str, str, str, str]]:
    """``(part, edge, branch, op)`` read off a description with plain regular expressions."""
    edges = set()
    for part, body in re.findall(r"(\w+)\[([^\]]*)\]", text):
        if part == "intra":
            found = re.findall(r"(s\d+)=(\w+)\(([^()]*)\)", body)
            edges |= {(part, f"{dst} <- {src}", "", op) for dst, op, src in found}
            continue
        for dst, op_a, src_a, op_b, src_b in re.findall(r"(s\d+)=(\w+)\(([^()]*)\)[*+](\w+)\(([^()]*)\)", body):
            edges |= {(part, f"{dst} <- {src_a}", "a", op_a), (part, f"{dst} <- {src_b}", "b", op_b)}
    return edges


@pytest.mark.parametrize("genotype", [DARTS_V2, ESS], ids=["DARTS_V2", "ESS"])
def test_table_derivation_description_and_picture_name_the_same_edges(genotype):
    weights = _one_hot_weights(genotype)
    table = {(r["part"], r["edge"], r["branch"], r["op"]) for r in tables.arch_weight_rows(weights)
             if r["weight"] == 1.0}
    found = derive.derivation(weights)
    assert found.genotype == genotype
    choices = {(c.part, f"{c.where.split('.')[0]} <- {c.source}", c.where.partition(".")[2], c.op)
               for c in found.choices}
    described = _described_edges(describe(genotype))
    drawn = set(picture_edges(genotype))
    assert table == choices == described == drawn
    assert len(drawn) == genotype.intra.steps + 2 * (len(genotype.history.nodes) + len(genotype.input.nodes))
    assert ("intra", "s3 <- s1", "", "relu") in drawn and ("intra", "s1 <- s0", "", "sigmoid") in drawn
    if genotype is ESS:
        assert ("history", "s2 <- h_{t-3}", "b", "identity") in drawn
        assert ("input", "s2 <- s1", "a", "identity") in drawn
    assert parse_description(describe(genotype)) == genotype
    svg = render_genotype(genotype, "svg").decode()   # the op labels are the picture's own text
    for _, _, branch, op in drawn:
        assert (f"{branch}: {op}" if branch else op) in svg


def test_the_description_is_a_genotype_reference():
    for genotype in (DARTS_V2, ENAS, ESS):
        assert load_genotype(describe(genotype)) == genotype
        assert load_genotype("  " + describe(genotype) + "\n") == genotype
    identity_sum = ESSGenotype(DARTS_V2.intra, InterGenotype(m=3, combination="sum"))
    assert "history[identity m=3 sum]" in describe(identity_sum)
    assert parse_description(describe(identity_sum)) == identity_sum
    # parts left out are the identity
    assert parse_description("intra[s1=relu(s0) | mean(s1)]") == ESSGenotype(IntraGenotype((Edge("relu", 0),), (1,)))


@pytest.mark.parametrize("text, message", [
    ("intra[s1=relu(s1) | mean(s1)]", r"intra: s1=relu\(s1\): unknown source 's1' \(known here: s0\)"),
    ("intra[s1=relu(s0)]", "intra: expected 'NODES | mean"),
    ("intra[s2=relu(s0) | mean(s2)]", "intra: 's2=relu\\(s0\\)': expected node s1 next"),
    ("intra[s1=relux(s0) | mean(s1)]", "unknown op 'relux'"),
    ("intra[s1=relu(s0) | mean(s2)]", "intra.concat"),
    ("intra[s1=relu(s0) | mean(s1)] history[m=2 s1=relu(h_{t-3})*tanh(h_{t-1})]", "unknown source 'h_{t-3}'"),
    ("intra[s1=relu(s0) | mean(s1)] history[m=1 s1=relu(h_{t-1})*tanh(h_{t-1}) s2=relu(s1)+tanh(s1)]",
     "mix '\\*' and '\\+'"),
    ("intra[s1=relu(s0) | mean(s1)] bar[identity]", "unknown part 'bar'"),
    ("history[identity]", "no intra"),
    ("intra[s1=relu(s0) | mean(s1)] stray", "expected 'intra"),
])
def test_a_wrong_description_is_one_line_naming_the_problem(text, message):
    with pytest.raises(GenotypeError, match=message) as err:
        parse_description(text, "cell.txt")
    assert str(err.value).startswith("cell.txt: ") and "\n" not in str(err.value)
