"""Row layouts, labelled weight tables and their distributions (ess.space.tables)."""

from __future__ import annotations

import json
import math

import pytest

from ess.space import tables
from ess.space.genotype import DARTS_V2, IDENTITY_INTER
from ess.space.ops import PRIMITIVES


def row(**weights: float) -> list[float]:
    out = [0.0] * 5
    for name, w in weights.items():
        out[PRIMITIVES.index(name)] = w
    return out


def test_layouts():
    assert tables.intra_edge_count(8) == 36
    assert tables.intra_rows(3) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert [tables.intra_offset(i) for i in (1, 2, 3, 4)] == [0, 1, 3, 6]
    assert tables.inter_row_count(3, 3) == 24
    assert tables.inter_rows(2, 2) == [(0, "a", 0), (0, "a", 1), (0, "b", 0), (0, "b", 1),
                                       (1, "a", 0), (1, "a", 1), (1, "a", 2), (1, "b", 0), (1, "b", 1), (1, "b", 2)]
    assert [tables.inter_offset(2, k) for k in range(3)] == [0, 4, 10]


def test_bad_rows():
    with pytest.raises(ValueError, match="expected 5 op weights"):
        tables.as_rows([[0.1, 0.2]])
    with pytest.raises(ValueError, match="expected 3 rows"):
        tables.intra_table([row(tanh=1.0)] * 4, 2)


def arch_weights_dict():
    intra = tables.intra_table([row(tanh=1.0), row(none=1.0), row(relu=1.0)], 2)
    branches = [[[row(sigmoid=0.5), row(tanh=0.5)], [row(identity=1.0), row()]]]
    return {
        "format": tables.FORMAT, "mode": "joint", "columns": list(PRIMITIVES), "intra": intra,
        "history": tables.inter_table(branches, 2, "node", "search", True, [0.2, 0.8]),
        "input": tables.fixed_part(IDENTITY_INTER),
    }


def test_tables_round_trip_json_and_carry_the_candidate_ops():
    aw = json.loads(json.dumps(arch_weights_dict()))
    assert aw["intra"]["ops"] == list(PRIMITIVES) and aw["history"]["ops"] == list(PRIMITIVES)
    limited = tables.intra_table([row(tanh=1.0)] * 3, 2, ops=("none", "tanh"))
    assert tables.part_ops(limited) == ["none", "tanh"]
    assert tables.part_ops({"weights": []}) == list(PRIMITIVES)   # written before "ops" existed
    assert tables.intra_from_dict(tables.intra_to_dict(DARTS_V2.intra)) == DARTS_V2.intra


def test_entropies_are_relative_to_their_maximum():
    aw = arch_weights_dict()
    dists = tables.distributions(aw)
    assert len(dists["intra"]) == 3 and "input" not in dists
    assert len(dists["history"]) == 3  # two branches (node scope: one distribution each) + combination
    assert tables.entropy([0.5, 0.5]) == pytest.approx(math.log(2))
    # intra: three one-hot rows; history: branch a log 2 of log 10, branch b 0, combination (0.2, 0.8) of log 2
    comb = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    history = (math.log(2) / math.log(10) + 0 + comb / math.log(2)) / 3
    assert tables.relative_entropy(dists["history"]) == pytest.approx(history)
    assert tables.arch_entropy(aw) == pytest.approx((0.0 + history) / 2)   # each part counts once
    uniform = tables.intra_table([[0.2] * 5] * 3, 2)
    fixed = tables.fixed_part(IDENTITY_INTER)
    assert tables.arch_entropy({"intra": uniform, "history": fixed, "input": fixed}) == pytest.approx(1.0)


def test_distributions_leave_out_ops_that_are_not_candidates():
    # a part limited to 4 ops: its rows put weight 0 on identity; uniform over the 4 is entropy 1
    t = tables.intra_table([[0.25, 0.25, 0.25, 0.25, 0.0]] * 3, 2, ops=("none", "tanh", "relu", "sigmoid"))
    fixed = tables.fixed_part(IDENTITY_INTER)
    aw = {"intra": t, "history": fixed, "input": fixed}
    assert tables.distributions(aw)["intra"][0] == [0.25] * 4
    assert tables.arch_entropy(aw) == pytest.approx(1.0)
