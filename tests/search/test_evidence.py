"""Evidence that a search found something (ess.search.evidence): seed agreement, stability, Kendall tau-b."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter

import numpy as np
import pytest

from ess.search.evidence import (
    genotype_choices,
    kendall_tau_b,
    random_agreement,
    rank_agreement,
    seed_agreement,
    stability,
)
from ess.space.genotype import IDENTITY_INTER, ESSGenotype, InterGenotype, InterNode, IntraGenotype
from ess.space.sample import random_genotype

ALL = ("intra", "history", "input")


def intra(*edges):
    return IntraGenotype(tuple(edges), tuple(range(1, len(edges) + 1)))


def inter(*nodes, m=2):
    return InterGenotype(m=m, nodes=tuple(InterNode(a, b) for a, b in nodes)) if nodes else IDENTITY_INTER


def ess(intra_edges, history=(), input_=(), m=2):
    return ESSGenotype(intra(*intra_edges), inter(*history, m=m), inter(*input_, m=m))


BASE = [("tanh", 0), ("relu", 1), ("sigmoid", 0), ("identity", 2)]


# ---- choices

def test_choices_of_the_intra_cell_are_its_edges():
    g = ess(BASE)
    assert genotype_choices(g, "intra") == (("tanh", 0), ("relu", 1), ("sigmoid", 0), ("identity", 2))
    assert genotype_choices(g, "intra", aspect="op") == ("tanh", "relu", "sigmoid", "identity")
    assert genotype_choices(g, "intra", aspect="pred") == (0, 1, 0, 2)


def test_inter_choices_are_unordered_pairs_with_missing_nodes_none():
    ab = ess(BASE, history=[(("tanh", 0), ("relu", 1))])
    ba = ess(BASE, history=[(("relu", 1), ("tanh", 0))])
    assert genotype_choices(ab, "history", 2) == genotype_choices(ba, "history", 2) == (
        (("relu", 1), ("tanh", 0)), None)
    assert genotype_choices(ab, "history", 2, "op") == (("relu", "tanh"), None)
    assert genotype_choices(ab, "history", 2, "pred") == ((0, 1), None)
    assert genotype_choices(ab, "input", 3) == (None, None, None)         # the identity: every slot missing
    with pytest.raises(ValueError, match="more than the 0 node slots"):
        genotype_choices(ab, "history", 0)
    with pytest.raises(ValueError, match="unknown genotype part"):
        genotype_choices(ab, "decoder")


# ---- seed agreement

def test_agreement_is_counted_over_pairs_and_choices_by_hand():
    g1 = ess(BASE)
    g3 = ess([("tanh", 0), ("tanh", 1), ("sigmoid", 1), ("identity", 2)])   # differs from g1 on nodes 2 and 3
    r = seed_agreement([g1, g1, g3], ["intra"], steps=4, draws=2000)
    # pairs (1,2): 4 of 4, (1,3): 2, (2,3): 2 -> 8 of 12
    assert r.k == 3 and r.pairs == 3 and [p.part for p in r.parts] == ["intra"]
    assert r.overall.observed == pytest.approx(8 / 12) and r.parts[0].observed == pytest.approx(8 / 12)
    assert r.overall.op == pytest.approx((4 + 3 + 3) / 12)       # node 3's op agrees across g1, g3
    assert r.overall.pred == pytest.approx((4 + 3 + 3) / 12)     # node 2's predecessor agrees


def test_pred_and_op_diagnostics_split_a_disagreement():
    g1 = ess([("tanh", 0), ("relu", 1)])
    g2 = ess([("tanh", 0), ("relu", 0)])
    r = seed_agreement([g1, g2], ["intra"], steps=2, draws=100).overall
    assert (r.observed, r.op, r.pred) == (0.5, 1.0, 0.5)


def test_random_agreement_is_the_sum_of_squared_probabilities():
    # intra node i: one of n_ops * i equally likely edges
    assert random_agreement("intra", 3) == pytest.approx(1 / 12)
    assert random_agreement("intra", 3, "op") == 0.25 and random_agreement("intra", 3, "pred") == pytest.approx(1 / 3)
    assert random_agreement("intra", 2, intra_ops=("none", "tanh", "relu")) == 0.25
    # inter slot: an unordered pair of two uniform branches, against enumeration of all (a, b) outcomes
    for m, slot, aspect in [(2, 0, "edge"), (3, 1, "edge"), (2, 1, "op"), (3, 2, "pred")]:
        branch = {"edge": [(op, j) for op in "ABCD" for j in range(m + slot)], "op": list("ABCD"),
                  "pred": list(range(m + slot))}[aspect]
        pairs = Counter(tuple(sorted(ab)) for ab in itertools.product(branch, repeat=2))
        total = len(branch) ** 2
        assert random_agreement("history", slot, aspect, m=m) == pytest.approx(
            sum((c / total) ** 2 for c in pairs.values()))


def test_null_is_random_genotypes_agreement():
    """The simulated null against the plain one: sets of random_genotype draws compared choice by choice."""
    space = dict(steps=3, m=2, n_inter=2, intra_ops=("none", "tanh", "relu"))
    r = seed_agreement([random_genotype(random.Random(s), **space) for s in (1, 2, 3)], ALL, draws=20_000, **space)
    rng = random.Random(7)
    plain = []
    for _ in range(3000):
        gs = [random_genotype(rng, **space) for _ in range(3)]
        hits = sum(a == b for part in ALL for x, y in itertools.combinations(gs, 2)
                   for a, b in zip(genotype_choices(x, part, 2), genotype_choices(y, part, 2)))
        plain.append(hits / (3 * 7))
    analytic = (sum(random_agreement("intra", i, intra_ops=space["intra_ops"]) for i in (1, 2, 3))
                + 2 * sum(random_agreement("history", k, m=2) for k in (0, 1))) / 7
    se = np.std(plain) / math.sqrt(len(plain))
    assert r.overall.expected == pytest.approx(analytic)
    assert abs(np.mean(plain) - analytic) < 4 * se
    assert abs(r.overall.null_mean - analytic) < 4 * np.std(plain) / math.sqrt(20_000)
    assert r.overall.null_q95 == pytest.approx(np.quantile(plain, 0.95, method="higher"), abs=1.5 / 21)
    for part in r.parts:
        assert part.expected == pytest.approx(np.mean([random_agreement(
            part.part, s, m=2, intra_ops=space["intra_ops"]) for s in ((1, 2, 3) if part.part == "intra" else (0, 1))]))


def test_identical_seeds_get_the_smallest_p_and_random_seeds_a_calibrated_one():
    g = random_genotype(random.Random(0))
    r = seed_agreement([g] * 4, ALL, draws=999, seed=3)
    assert r.overall.observed == 1.0 and r.overall.p == pytest.approx(1 / 1000)
    assert all(p.p == pytest.approx(1 / 1000) for p in r.parts)
    assert r.overall.null_range[0] <= r.overall.null_mean <= r.overall.null_range[1] < 1
    rng = random.Random(11)
    ps = [seed_agreement([random_genotype(rng) for _ in range(3)], ALL, draws=400, seed=s).overall.p
          for s in range(150)]
    assert np.mean(np.array(ps) <= 0.1) <= 0.1 + 3 * math.sqrt(0.09 / 150)    # valid: not anticonservative
    assert np.mean(np.array(ps) <= 0.5) > 0.25                                  # and not degenerate


def test_p_counts_null_draws_equal_to_the_observed():
    """One intra node of four ops, two seeds that agree: random pairs agree (tie the observed) w.p. 1/4."""
    g = ess([("relu", 0)])
    r = seed_agreement([g, g], ["intra"], steps=1, draws=20_000, seed=1).overall
    assert r.expected == 0.25 and r.null_mean == pytest.approx(0.25, abs=0.015)
    assert r.p == pytest.approx(0.25, abs=0.015) and r.null_q95 == 1.0 and r.null_range == (0.0, 1.0)


def test_seeded_and_parts_not_searched_are_left_out():
    a = ess(BASE, history=[(("tanh", 0), ("relu", 1))])
    b = ess([("relu", 0), ("relu", 1), ("relu", 0), ("relu", 2)], history=[(("tanh", 0), ("relu", 1))])
    hist = seed_agreement([a, b], ["history"], m=2, n_inter=1, draws=500, seed=5)
    assert [p.part for p in hist.parts] == ["history"] and hist.overall.observed == 1.0
    assert hist == seed_agreement([a, b], ["history"], m=2, n_inter=1, draws=500, seed=5)
    intra_only = seed_agreement([a, b], ["intra"], steps=4, draws=500)
    assert intra_only.overall.choices == 4 and intra_only.overall.observed == pytest.approx(1 / 4)   # node 2


def test_a_dropped_inter_node_is_the_choice_none():
    n0, n1 = (("tanh", 0), ("relu", 1)), (("sigmoid", 2), ("identity", 0))
    full, short, short2 = (ess(BASE, history=h) for h in ([n0, n1], [n0], [n0]))
    r = seed_agreement([full, short], ["history"], m=2, n_inter=2, draws=100)
    assert r.overall.observed == 0.5                     # slot 0 agrees, slot 1: a node against none
    assert seed_agreement([short, short2], ["history"], m=2, n_inter=2, draws=100).overall.observed == 1.0


def test_statement_and_json():
    g1, g2 = ess(BASE), ess([("tanh", 0), ("relu", 0), ("sigmoid", 0), ("identity", 2)])
    r = seed_agreement([g1, g2, g1, g1], ["intra"], steps=4, draws=999)
    text = r.statement()
    assert text.startswith(f"seeds agree on {r.overall.observed:.0%} of choices, random genotypes on")
    assert f"p = {r.overall.p:.2g}" in text and text.endswith("k = 4 searches")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["parts"]["intra"]["observed"] == r.parts[0].observed and d["statement"] == text


@pytest.mark.parametrize("args, match", [
    (dict(genotypes=1, searched=ALL), "at least 2 searches"),
    (dict(genotypes=2, searched=("intra", "decoder")), "searched"),
    (dict(genotypes=2, searched=()), "searched"),
    (dict(genotypes=2, searched=ALL, steps=4), "steps = 4"),
    (dict(genotypes=2, searched=ALL, m=2), "m = 2"),
    (dict(genotypes=2, searched=ALL, intra_ops=("none", "tanh")), "intra ops"),
])
def test_bad_arguments_are_one_line_errors(args, match):
    gs = [random_genotype(random.Random(s)) for s in range(args.pop("genotypes"))]
    with pytest.raises(ValueError, match=match):
        seed_agreement(gs, draws=10, **args)


# ---- stability

def _seq(*intra_edges_per_epoch):
    return [ess(e) for e in intra_edges_per_epoch]


def test_stability_by_hand_odd_epochs():
    a = BASE
    b = [("tanh", 0), ("relu", 0), ("sigmoid", 0), ("identity", 2)]      # a with node 2 changed
    c = [("tanh", 0), ("relu", 0), ("tanh", 1), ("relu", 1)]             # b with nodes 3, 4 changed
    s = stability(_seq(a, c, a, b, c), ["intra"])                         # E = 5, middle = 3
    assert (s.epochs, s.middle, s.transitions, s.choices) == (5, 3, 2, 4)
    assert s.changed_choices == 1 + 2 and s.changed_epochs == 2 and s.changed_epoch_share == 1.0
    assert s.kept_from_middle == pytest.approx(1 / 4)                      # c against a: node 1 only
    assert s.last_change == 5 and s.parts == {"intra": 3}


def test_stability_by_hand_even_epochs_and_settled():
    a, b = BASE, [("relu", 0), ("relu", 1), ("sigmoid", 0), ("identity", 2)]
    s = stability(_seq(a, b, b, a, a, a), ["intra"])                      # E = 6, middle = 3: epochs 4..6
    assert (s.middle, s.transitions, s.changed_choices, s.changed_epochs) == (3, 3, 1, 1)
    assert s.kept_from_middle == pytest.approx(3 / 4) and s.last_change == 4
    still = stability(_seq(b, a, a, a), ["intra"])
    assert (still.changed_choices, still.changed_epochs, still.kept_from_middle, still.last_change) == (0, 0, 1.0, 2)
    assert stability(_seq(a, a), ["intra"]).last_change is None
    assert "never changed" in stability(_seq(a, a), ["intra"]).statement()


def test_stability_counts_inter_slots_and_dropped_nodes():
    n0, n1, n2 = (("tanh", 0), ("relu", 1)), (("sigmoid", 2), ("identity", 0)), (("tanh", 2), ("tanh", 2))
    seq = [ess(BASE, history=h) for h in ([n0, n1], [n0, n1], [n0], [n0[::-1], n2])]
    s = stability(seq, ["intra", "history"])            # slots: 2 (the most nodes); E = 4, middle = 2
    # epoch 3: slot 1 n1 -> none; epoch 4: slot 0 the same node with its branches swapped, slot 1 none -> n2
    assert s.choices == 6 and s.parts == {"intra": 0, "history": 2} and s.changed_epochs == 2
    assert s.kept_from_middle == pytest.approx(5 / 6)   # epoch 4 against epoch 2: only slot 1 differs
    s3 = stability(seq, ["history"], n_inter=3)
    assert s3.choices == 3 and s3.parts == {"history": 2} and s3.kept_from_middle == pytest.approx(2 / 3)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["changed_epoch_share"] == 1.0 and d["statement"].startswith("over epochs 3-4 the derived genotype")
    with pytest.raises(ValueError, match="at least 2 epochs"):
        stability(seq[:1], ["intra"])


# ---- ranking quality

def brute_tau_b(x, y):
    c = d = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            c += sx * sy > 0
            d += sx * sy < 0
            tx += sx == 0
            ty += sy == 0
    n0 = len(x) * (len(x) - 1) / 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def test_tau_by_hand():
    r = rank_agreement([1, 2, 3, 4, 5], [1, 2, 3, 5, 4])               # one discordant pair of 10
    assert (r.tau, r.concordant, r.discordant) == (pytest.approx(0.8), 9, 1)
    assert kendall_tau_b([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == -1.0
    assert kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))   # one tie in x
    t = rank_agreement([1, 1, 2, 2], [1, 2, 1, 2])
    # pairs (0,1), (2,3) tied in x; (0,2), (1,3) tied in y; (0,3) concordant, (1,2) discordant: tau 0
    assert (t.tau, t.concordant, t.discordant, t.ties_x, t.ties_y) == (0.0, 1, 1, 2, 2)


def test_tau_matches_the_brute_force_count():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 12, 30):
        for _ in range(5):
            x, y = rng.integers(0, 4, n).astype(float), rng.normal(size=n).round(1)
            if len(set(x)) == 1:
                continue
            assert kendall_tau_b(x, y) == pytest.approx(brute_tau_b(x, y))


def mahonian(n):
    """Number of permutations of n with k inversions (k = 0 .. n(n-1)/2)."""
    counts = [1]
    for size in range(2, n + 1):
        new = [0] * (len(counts) + size - 1)
        for k, c in enumerate(counts):
            for extra in range(size):
                new[k + extra] += c
        counts = new
    return counts


def test_exact_p_without_ties_is_the_inversion_distribution():
    n = 7
    counts, n0 = mahonian(n), n * (n - 1) // 2
    x = list(range(n))
    for y in ([0, 1, 2, 3, 4, 6, 5], [1, 0, 3, 2, 5, 4, 6], [6, 0, 5, 1, 4, 2, 3], [6, 5, 4, 3, 2, 1, 0]):
        r = rank_agreement(x, y)
        s = r.concordant - r.discordant                                  # S = n0 - 2 inversions
        p = sum(c for k, c in enumerate(counts) if abs(n0 - 2 * k) >= abs(s)) / math.factorial(n)
        p_greater = sum(c for k, c in enumerate(counts) if n0 - 2 * k >= s) / math.factorial(n)
        assert r.p_method == "exact permutation"
        assert r.p == pytest.approx(p) and r.p_greater == pytest.approx(p_greater)


def test_exact_p_with_ties_enumerates_the_orders():
    x, y = [1, 2, 2, 3, 4, 4], [0.1, 0.3, 0.2, 0.2, 0.9, 0.5]
    s_obs = round(brute_tau_b(x, y) * 1e9)
    taus = [round(brute_tau_b(x, [y[i] for i in perm]) * 1e9) for perm in itertools.permutations(range(6))]
    r = rank_agreement(x, y)
    assert r.p == pytest.approx(np.mean(np.abs(taus) >= abs(s_obs)))
    assert r.p_greater == pytest.approx(np.mean(np.array(taus) >= s_obs))
    assert rank_agreement([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]).p == pytest.approx(2 / math.factorial(8))


def test_normal_p_beyond_ten_against_permutations():
    """The variance of S is the permutation variance exactly; the p (no continuity correction, as scipy's) is
    close at n = 30 (at n = 16 it was 0.372 against 0.395: S moves in steps of 2)."""
    rng = np.random.default_rng(4)
    n = 30
    x = rng.integers(0, 8, n).astype(float)
    y = (x + rng.normal(0, 6, n)).round(0)
    r = rank_agreement(x, y)
    assert r.p_method.startswith("normal approximation") and r.ties_x > 0 and r.ties_y > 0
    s = r.concordant - r.discordant
    sx = np.sign(x[:, None] - x[None, :])
    perms = [rng.permutation(n) for _ in range(10_000)]
    null = np.array([np.triu(sx * np.sign(y[p][:, None] - y[p][None, :]), 1).sum() for p in perms])
    assert abs(r.p - np.mean(np.abs(null) >= abs(s))) < 0.02
    assert np.var(null) == pytest.approx(_tie_variance(x, y), rel=0.05)


def _tie_variance(x, y):
    """Kendall's variance of S with ties (Kendall 1970), written out term by term."""
    n = len(x)
    t = np.unique(x, return_counts=True)[1]
    u = np.unique(y, return_counts=True)[1]
    v0 = n * (n - 1) * (2 * n + 5)
    vt, vu = (t * (t - 1) * (2 * t + 5)).sum(), (u * (u - 1) * (2 * u + 5)).sum()
    v1 = (t * (t - 1)).sum() * (u * (u - 1)).sum() / (2 * n * (n - 1))
    v2 = (t * (t - 1) * (t - 2)).sum() * (u * (u - 1) * (u - 2)).sum() / (9 * n * (n - 1) * (n - 2))
    return (v0 - vt - vu) / 18 + v1 + v2


def test_against_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=8), rng.normal(size=8)
    ours = rank_agreement(x, y)
    theirs = stats.kendalltau(x, y, method="exact")
    assert ours.tau == pytest.approx(theirs.statistic) and ours.p == pytest.approx(theirs.pvalue)
    x, y = rng.integers(0, 5, 25).astype(float), rng.integers(0, 7, 25).astype(float)
    ours, theirs = rank_agreement(x, y), stats.kendalltau(x, y, method="asymptotic")
    assert ours.tau == pytest.approx(theirs.statistic) and ours.p == pytest.approx(theirs.pvalue)


