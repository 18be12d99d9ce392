"""Derivation of discrete genotypes from hand-built weight tables (ess.space.derive)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ess.space import derive
from ess.space.genotype import (
    DARTS_V1,
    DARTS_V2,
    ENAS,
    IDENTITY_INTER,
    Edge,
    ESSGenotype,
    InterGenotype,
    InterNode,
    IntraGenotype,
)
from ess.space.ops import PRIMITIVES

N = 0  # column of the zero op
assert PRIMITIVES == ("none", "tanh", "relu", "sigmoid", "identity")


def row(**weights: float) -> list[float]:
    out = [0.0] * 5
    for name, w in weights.items():
        out[PRIMITIVES.index(name)] = w
    return out


def test_layouts():
    assert derive.intra_edge_count(8) == 36
    assert derive.intra_rows(3) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert [derive.intra_offset(i) for i in (1, 2, 3, 4)] == [0, 1, 3, 6]
    assert derive.inter_row_count(3, 3) == 24
    assert derive.inter_rows(2, 2) == [(0, "a", 0), (0, "a", 1), (0, "b", 0), (0, "b", 1),
                                       (1, "a", 0), (1, "a", 1), (1, "a", 2), (1, "b", 0), (1, "b", 1), (1, "b", 2)]
    assert [derive.inter_offset(2, k) for k in range(3)] == [0, 4, 10]


def test_intra_darts_rule():
    table = [
        row(none=0.9, tanh=0.05, relu=0.05),          # 1<-0: 'none' largest, still tanh (first of the tie)
        row(sigmoid=0.3, relu=0.2),                   # 2<-0
        row(identity=0.31, none=0.6),                 # 2<-1: best non-none 0.31 > 0.3 -> (identity, 1)
        row(tanh=0.2, relu=0.25),                     # 3<-0
        row(none=0.99, sigmoid=0.01),                 # 3<-1
        row(relu=0.24, tanh=0.26, identity=0.25),     # 3<-2: 0.26 highest best -> (tanh, 2)
    ]
    g = derive.derive_intra(table, 3)
    assert g.recurrent == (Edge("tanh", 0), Edge("identity", 1), Edge("tanh", 2))
    assert g.concat == (1, 2, 3)
    assert derive.derive_intra(table) == g  # steps inferred from the row count


def test_intra_none_never_chosen():
    table = [row(none=1.0)] + [row(none=0.97, relu=0.01, sigmoid=0.02)] * 2
    g = derive.derive_intra(table, 2)
    assert all(e.op != "none" for e in g.recurrent)
    assert g.recurrent == (Edge("tanh", 0), Edge("sigmoid", 0))  # all-zero non-none row: first op


def test_intra_ties_go_to_lowest_predecessor():
    table = [row(relu=0.5)] + [row(relu=0.4), row(relu=0.4)]
    assert derive.derive_intra(table, 2).recurrent[1] == Edge("relu", 0)


def test_inter_branches_and_combination():
    m = 2
    tables = [
        [row(tanh=0.1), row(relu=0.5, none=0.9)],                       # node 0 a -> (relu, 1)
        [row(sigmoid=0.3), row(identity=0.2)],                          # node 0 b -> (sigmoid, 0)
        [row(tanh=0.1), row(tanh=0.1), row(identity=0.4, none=0.5)],    # node 1 a -> (identity, 2): node 0
        [row(relu=0.2), row(none=0.8), row(relu=0.19)],                 # node 1 b -> (relu, 0)
    ]
    g = derive.derive_inter(tables, m, "sum", residual=False)
    assert g == InterGenotype(m=2, nodes=(InterNode(Edge("relu", 1), Edge("sigmoid", 0)),
                                          InterNode(Edge("identity", 2), Edge("relu", 0))),
                              combination="sum", residual=False)
    assert derive.derive_inter(tables, m, "search", combination_weights=[0.3, 0.7]).combination == "sum"
    assert derive.derive_inter(tables, m, "search", combination_weights=[0.7, 0.3]).combination == "product"
    with pytest.raises(ValueError, match="combination weights"):
        derive.derive_inter(tables, m, "search")


def test_combination_argmax():
    assert derive.derive_combination([0.2, 0.8]) == "sum"
    assert derive.derive_combination({"product": 0.6, "sum": 0.4}) == "product"
    assert derive.derive_combination([0.5, 0.5]) == "product"
    with pytest.raises(ValueError):
        derive.derive_combination([1.0, 0.0, 0.0])


def test_bad_tables():
    with pytest.raises(ValueError, match="expected 5 op weights"):
        derive.best_edge([[0.1, 0.2]])
    with pytest.raises(ValueError, match="expected 3 rows"):
        derive.derive_intra([row(tanh=1.0)] * 4, 2)
    with pytest.raises(ValueError, match="expected 2 rows"):
        derive.derive_inter([[row(tanh=1.0)], [row(tanh=1.0)]], 2)


def test_parameter_free_share():
    assert derive.parameter_free_share(DARTS_V2) == pytest.approx(1 / 8)
    assert derive.parameter_free_share(DARTS_V1) == pytest.approx(1 / 8)
    assert derive.parameter_free_share(ENAS) == 0.0
    inter = InterGenotype(m=2, nodes=(InterNode(Edge("identity", 0), Edge("tanh", 1)),))
    g = ESSGenotype(intra=DARTS_V2.intra, history=inter, input=IDENTITY_INTER)
    assert derive.parameter_free_share(g) == pytest.approx(2 / 10)
    assert derive.parameter_free_share(g, parts=("history",)) == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        derive.parameter_free_share(g, parts=("decoder",))


def _arch_weights_dict():
    intra = derive.intra_table([row(tanh=1.0), row(none=1.0), row(relu=1.0)], 2)
    branches = [[[row(sigmoid=0.5), row(tanh=0.5)], [row(identity=1.0), row()]]]
    return {
        "format": derive.FORMAT, "mode": "joint", "columns": list(PRIMITIVES), "intra": intra,
        "history": derive.inter_table(branches, 2, "node", "search", True, [0.2, 0.8]),
        "input": derive.fixed_part(IDENTITY_INTER),
    }


def test_derive_genotype_from_json_dict():
    aw = json.loads(json.dumps(_arch_weights_dict()))
    g = derive.derive_genotype(aw)
    assert g.intra == IntraGenotype((Edge("tanh", 0), Edge("relu", 1)), (1, 2))
    assert g.history == InterGenotype(m=2, nodes=(InterNode(Edge("sigmoid", 0), Edge("identity", 0)),),
                                      combination="sum", residual=True)
    assert g.input == IDENTITY_INTER
    fixed = derive.derive_genotype({**aw, "intra": derive.fixed_part(DARTS_V2.intra)})
    assert fixed.intra == DARTS_V2.intra


def test_entropies():
    aw = _arch_weights_dict()
    dists = derive.distributions(aw)
    assert len(dists["intra"]) == 3 and "input" not in dists
    assert len(dists["history"]) == 3  # two branches (node scope: one distribution each) + combination
    assert derive.entropy([0.5, 0.5]) == pytest.approx(math.log(2))
    # intra one-hot rows: 0; branch a: log 2; branch b: 0; combination (0.2, 0.8)
    comb = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert derive.arch_entropy(aw) == pytest.approx((math.log(2) + comb) / 6)
    uniform = derive.intra_table([[0.2] * 5] * 3, 2)
    assert derive.arch_entropy({"intra": uniform, "history": derive.fixed_part(IDENTITY_INTER),
                                "input": derive.fixed_part(IDENTITY_INTER)}) == pytest.approx(math.log(5))


weights = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 5), data=st.data())
def test_random_intra_tables_give_valid_genotypes(steps, data):
    table = data.draw(st.lists(st.lists(weights, min_size=5, max_size=5), min_size=derive.intra_edge_count(steps),
                               max_size=derive.intra_edge_count(steps)))
    g = derive.derive_intra(table, steps)  # IntraGenotype validates: no 'none', predecessor in range
    for i, edge in enumerate(g.recurrent, start=1):
        rows = table[derive.intra_offset(i): derive.intra_offset(i) + i]  # the edges into node i
        best = max(w for r in rows for k, w in enumerate(r) if k != N)
        assert rows[edge.pred][PRIMITIVES.index(edge.op)] == best


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 3), n=st.integers(1, 3), data=st.data())
def test_random_inter_tables_give_valid_genotypes(m, n, data):
    tables = [data.draw(st.lists(st.lists(weights, min_size=5, max_size=5), min_size=m + k, max_size=m + k))
              for k in range(n) for _ in range(2)]
    g = derive.derive_inter(tables, m, "product")
    for k, node in enumerate(g.nodes):
        for b, edge in enumerate((node.a, node.b)):
            assert edge.op != "none" and edge.pred < m + k
            table = tables[2 * k + b]
            assert table[edge.pred][PRIMITIVES.index(edge.op)] == max(w for r in table for w in r[1:])
