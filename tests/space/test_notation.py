"""One notation: the names of states, inputs and edges; the description that reads back as the genotype."""

from __future__ import annotations

import pytest

from ess.errors import GenotypeError
from ess.space.description import parse_description
from ess.space.genotype import (
    DARTS_V2,
    ENAS,
    Edge,
    ESSGenotype,
    InterGenotype,
    InterNode,
    IntraGenotype,
    load_genotype,
)
from ess.space.notation import edge_name, node_name, slot_name, states_from_text, states_text, tex

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


def test_the_description_is_a_genotype_reference():
    for genotype in (DARTS_V2, ENAS, ESS):
        assert load_genotype(genotype.describe()) == genotype
        assert load_genotype("  " + genotype.describe() + "\n") == genotype
    identity_sum = ESSGenotype(DARTS_V2.intra, InterGenotype(m=3, combination="sum"))
    assert "history[identity m=3 sum]" in identity_sum.describe()
    assert parse_description(identity_sum.describe()) == identity_sum
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