def test_fieller_interval_by_hand():
    r = rank_agreement([1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 4, 3, 6, 5, 8, 7])   # 4 discordant pairs of 28
    assert r.tau == pytest.approx(20 / 28)
    half = 1.959963984540054 * math.sqrt(0.437 / 4)
    assert r.interval == pytest.approx((math.tanh(math.atanh(20 / 28) - half), math.tanh(math.atanh(20 / 28) + half)))
    # tau = 0.5 at n = 8: atanh 0.5493, half-width 0.6478 -> (-0.098, 0.833)
    from ess.search.evidence import fieller_interval
    assert fieller_interval(0.5, 8) == pytest.approx((-0.0982, 0.8328), abs=1e-4)
    perfect = rank_agreement(range(8), range(8))
    assert perfect.interval[1] == 1.0 and perfect.interval[0] == pytest.approx(fieller_interval(26 / 28, 8)[0])
    assert rank_agreement(range(8), range(8)[::-1]).interval == (-1.0, pytest.approx(-perfect.interval[0]))
    assert rank_agreement([1, 2, 3, 4], [1, 3, 2, 4]).interval is None
    assert "no interval" in rank_agreement([1, 2, 3, 4], [1, 3, 2, 4]).statement()


def test_rank_statement_and_json():
    r = rank_agreement([5.1, 5.3, 5.0, 5.9, 6.2, 5.5, 5.8, 6.0], [80, 85, 79, 90, 99, 84, 95, 93])
    text = r.statement()
    assert text.startswith(f"Kendall tau-b = {r.tau:.2f} over n = 8 genotypes (95% interval")
    assert text.endswith("(two-sided, exact permutation)")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["tau"] == r.tau and d["interval_method"] == "Fieller-Hartley-Pearson 1957"


