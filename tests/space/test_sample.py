"""Random genotypes of the search space (ess.space.sample): valid, seeded, spread over the space."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ess.space.genotype import DARTS_V2, ESSGenotype
from ess.space.sample import random_genotype, random_genotypes


def test_draws_are_valid_seeded_and_distinct():
    a, b = random_genotypes(3, 5, steps=4, m=2, n_inter=2), random_genotypes(3, 5, steps=4, m=2, n_inter=2)
    assert a == b and len(set(a)) == 5 and all(isinstance(g, ESSGenotype) for g in a)   # constructors validate
    assert random_genotypes(4, 5, steps=4, m=2, n_inter=2) != a
    g = a[0]
    assert g.intra.steps == 4 and len(g.history.nodes) == 2 and g.history.m == 2 and g.input.m == 2


def test_ops_and_predecessors_are_uniform():
    rng = random.Random(0)
    ops, preds = Counter(), Counter()
    for _ in range(2000):
        g = random_genotype(rng, steps=3, m=2, n_inter=1, intra_ops=("none", "tanh", "relu"))
        ops.update(e.op for e in g.intra.recurrent)
        preds[g.intra.recurrent[2].pred] += 1
    assert set(ops) == {"tanh", "relu"} and abs(ops["tanh"] / sum(ops.values()) - 0.5) < 0.03
    assert all(abs(preds[j] / 2000 - 1 / 3) < 0.04 for j in range(3))


def test_parts_not_searched_are_fixed():
    g = random_genotype(random.Random(1), searched=("history", "input"), fixed_intra=DARTS_V2.intra)
    assert g.intra == DARTS_V2.intra and len(g.history.nodes) == 3
    assert random_genotype(random.Random(1), searched=("intra",)).history.is_identity
    with pytest.raises(ValueError, match="fixed_intra"):
        random_genotype(random.Random(1), searched=("history",))
