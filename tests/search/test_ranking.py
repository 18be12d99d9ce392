"""Shared-weight ranking: batched losses, the discrete model's loss, one-edit neighbours, the candidates."""

from __future__ import annotations

import math
import random

import pytest
import torch

from ess.data import batchify
from ess.evaluation import evaluate
from ess.models.cells import ESSCell
from ess.models.lm import RNNModel
from ess.search.ranking import neighbours, path_losses, rank, sample, samples, space_of
from ess.space.genotype import Edge, ESSGenotype, InterGenotype, InterNode
from ess.supernet import build_search_model

DT = torch.float64


def _model(**kw):
    torch.manual_seed(0)
    args = dict(mode="joint", emsize=6, nhid=6, steps=3, n_inter=2, m=2)
    args.update(kw)
    model = build_search_model(23, **args).to(DT)
    with torch.no_grad():
        for p in model.weight_parameters():
            p.mul_(6.0)
    return model


def _source(rows=30, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return batchify(torch.randint(0, 23, (rows * batch,), generator=g), batch)


def test_batched_losses_equal_one_genotype_at_a_time():
    model = _model()
    genotypes = samples(1, 7, space_of(model))
    source = _source()
    together = path_losses(model, genotypes, source, bptt=9, group=4)
    alone = [path_losses(model, [g], source, bptt=9)[0] for g in genotypes]
    assert together == pytest.approx(alone, abs=1e-10)
    assert len(set(round(v, 8) for v in together)) == len(genotypes)   # the genotypes are told apart


def test_a_path_loss_is_the_discrete_models_evaluation():
    """Without the search-only normalisations a genotype's score is its discrete model's loss (the oracle)."""
    model = _model(batchnorm=False, inter_norm="none", m=3)
    g = samples(2, 1, space_of(model))[0]
    derived = ESSGenotype(g.intra, InterGenotype(3, (InterNode(Edge("relu", 2), Edge("tanh", 0)),)), g.input)
    cell = model.cell
    lm = RNNModel(23, 6, 6, ESSCell(6, 6, cell.intra.to_discrete(derived.intra),
                                    cell.history.to_discrete(derived.history), cell.inputs.to_discrete(derived.input)))
    lm = lm.to(DT)
    lm.encoder.weight.data.copy_(model.encoder.weight.data)
    lm.decoder.bias.data.copy_(model.decoder.bias.data)
    source = _source(rows=25)
    assert path_losses(model, [derived], source, bptt=7)[0] == pytest.approx(evaluate(lm, source, 7), abs=1e-10)


@pytest.mark.parametrize("mode", ["intra", "inter", "joint"])
def test_one_edit_neighbours_are_every_single_change(mode):
    model = _model(mode=mode, combination="search" if mode != "intra" else "product", m=3, n_inter=2)
    space = space_of(model)
    g = sample(random.Random(4), space)
    found = neighbours(g, space)
    assert len(set(found)) == len(found) and g not in found
    # 4 ops: intra node i has 4 i - 1 alternatives; an inter branch of node k has 4 (m + k) - 1; +1 combination
    intra = sum(4 * i - 1 for i in range(1, 4)) if mode != "inter" else 0
    inter = 2 * sum(2 * (4 * (3 + k) - 1) for k in range(2)) + 2 if mode != "intra" else 0
    assert len(found) == intra + inter
    for n in found:
        diffs = sum(a != b for a, b in zip(g.intra.recurrent, n.intra.recurrent))
        for part in ("history", "input"):
            x, y = getattr(g, part), getattr(n, part)
            diffs += sum((p.a != q.a) + (p.b != q.b) for p, q in zip(x.nodes, y.nodes))
            diffs += x.combination != y.combination
        assert diffs == 1


def test_a_ranking_sorts_by_loss_keeps_the_first_origin_and_says_where_the_argmax_is():
    model = _model()
    space = space_of(model)
    pool = samples(3, 5, space)
    ranking = rank(model, [("argmax", pool[0])] + [("sample", g) for g in pool], _source(), bptt=9)
    losses = [e.loss for e in ranking.entries]
    assert losses == sorted(losses) and len(ranking.entries) == 5
    assert [e.origin for e in ranking.entries].count("argmax") == 1
    assert ranking.rank_of("argmax") == 1 + [e.genotype for e in ranking.entries].index(pool[0])
    data = ranking.to_dict()
    assert data["candidates"] == 5 and data["origins"] == {"argmax": 1, "sample": 4}
    assert data["entries"][0]["ppl"] == pytest.approx(math.exp(losses[0]))


def test_successive_halving_scores_the_screens_best_on_all_tokens_and_the_rest_on_the_screen():
    model, source = _model(), _source(rows=40)
    genotypes = samples(3, 9, space_of(model))
    ranking = rank(model, [("sample", g) for g in genotypes], source, bptt=5, screen=0.25, keep=3)
    rows = int(round(39 * 0.25)) + 1
    screened = path_losses(model, genotypes, source[:rows], bptt=5)
    full = path_losses(model, genotypes, source, bptt=5)
    best_on_screen = sorted(range(9), key=lambda i: (screened[i], i))[:3]
    kept = sorted(best_on_screen, key=lambda i: (full[i], i))
    rest = sorted(range(9), key=lambda i: (screened[i], i))[3:]
    assert [e.genotype for e in ranking.entries] == [genotypes[i] for i in kept + rest]
    assert [e.loss for e in ranking.entries] == pytest.approx([full[i] for i in kept] + [screened[i] for i in rest])
    assert [e.tokens for e in ranking.entries] == [39 * 4] * 3 + [(rows - 1) * 4] * 6
    assert ranking.extra == {"screen_tokens": (rows - 1) * 4, "kept": 3}
    # no screen when it would keep every candidate, or screen is 1
    for kw in (dict(screen=0.25, keep=9), dict(screen=1.0, keep=3)):
        plain = rank(model, [("sample", g) for g in genotypes], source, bptt=5, **kw)
        assert [e.loss for e in plain.entries] == pytest.approx(sorted(full))
        assert "screen_tokens" not in plain.extra