@pytest.mark.parametrize("x, y, match", [
    ([1, 2, 3], [1, 2], "3 and 2 scores"),
    ([1, 2, float("nan")], [1, 2, 3], "finite"),
    ([1, 1, 1], [1, 2, 3], "x: every score is tied"),
    ([1, 2, 3], [4, 4, 4], "y: every score is tied"),
    ([1], [1], "at least 2"),
])
def test_bad_scores_are_one_line_errors(x, y, match):
    with pytest.raises(ValueError, match=match):
        rank_agreement(x, y)


def test_an_arms_evidence_in_plain_words():
    import random as _random

    from ess.search.evidence import arm_evidence
    from ess.space.sample import random_genotype

    rng = _random.Random(0)
    space = dict(steps=8, m=3, n_inter=3)
    genotypes = [random_genotype(rng, **space, searched=("intra",)) for _ in range(3)]
    s1 = stability([genotypes[0], genotypes[0], genotypes[1], genotypes[1]], ["intra"])   # changed at epoch 3
    s2 = stability([genotypes[2], genotypes[2], genotypes[2], genotypes[2]], ["intra"])   # never
    assert (s1.changed_epoch_share, s2.changed_epoch_share, s2.kept_from_middle) == (0.5, 0.0, 1.0)
    ev = arm_evidence(genotypes, [s1, s2.to_dict(), None], ["intra"], **space, draws=200)
    assert ev.searches == 3 and ev.agreement.k == 3
    assert ev.changed_epoch_share == pytest.approx(0.25)
    assert ev.kept_from_middle == pytest.approx((s1.kept_from_middle + 1.0) / 2)
    assert ev.statement().startswith("seeds agree on ") and "over the last half of each search" in ev.statement()
    one = arm_evidence(genotypes[:1], [None], ["intra"], **space)
    assert one.agreement is None and one.statement() == ("1 search: seed agreement needs at least two; no search "
                                                         "ran two epochs: no stability")
    assert one.to_dict()["agreement"] is None
