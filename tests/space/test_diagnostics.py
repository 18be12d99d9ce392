"""Per-part collapse and decision diagnostics of an epoch (ess.space.diagnostics), on hand-built tables."""

from __future__ import annotations

import math

import pytest

from ess.space import derive, tables
from ess.space.diagnostics import epoch_metrics
from ess.space.genotype import DARTS_V2, IDENTITY_INTER
from ess.space.ops import PRIMITIVES


def row(**weights: float) -> list[float]:
    out = [0.0] * 5
    for name, w in weights.items():
        out[PRIMITIVES.index(name)] = w
    return out


def test_metrics_per_part_on_hand_tables():
    intra = tables.intra_table([row(identity=0.6, tanh=0.4), row(identity=0.5, none=0.5), row(relu=0.9, none=0.1)], 2)
    history = tables.inter_table([[[row(none=0.8), row(tanh=0.2)], [row(relu=0.5), row(identity=0.5)]]], 2, "node",
                                 "product", True)
    aw = {"intra": intra, "history": history, "input": tables.fixed_part(IDENTITY_INTER)}
    found = derive.derivation(aw)
    m = epoch_metrics(aw, found)
    assert "arch/input/entropy" not in m and "genotype/input/identity_share" not in m
    assert m["arch/intra/none_mass"] == pytest.approx((0 + 0.5 + 0.1) / 3)
    assert m["arch/intra/identity_mass"] == pytest.approx((0.6 + 0.5) / 3)
    ent = [(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4))) / math.log(5), math.log(2) / math.log(5),
           (-(0.9 * math.log(0.9) + 0.1 * math.log(0.1))) / math.log(5)]
    assert m["arch/intra/entropy"] == pytest.approx(sum(ent) / 3)
    # intra: s1 identity (0.6 vs 0.4: undecided), s2 relu from s1? 0.9 on s2 <- s1 -> relu(s1), decided
    assert found.genotype.intra.recurrent[0].op == "identity"
    assert m["genotype/intra/identity_share"] == pytest.approx(0.5)
    assert m["genotype/intra/decided_share"] == pytest.approx(0.5)
    assert m["genotype/intra/min_margin"] == pytest.approx(1.5)   # 0.6 / 0.4 sits on the rule
    # history: branch a says none (0.8 > 1.5 x 0.2), so the product node goes: the identity
    assert found.genotype.history == IDENTITY_INTER
    assert m["arch/history/none_mass"] == pytest.approx(0.4)      # (0.8 + 0) over the two branch tables
    assert m["genotype/history/none_share"] == pytest.approx(0.5)
    assert m["genotype/history/identity_share"] == 0.0
    assert m["genotype/identity_share"] == pytest.approx(0.5)     # 1 of 2 intra edges, no inter edges
    assert m["genotype/decided"] == 0.0
    assert 0 < m["arch/entropy"] < 1


def test_fixed_parts_give_no_part_metrics():
    fixed = {"intra": tables.fixed_part(DARTS_V2.intra), "history": tables.fixed_part(IDENTITY_INTER),
             "input": tables.fixed_part(IDENTITY_INTER)}
    m = epoch_metrics(fixed, derive.derivation(fixed))
    assert m == {"arch/entropy": 0.0, "genotype/identity_share": pytest.approx(1 / 8), "genotype/decided": 1.0,
                 "genotype/decided_share": 1.0}
