"""Derivation of discrete genotypes from hand-built weight tables (ess.space.derive)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ess.space import derive, tables
from ess.space.derive import DeriveRule
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
NEVER_DROP = DeriveRule(drop_ratio=math.inf)
assert PRIMITIVES == ("none", "tanh", "relu", "sigmoid", "identity")


def row(**weights: float) -> list[float]:
    out = [0.0] * 5
    for name, w in weights.items():
        out[PRIMITIVES.index(name)] = w
    return out


def test_intra_darts_rule():
    table = [
        row(none=0.9, tanh=0.05, relu=0.05),          # s1 <- s0: 'none' largest, still tanh (first of the tie)
        row(sigmoid=0.3, relu=0.2),                   # s2 <- s0
        row(identity=0.31, none=0.6),                 # s2 <- s1: best non-none 0.31 > 0.3 -> identity(s1)
        row(tanh=0.2, relu=0.25),                     # s3 <- s0
        row(none=0.99, sigmoid=0.01),                 # s3 <- s1
        row(relu=0.24, tanh=0.26, identity=0.25),     # s3 <- s2: 0.26 highest best -> tanh(s2)
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


def test_intra_candidate_ops_limit_the_choice():
    table = [row(identity=0.6, tanh=0.4)]
    assert derive.derive_intra(table, 1).recurrent == (Edge("identity", 0),)
    assert derive.derive_intra(table, 1, ops=("none", "tanh", "relu", "sigmoid")).recurrent == (Edge("tanh", 0),)


INTER_TABLES = [
    [row(tanh=0.1), row(relu=0.5, none=0.9)],                       # node 0 a: none 0.9 beats relu:1 0.5
    [row(sigmoid=0.3), row(identity=0.2)],                          # node 0 b -> (sigmoid, 0)
    [row(tanh=0.1), row(tanh=0.1), row(identity=0.4, none=0.5)],    # node 1 a: none 0.5 beats identity:2 0.4
    [row(relu=0.2), row(none=0.8), row(relu=0.19)],                 # node 1 b: none 0.8 beats relu:0 0.2
]


def test_inter_branches_and_combination_without_the_drop_rule():
    m = 2
    g = derive.derive_inter(INTER_TABLES, m, "sum", residual=False, rule=NEVER_DROP)
    assert g == InterGenotype(m=2, nodes=(InterNode(Edge("relu", 1), Edge("sigmoid", 0)),
                                          InterNode(Edge("identity", 2), Edge("relu", 0))),
                              combination="sum", residual=False)
    kw = dict(rule=NEVER_DROP)
    assert derive.derive_inter(INTER_TABLES, m, "search", combination_weights=[0.3, 0.7], **kw).combination == "sum"
    assert derive.derive_inter(INTER_TABLES, m, "search", combination_weights=[0.7, 0.3], **kw).combination == "product"
    with pytest.raises(ValueError, match="combination weights"):
        derive.derive_inter(INTER_TABLES, m, "search")


def test_inter_branches_say_none():
    at_1 = DeriveRule(drop_ratio=1.0)
    # sum: node 0 keeps both branches (only a says none; reported), node 1 is dropped (both say none)
    g = derive.derive_inter(INTER_TABLES, 2, "sum", residual=False, rule=at_1)
    assert g == InterGenotype(m=2, nodes=(InterNode(Edge("relu", 1), Edge("sigmoid", 0)),), combination="sum",
                              residual=False)
    # product: a * 0 = 0, so one "none" drops the node; both nodes go and the cell is the identity
    assert derive.derive_inter(INTER_TABLES, 2, "product", rule=at_1) == IDENTITY_INTER
    # the default ratio, 1.5: node 1's branch a stays (0.5 < 1.5 x 0.4), its branch b still says none (0.8 > 0.3)
    g = derive.derive_inter(INTER_TABLES, 2, "sum", residual=False)
    assert [n.a for n in g.nodes] == [Edge("relu", 1), Edge("identity", 2)]
    assert derive.derive_inter(INTER_TABLES, 2, "product") == IDENTITY_INTER
    # a looser threshold keeps node 0's branch a (0.9 <= 2 * 0.5)
    assert derive.derive_inter(INTER_TABLES, 2, "product", rule=DeriveRule(drop_ratio=2.0)).nodes[0] == InterNode(
        Edge("relu", 1), Edge("sigmoid", 0))


def test_nearly_uniform_weights_rarely_say_none():
    # an undecided search: i.i.d. logits around 0. At ratio 1 about one branch in five says none by chance
    # (none is one of five ops in every row); at the default 1.5 none of these tables drops a node
    import random

    rng = random.Random(0)
    dropped = {1.0: 0, 1.5: 0}
    for _ in range(200):
        logits = [[[rng.gauss(0, 0.05) for _ in range(5)] for _ in range(3)] for _ in range(2)]
        probs = []
        for t_ in logits:
            z = sum(math.exp(v) for r in t_ for v in r)
            probs.append([[math.exp(v) / z for v in r] for r in t_])
        for ratio in dropped:
            g = derive.derive_inter(probs, 3, "product", rule=DeriveRule(drop_ratio=ratio))
            dropped[ratio] += g == IDENTITY_INTER
    assert 0.2 < dropped[1.0] / 200 < 0.5 and dropped[1.5] == 0


def test_inter_without_none_among_the_candidates_never_drops():
    g = derive.derive_inter(INTER_TABLES, 2, "product", ops=("tanh", "relu", "sigmoid", "identity"))
    assert len(g.nodes) == 2


def test_dropped_nodes_are_no_predecessors_and_survivors_are_renumbered():
    m = 1
    branch_tables = [
        [row(none=0.9, tanh=0.1)], [row(relu=1.0)],                          # node 0: dropped (a says none)
        [row(tanh=0.2), row(identity=0.8)], [row(relu=0.3), row(sigmoid=0.7)],   # node 1: best reads node 0 ...
        [row(tanh=0.1), row(), row(relu=0.9)], [row(sigmoid=0.6), row(), row()],  # node 2 reads node 1
    ]
    g = derive.derive_inter(branch_tables, m, "product")
    # node 1 cannot read the dropped node 0: it takes its best among the inputs; node 2 (now node 1) reads it
    assert g.nodes == (InterNode(Edge("tanh", 0), Edge("relu", 0)), InterNode(Edge("relu", 1), Edge("sigmoid", 0)))


def test_duplicate_nodes_are_merged_and_their_readers_redirected():
    m = 2
    branch_tables = [
        [row(tanh=0.9), row()], [row(), row(relu=0.9)],                          # node 0 = tanh:0 * relu:1
        [row(tanh=0.9), row(), row()], [row(), row(relu=0.9), row()],            # node 1: the same
        [row(), row(), row(), row(identity=0.9)], [row(sigmoid=0.9), row(), row(), row()],  # node 2 reads node 1
    ]
    found = derive.derivation({"intra": tables.fixed_part(DARTS_V2.intra), "input": tables.fixed_part(IDENTITY_INTER),
                               "history": tables.inter_table(
                                   [[branch_tables[2 * k], branch_tables[2 * k + 1]] for k in range(3)], m, "node",
                                   "product", True)})
    g = found.genotype.history
    assert g.nodes == (InterNode(Edge("tanh", 0), Edge("relu", 1)), InterNode(Edge("identity", 2), Edge("sigmoid", 0)))
    assert any("history: s2 duplicates s1: merged" in n for n in found.notes)
    kept = derive.derive_inter(branch_tables, m, "product", rule=DeriveRule(merge_duplicates=False))
    assert len(kept.nodes) == 3 and kept.nodes[0] == kept.nodes[1] and kept.nodes[2].a == Edge("identity", 3)


def _joint(intra_rows, history, inputs, m=2):
    return {"format": tables.FORMAT, "mode": "joint", "columns": list(PRIMITIVES),
            "intra": tables.intra_table(intra_rows, 2),
            "history": tables.inter_table(history, m, "node", "product", True),
            "input": tables.inter_table(inputs, m, "node", "product", True)}


def test_a_joint_search_whose_inter_cells_say_none_returns_exactly_a_darts_cell():
    intra = [row(relu=0.6, tanh=0.1), row(tanh=0.5), row(sigmoid=0.7)]
    nothing = [[[row(none=0.45, tanh=0.05), row(none=0.45, relu=0.05)]] * 2,
               [[row(none=0.3), row(none=0.3), row(none=0.3, identity=0.1)]] * 2]
    g = derive.derive_genotype(_joint(intra, nothing, nothing))
    darts = IntraGenotype((Edge("relu", 0), Edge("sigmoid", 1)), (1, 2))
    assert g == ESSGenotype(darts, IDENTITY_INTER, IDENTITY_INTER)
    assert g.history.is_identity and g.input.is_identity


def test_choices_carry_their_margins_and_the_decision_rule():
    intra = [row(relu=0.6, tanh=0.2), row(tanh=0.3), row(sigmoid=0.25)]   # node 1: 3x; node 2: 0.3 vs 0.25
    found = derive.derivation(_joint(intra, [[[row(tanh=0.9), row()], [row(relu=0.5), row(sigmoid=0.4)]]],
                                     [[[row(none=0.2, tanh=0.1), row()], [row(relu=1.0), row()]]]))
    by = {(c.part, c.where): c for c in found.choices}
    one, two = by[("intra", "s1")], by[("intra", "s2")]
    assert (one.op, one.pred, one.weight, one.runner_up, one.uniform) == ("relu", 0, 0.6, 0.2, 0.2)
    assert (one.source, one.chosen, one.to_dict()["source"]) == ("s0", "relu(s0)", "s0")
    assert one.margin == pytest.approx(3.0) and one.over_uniform == pytest.approx(3.0) and one.decided
    assert two.margin == pytest.approx(1.2) and not two.decided      # below the default 1.5
    b = by[("history", "s1.b")]
    assert (b.op, b.pred, b.source, b.runner_up) == ("relu", 0, "h_{t-1}", 0.4) and not b.decided
    assert b.uniform == pytest.approx(1 / 10)
    no = by[("input", "s1.a")]
    assert (no.op, no.weight, no.runner_up, no.source) == ("none", 0.2, 0.1, "") and no.decided
    assert found.genotype.input == IDENTITY_INTER
    assert not found.decided and found.decided_share("intra") == 0.5
    assert "UNDECIDED" in found.summary() and "intra 50% decided (weakest s2: tanh(s0) x1.20" in found.summary()
    assert json.loads(json.dumps(found.to_dict()))["decided"] is False
    assert derive.derivation(_joint(intra, [[[row(tanh=0.9), row()], [row(relu=0.5), row(sigmoid=0.4)]]],
                                    [[[row(tanh=1.0), row()], [row(relu=1.0), row()]]]),
                             DeriveRule(decision_ratio=1.1)).decided_share("intra") == 1.0


def test_rules_reject_bad_knobs():
    with pytest.raises(ValueError, match="drop_ratio"):
        DeriveRule(drop_ratio=0)
    with pytest.raises(ValueError, match="decision_ratio"):
        DeriveRule(decision_ratio=0.5)


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


def test_identity_share():
    assert derive.identity_share(DARTS_V2) == pytest.approx(1 / 8)
    assert derive.identity_share(DARTS_V1) == pytest.approx(1 / 8)
    assert derive.identity_share(ENAS) == 0.0
    inter = InterGenotype(m=2, nodes=(InterNode(Edge("identity", 0), Edge("tanh", 1)),))
    g = ESSGenotype(intra=DARTS_V2.intra, history=inter, input=IDENTITY_INTER)
    assert derive.identity_share(g) == pytest.approx(2 / 10)
    assert derive.identity_share(g, parts=("history",)) == pytest.approx(1 / 2)
    assert derive.identity_share(g, parts=("input",)) == 0.0
    with pytest.raises(ValueError):
        derive.identity_share(g, parts=("decoder",))


def test_derive_genotype_from_json_dict():
    intra = tables.intra_table([row(tanh=1.0), row(none=1.0), row(relu=1.0)], 2)
    branches = [[[row(sigmoid=0.5), row(tanh=0.5)], [row(identity=1.0), row()]]]
    aw = json.loads(json.dumps({
        "format": tables.FORMAT, "mode": "joint", "columns": list(PRIMITIVES), "intra": intra,
        "history": tables.inter_table(branches, 2, "node", "search", True, [0.2, 0.8]),
        "input": tables.fixed_part(IDENTITY_INTER)}))
    g = derive.derive_genotype(aw)
    assert g.intra == IntraGenotype((Edge("tanh", 0), Edge("relu", 1)), (1, 2))
    assert g.history == InterGenotype(m=2, nodes=(InterNode(Edge("sigmoid", 0), Edge("identity", 0)),),
                                      combination="sum", residual=True)
    assert g.input == IDENTITY_INTER
    fixed = derive.derive_genotype({**aw, "intra": tables.fixed_part(DARTS_V2.intra)})
    assert fixed.intra == DARTS_V2.intra


weights = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 5), data=st.data())
def test_random_intra_tables_give_valid_genotypes(steps, data):
    table = data.draw(st.lists(st.lists(weights, min_size=5, max_size=5), min_size=tables.intra_edge_count(steps),
                               max_size=tables.intra_edge_count(steps)))
    g = derive.derive_intra(table, steps)  # IntraGenotype validates: no 'none', predecessor in range
    for i, edge in enumerate(g.recurrent, start=1):
        rows = table[tables.intra_offset(i): tables.intra_offset(i) + i]  # the edges into node i
        best = max(w for r in rows for k, w in enumerate(r) if k != N)
        assert rows[edge.pred][PRIMITIVES.index(edge.op)] == best


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 3), n=st.integers(1, 3), data=st.data())
def test_random_inter_tables_give_valid_genotypes(m, n, data):
    tables_ = [data.draw(st.lists(st.lists(weights, min_size=5, max_size=5), min_size=m + k, max_size=m + k))
               for k in range(n) for _ in range(2)]
    g = derive.derive_inter(tables_, m, "product", rule=NEVER_DROP)
    for k, node in enumerate(g.nodes):
        for b, edge in enumerate((node.a, node.b)):
            assert edge.op != "none" and edge.pred < m + k
            table = tables_[2 * k + b]
            assert table[edge.pred][PRIMITIVES.index(edge.op)] == max(w for r in table for w in r[1:])


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 3), n=st.integers(1, 4), ratio=st.sampled_from([0.5, 1.0, 2.0]), data=st.data())
def test_random_inter_tables_under_the_drop_rule(m, n, ratio, data):
    tables_ = [data.draw(st.lists(st.lists(weights, min_size=5, max_size=5), min_size=m + k, max_size=m + k))
               for k in range(n) for _ in range(2)]
    rule = DeriveRule(drop_ratio=ratio)
    found = derive.derivation({"intra": tables.fixed_part(DARTS_V2.intra), "input": tables.fixed_part(IDENTITY_INTER),
                               "history": tables.inter_table([[tables_[2 * k], tables_[2 * k + 1]] for k in range(n)],
                                                             m, "node", "product", True)}, rule)
    g = found.genotype.history     # InterGenotype validates: no 'none', predecessors in range, in order
    assert g == IDENTITY_INTER or g.m == m
    said_no = {c.where.split(".")[0] for c in found.choices if c.op == "none"}
    kept = n - len(said_no) - sum("merged" in note for note in found.notes)
    assert len(g.nodes) == kept
    for c in found.choices:   # a branch says none when its none weight beats ratio x its best choice
        if c.op == "none":
            assert c.weight > ratio * c.runner_up
        else:                 # kept: the runner-up (second choice or none) is at most max(1, ratio) x the choice
            assert c.runner_up <= max(1.0, ratio) * c.weight
