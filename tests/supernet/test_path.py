"""A genotype's path through the supernet: one-hot supernet, batched genotypes, discrete cells (float64)."""

from __future__ import annotations

import random

import pytest
import torch

from ess.errors import GenotypeError
from ess.models.cells import ESSCell
from ess.models.lm import RNNModel, lm_loss
from ess.space.genotype import IDENTITY_INTER, Edge, ESSGenotype, InterGenotype, InterNode
from ess.space.sample import random_genotype
from ess.supernet import MODES, build_search_model
from ess.supernet.path import PathPlan, one_hot_probs, path_forward

DT = torch.float64
NTOKEN = 19


def _model(mode="joint", **kw):
    args = dict(mode=mode, emsize=6, nhid=6, steps=3, n_inter=2, m=2, dropout=0.3, dropouth=0.2, dropoutx=0.25,
                dropouti=0.1)
    args.update(kw)
    torch.manual_seed(0)
    model = build_search_model(NTOKEN, **args).to(DT)
    with torch.no_grad():   # BN on and maps large enough that a wrong op or predecessor shows
        for p in model.weight_parameters():
            p.mul_(8.0)
    return model


def _genotypes(model, n, seed=0):
    rng, cfg = random.Random(seed), model.config
    searched = tuple(model.searched_parts())
    return [random_genotype(rng, steps=cfg.steps, m=cfg.m, n_inter=cfg.n_inter, searched=searched,
                            fixed_intra=cfg.intra_cell,
                            combination=rng.choice(("product", "sum")) if cfg.combination == "search" else
                            cfg.combination)
            for _ in range(n)]


def _run(fn, model, tokens, targets, seed=5):
    torch.manual_seed(seed)  # the same dropout masks on both sides
    out = fn(tokens, model.init_state(tokens.size(1)))
    loss = lm_loss(out, targets)
    return out.output, torch.autograd.grad(loss, model.weight_parameters(), allow_unused=True)


CASES = [dict(mode=m) for m in MODES] + [
    dict(mode="joint", inter_norm=n) for n in ("none", "centre", "layer")] + [
    dict(mode="joint", combination="sum"), dict(mode="joint", combination="search"),
    dict(mode="joint", batchnorm=False), dict(mode="joint", softmax_scope="edge"),
    dict(mode="inter", intra_genotype="DARTS_V1", n_inter=1, m=3)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_a_path_is_the_supernet_with_one_hot_weights(kw):
    """Training mode, dropout on: outputs and weight gradients equal the whole supernet's under one-hot weights."""
    model = _model(**kw).train()
    tokens, targets = torch.randint(0, NTOKEN, (5, 4)), torch.randint(0, NTOKEN, (5, 4))
    for genotype in _genotypes(model, 3):
        plan = PathPlan.of(model, [genotype])
        with model.overridden(one_hot_probs(model, genotype)):
            whole, whole_grads = _run(model, model, tokens, targets)
        path, path_grads = _run(lambda t, s, p=plan: path_forward(model, p, t, s), model, tokens, targets)
        torch.testing.assert_close(path, whole, rtol=0, atol=1e-10)
        for a, b in zip(path_grads, whole_grads):
            if b is None or not b.abs().max() > 0:   # a weight the path does not reach
                assert a is None or not a.abs().max() > 0
            else:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", list(MODES))
def test_genotypes_side_by_side_equal_each_alone(mode):
    """Evaluation: G genotypes stacked in the batch give each genotype's own outputs and state, state carried."""
    model = _model(mode=mode, combination="search" if MODES[mode].searches_inter else "product").eval()
    genotypes = _genotypes(model, 4, seed=1)
    if MODES[mode].searches_inter:   # derived cells too: fewer nodes than the supernet, the identity
        g = genotypes[0]
        one = InterGenotype(m=2, nodes=(InterNode(Edge("relu", 1), Edge("tanh", 0)),), combination="sum")
        genotypes += [ESSGenotype(g.intra, one, IDENTITY_INTER), ESSGenotype(g.intra, IDENTITY_INTER, one)]
    plan = PathPlan.of(model, genotypes)
    segments = [torch.randint(0, NTOKEN, (4, 3)) for _ in range(2)]
    together, state = [], model.init_state(3 * len(genotypes))
    with torch.no_grad():
        for tokens in segments:
            out = path_forward(model, plan, tokens.repeat(1, len(genotypes)), state)
            together.append(out.output.view(4, len(genotypes), 3, -1))
            state = out.state
        for g, genotype in enumerate(genotypes):
            alone, s = PathPlan.of(model, [genotype]), model.init_state(3)
            for t, tokens in enumerate(segments):
                out = path_forward(model, alone, tokens, s)
                torch.testing.assert_close(together[t][:, g], out.output, rtol=0, atol=1e-10)
                s = out.state


def test_a_path_without_normalisation_is_the_discrete_model_of_its_genotype():
    """Batch norm and inter norms off: the path is the discrete ESS model with the supernet's weights, also for
    derived cells with fewer nodes than the supernet (averaged over their own nodes) and identity cells."""
    model = _model(mode="joint", batchnorm=False, inter_norm="none", n_inter=3, m=3).eval()
    sampled = _genotypes(model, 1)[0]
    history = InterGenotype(m=3, nodes=(InterNode(Edge("relu", 2), Edge("sigmoid", 0)),), combination="product")
    inputs = InterGenotype(m=3, nodes=(InterNode(Edge("tanh", 1), Edge("identity", 0)),
                                       InterNode(Edge("sigmoid", 3), Edge("relu", 1))), combination="sum")
    for genotype in (ESSGenotype(sampled.intra, history, inputs), ESSGenotype(sampled.intra, IDENTITY_INTER, inputs)):
        cell = model.cell
        discrete = ESSCell(6, 6, cell.intra.to_discrete(genotype.intra),
                           cell.history.to_discrete(genotype.history) if genotype.history.nodes else
                           _identity(6), cell.inputs.to_discrete(genotype.input))
        lm = RNNModel(NTOKEN, 6, 6, discrete).to(DT).eval()
        lm.encoder.weight.data.copy_(model.encoder.weight.data)
        lm.decoder.bias.data.copy_(model.decoder.bias.data)
        tokens = torch.randint(0, NTOKEN, (6, 2))
        with torch.no_grad():
            # the discrete model's state holds only the windows its cells use: compare from a zero state
            path = path_forward(model, PathPlan.of(model, [genotype]), tokens, model.init_state(2)).output
            want = lm(tokens, lm.init_state(2)).output
        torch.testing.assert_close(path, want, rtol=0, atol=1e-10)


def _identity(dim):
    from ess.models.cells import InterCell

    return InterCell(dim, IDENTITY_INTER)


def test_a_genotype_outside_the_supernet_is_one_line():
    model = _model(mode="joint")
    g = _genotypes(model, 1)[0]
    wide = InterGenotype(m=3, nodes=(InterNode(Edge("relu", 2), Edge("relu", 0)),), combination="product")
    with pytest.raises(GenotypeError, match=r"^history\.m: the supernet's window is 2, the genotype's 3$"):
        PathPlan.of(model, [ESSGenotype(g.intra, wide, g.input)])
    deep = _model(mode="joint", steps=4)
    with pytest.raises(GenotypeError, match=r"^intra: the supernet has 4 nodes"):
        PathPlan.of(deep, [g])
