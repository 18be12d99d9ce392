"""Parameter counts and parameter-matched hidden sizes (ess.models.sizing)."""

from __future__ import annotations

import pytest

from ess.errors import ConfigError
from ess.models import sizing
from ess.models.cells import build_cell
from ess.models.lm import RNNModel
from ess.space.genotype import DARTS_V2, Edge, ESSGenotype, InterGenotype, InterNode

PTB_VOCAB = 10_000
BIG = ESSGenotype(DARTS_V2.intra,
                  InterGenotype(m=3, nodes=(InterNode(Edge("tanh", 0), Edge("relu", 1)),
                                            InterNode(Edge("sigmoid", 2), Edge("identity", 3)),
                                            InterNode(Edge("tanh", 4), Edge("relu", 0)))),
                  InterGenotype(m=3, nodes=(InterNode(Edge("tanh", 1), Edge("relu", 2)),)))


@pytest.mark.parametrize("kind, genotype, nhid", [("ess", DARTS_V2, 24), ("ess", BIG, 16), ("lstm", None, 20)])
def test_counts_are_the_built_models(kind, genotype, nhid):
    model = RNNModel(50, nhid, nhid, build_cell(kind, nhid, nhid, genotype))
    assert sizing.count_params(kind, genotype, 50, nhid) == sum(p.numel() for p in model.parameters())


def test_darts_v2_at_850_is_the_published_23m():
    assert sizing.count_params("ess", DARTS_V2, PTB_VOCAB, 850) == 22_960_000


def test_a_larger_cell_gets_a_smaller_width_with_the_same_count():
    nhid, count, target = sizing.match("DARTS_V2@850", "ess", BIG, PTB_VOCAB)
    assert target == 22_960_000 and abs(count - target) / target < 0.01
    assert nhid < 850 and sizing.count_params("ess", BIG, PTB_VOCAB, 850) > 1.2 * target
    # the nearest width: one unit more or less is further from the target
    for other in (nhid - 1, nhid + 1):
        assert abs(sizing.count_params("ess", BIG, PTB_VOCAB, other) - target) >= abs(count - target)
    assert sizing.match("DARTS_V2@850", "ess", DARTS_V2, PTB_VOCAB)[0] == 850
    assert sizing.match("lstm@300", "ess", DARTS_V2, PTB_VOCAB)[1] == pytest.approx(
        sizing.count_params("lstm", None, PTB_VOCAB, 300), rel=0.01)


@pytest.mark.parametrize("ref", ["DARTS_V2", "DARTS_V2@", "@850", "DARTS_V2@x", "DARTS_V2@0"])
def test_bad_baselines_are_one_line_errors(ref):
    with pytest.raises(ConfigError, match="match_params"):
        sizing.parse_baseline(ref)


def test_unreachable_counts_are_refused():
    with pytest.raises(ConfigError, match="within 1%"):
        sizing.matched_size("ess", DARTS_V2, 10, 7)
