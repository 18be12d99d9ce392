"""The bilevel architecture step (ess.search.architect): exactness of the second-order gradient, invariants."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.func import functional_call

from ess import kernels
from ess.models.cells import build_ess_cell
from ess.models.lm import RNNModel, lm_loss, regularisation
from ess.search.architect import Architect, MaskReplay
from ess.space.genotype import DARTS_V2
from ess.supernet import MODES, build_search_model

DT = torch.float64
NTOKEN = 13


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(mode: str, dropout: bool = False, **kw):
    drops = {} if dropout else dict(dropout=0.0, dropouth=0.0, dropoutx=0.0, dropouti=0.0, dropoute=0.0)
    args = dict(mode=mode, emsize=5, nhid=5, steps=3, n_inter=2, m=2, inter_norm="none",
                combination="search" if mode != "intra" else "product")
    args.update(drops)
    args.update(kw)
    model = build_search_model(NTOKEN, **args).to(DT)
    with torch.no_grad():  # arch logits away from ~0 so the gradients are not tiny
        for p in model.arch_parameters():
            p.normal_()
    return model


def batches(T=4, B=3):
    def one():
        return torch.randint(0, NTOKEN, (T, B)), torch.randint(0, NTOKEN, (T, B))
    return one(), one()


def exact_unrolled_gradient(model, train, valid, lr, wd, alpha=0.0, beta=0.0):
    """dalpha L_val(w - lr (dw L_train + wd w), alpha) by double backward (create_graph=True).

    Through the cells' plain autograd code (kernel backend ``autograd``): the fused steps the architect
    runs are differentiable once only, so this also checks the fused path against the plain one.
    """
    with kernels.backend("autograd"):
        return _exact_unrolled_gradient(model, train, valid, lr, wd, alpha, beta)


def _exact_unrolled_gradient(model, train, valid, lr, wd, alpha, beta):
    named = model.named_weight_parameters()
    names, weights = [n for n, _ in named], [p for _, p in named]

    def loss(batch, params):
        out = functional_call(model, params, (batch[0], model.init_state(batch[0].size(1))))
        return lm_loss(out, batch[1]) + regularisation(out, alpha, beta)

    l_train = loss(train, dict(zip(names, weights)))
    g = torch.autograd.grad(l_train, weights, create_graph=True)
    w_virtual = {n: w - lr * (gi + wd * w) for n, w, gi in zip(names, weights, g)}
    return torch.autograd.grad(loss(valid, w_virtual), model.arch_parameters())


def rel_error(a, b):
    a = torch.cat([t.flatten() for t in a])
    b = torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", list(MODES))
def test_second_order_gradient_matches_double_backward(mode):
    """DARTS eq. 7-8 at the default R = 0.01 / ||v|| vs the exact unrolled gradient (dropout off).

    Batch norm is off here: with it, the tiny model at initialisation is so curved (and its relu kinks so
    close) that the fixed-R finite difference itself is off by 1-10%; the next test covers batch norm.
    """
    model = tiny(mode, batchnorm=False)
    train, valid = batches()
    lr, wd = 1.0, 1e-3
    exact = exact_unrolled_gradient(model, train, valid, lr, wd, alpha=0.5, beta=0.3)
    architect = Architect(model, unrolled=True, alpha=0.5, beta=0.3, second_order="exact")
    state = model.init_state(3)
    approx, _ = architect.arch_gradient(train, valid, state, state, lr, wd)
    assert rel_error(approx, exact) < 1e-2
    # the look-ahead matters: the first-order gradient is much further off
    first = Architect(model, unrolled=False, alpha=0.5, beta=0.3).arch_gradient(None, valid, None, state)[0]
    assert rel_error(first, exact) > 10 * rel_error(approx, exact)


@pytest.mark.parametrize("mode", list(MODES))
def test_second_order_gradient_converges_with_batch_norm(mode):
    """With batch norm on, the finite difference converges to the exact gradient as R shrinks."""
    model = tiny(mode)
    train, valid = batches(B=8)
    exact = exact_unrolled_gradient(model, train, valid, 1.0, 1e-3)
    state = model.init_state(8)
    approx, _ = Architect(model, unrolled=True, fd_epsilon=1e-5, second_order="exact").arch_gradient(
        train, valid, state, state, 1.0, 1e-3)
    assert rel_error(approx, exact) < 1e-5


def test_second_order_with_dropout_uses_the_same_masks(monkeypatch):
    """With dropout on, the w+ and w- passes replay the look-ahead pass's masks, so the finite difference
    estimates the exact gradient of the unrolled objective under those masks; with fresh masks per pass
    (the public code's defect) the estimate is dominated by mask noise."""
    model = tiny("joint", dropout=True, dropoute=0.1)
    train, valid = batches()
    lr, wd = 1.0, 1e-3
    torch.manual_seed(11)
    exact = exact_unrolled_gradient(model, train, valid, lr, wd)  # draws train masks, then valid masks
    state = model.init_state(3)
    architect = Architect(model, unrolled=True, fd_epsilon=1e-5, second_order="exact")
    torch.manual_seed(11)
    approx, _ = architect.arch_gradient(train, valid, state, state, lr, wd)
    assert rel_error(approx, exact) < 1e-5
    monkeypatch.setattr(MaskReplay, "replay", lambda self: contextlib.nullcontext())
    torch.manual_seed(11)
    noisy, _ = architect.arch_gradient(train, valid, state, state, lr, wd)
    assert rel_error(noisy, exact) > 0.1


def test_mask_replay_is_exact_and_leaves_global_rng():
    snap = MaskReplay(torch.device("cpu"))
    after = torch.get_rng_state()
    with snap.replay():
        a = torch.rand(5)
    with snap.replay():
        b = torch.rand(5)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), after)
    assert torch.equal(torch.rand(5), a)  # the replay drew what the global RNG draws next


def test_functional_virtual_step_keeps_the_tie():
    """The look-ahead weights include the tied embedding/decoder matrix (the public code loses it)."""
    model = tiny("joint")
    names = [n for n, _ in model.named_weight_parameters()]
    assert "encoder.weight" in names and "decoder.weight" not in names
    new_matrix = torch.randn_like(model.encoder.weight)
    tokens = torch.randint(0, NTOKEN, (4, 2))
    out = functional_call(model, {"encoder.weight": new_matrix}, (tokens, model.init_state(2)))
    copy = model.new(copy_weights=True)
    with torch.no_grad():
        copy.encoder.weight.copy_(new_matrix)  # decoder.weight is the same tensor
    assert copy.decoder.weight is copy.encoder.weight
    torch.testing.assert_close(out.logits, copy(tokens, copy.init_state(2)).logits, rtol=0, atol=1e-12)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("alphas.")}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("unrolled", [False, True])
def test_step_changes_only_the_searched_arch_weights(mode, unrolled):
    model = tiny(mode, dropout=True)
    model.train()
    before = _snapshot(model)  # weights and buffers (batch-norm statistics)
    arch_before = {n: p.detach().clone() for n, p in model.named_arch_parameters()}
    train, valid = batches()
    state = model.init_state(3)
    architect = Architect(model, unrolled=unrolled)
    new_state = architect.step(train, valid, state, state, network_lr=1.0, network_weight_decay=1e-3,
                               network_clip=0.25)
    after = _snapshot(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    for p in model.weight_parameters():
        assert p.grad is None and p.requires_grad
    for p in model.arch_parameters():
        assert p.grad is None
    changed = {n for n, p in model.named_arch_parameters() if not torch.equal(p, arch_before[n])}
    assert changed == set(arch_before)
    parts = {n.split(".")[1].split("_")[0] for n in changed}
    expected = {"intra": {"intra"}, "inter": {"history", "input"}, "joint": {"intra", "history", "input"}}[mode]
    assert parts == expected
    if mode == "intra":
        assert model.cell.history.is_identity and not list(model.cell.history.parameters())
    assert all(not s.requires_grad for s in new_state)
    assert new_state[0].shape == state[0].shape


def test_first_order_computes_no_weight_gradient():
    model = tiny("joint", dropout=True)
    _, valid = batches()
    architect = Architect(model)
    seen = []
    hooks = [p.register_hook(lambda g: seen.append(g)) for p in model.weight_parameters()]
    architect.step(None, valid, None, model.init_state(3))
    for h in hooks:
        h.remove()
    assert not seen
    assert all(p.grad is None for p in model.weight_parameters())


def test_arch_step_is_adam_over_arch_params():
    model = tiny("joint")
    architect = Architect(model, arch_lr=3e-3, arch_weight_decay=1e-3)
    opt = architect.optimizer
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["weight_decay"] == 1e-3
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in model.arch_parameters()]
    _, valid = batches()
    before = [p.detach().clone() for p in model.arch_parameters()]
    grads, _ = architect.arch_gradient(None, valid, None, model.init_state(3))
    architect.step(None, valid, None, model.init_state(3))
    for p, b, g in zip(model.arch_parameters(), before, grads):
        # first Adam step (bias-corrected moments): p - lr * g' / (|g'| + eps), g' = grad + wd * p
        g_wd = g + 1e-3 * b
        expected = b - 3e-3 * g_wd / (g_wd.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)


def test_optimizer_state_round_trip():
    model = tiny("joint")
    _, valid = batches()
    a = Architect(model)
    a.step(None, valid, None, model.init_state(3))
    b = Architect(model)
    b.load_state_dict(a.state_dict())
    assert b.optimizer.state_dict()["state"][0]["step"] == 1


def test_loss_includes_ar_tar():
    model = tiny("intra", dropout=True)
    architect = Architect(model, alpha=2.0, beta=1.0)
    tokens, targets = batches()[0]
    out = model(tokens, model.init_state(3))
    expected = lm_loss(out, targets) + regularisation(out, 2.0, 1.0)
    torch.testing.assert_close(architect.loss(out, targets), expected)


def test_model_without_arch_params_is_rejected():
    model = RNNModel(NTOKEN, 4, 4, build_ess_cell(4, 4, DARTS_V2))
    model.arch_parameters = lambda: []
    with pytest.raises(ValueError, match="no architecture parameters"):
        Architect(model)


def test_unrolled_needs_the_training_batch():
    model = tiny("intra")
    _, valid = batches()
    with pytest.raises(ValueError, match="training batch"):
        Architect(model, unrolled=True).step(None, valid, None, model.init_state(3), 1.0, 0.0)


def darts_second_order_restated(model, train, valid, lr, wd, clip, eps=1e-2):
    """The public DARTS code's ``_backward_step_unrolled`` (quark0/darts rnn/architect.py), restated plainly
    (no fused kernels, no replay), the look-ahead stepping every weight (the tied matrix too: ess's fix).

    ``_clip(grads, clip)`` scales ``grads`` by ``clip / (||grads|| + 1e-6)`` only when that is below 1, and
    returns it either way. So: ``c = clip / (||g|| + 1e-6)``, ``w' = w - lr (min(1, c) g + wd w)``;
    ``v = dw' L_val(w')`` times ``min(1, clip / (||v|| + 1e-6))``; ``R = eps / ||v||``;
    ``dalpha = dalpha L_val(w') - lr c (dalpha L_train(w + R v) - dalpha L_train(w - R v)) / 2R``
    with ``c`` unclamped. Returns the gradient, ``||g||`` and ``||v||`` before its clip.
    """
    with kernels.backend("autograd"):
        named = model.named_weight_parameters()
        names, weights = [n for n, _ in named], [p for _, p in named]
        arch = model.arch_parameters()

        def loss(batch, params):
            out = functional_call(model, params, (batch[0], model.init_state(batch[0].size(1))))
            return lm_loss(out, batch[1])

        def norm(ts):
            return float(torch.sqrt(sum((t ** 2).sum() for t in ts)))

        g = torch.autograd.grad(loss(train, dict(zip(names, weights))), weights)
        g_norm = norm(g)
        c = clip / (g_norm + 1e-6)
        g_step = [gi * c for gi in g] if c < 1 else g
        w1 = {n: (w - lr * (gi + wd * w)).detach().requires_grad_() for n, w, gi in zip(names, weights, g_step)}
        grads = torch.autograd.grad(loss(valid, w1), [*w1.values(), *arch])
        v, g_alpha = grads[: len(weights)], grads[len(weights):]
        v_norm = norm(v)
        if clip / (v_norm + 1e-6) < 1:
            v = [vi * clip / (v_norm + 1e-6) for vi in v]
        R = eps / norm(v)
        plus = torch.autograd.grad(loss(train, {n: w + R * vi for n, w, vi in zip(names, weights, v)}), arch)
        minus = torch.autograd.grad(loss(train, {n: w - R * vi for n, w, vi in zip(names, weights, v)}), arch)
        return [ga - lr * c * (gp - gm) / (2 * R) for ga, gp, gm in zip(g_alpha, plus, minus)], g_norm, v_norm


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("regime", ["both clipped", "v clipped", "neither clipped"])
def test_darts_second_order_is_the_public_codes(mode, regime):
    """The clip below ``||g||`` and ``||v||`` (both scaled down), between them (``g`` not scaled, the Hessian
    term scaled *up* by ``clip / ||g||``, ``v`` scaled down) and above both (``v`` not scaled up either)."""
    model = tiny(mode, batchnorm=False)
    train, valid = batches()
    lr, wd = 20.0, 5e-7
    _, g_norm, v_norm = darts_second_order_restated(model, train, valid, lr, wd, clip=1e9)
    assert g_norm < v_norm      # the middle regime exists
    clip = {"both clipped": 0.1, "v clipped": math.sqrt(g_norm * v_norm), "neither clipped": 2 * v_norm}[regime]
    expected, g_norm, v_norm = darts_second_order_restated(model, train, valid, lr, wd, clip)
    assert (g_norm > clip, v_norm > clip) == {"both clipped": (True, True), "v clipped": (False, True),
                                              "neither clipped": (False, False)}[regime]
    state = model.init_state(3)
    got, _ = Architect(model, unrolled=True, second_order="darts").arch_gradient(train, valid, state, state, lr, wd,
                                                                                 clip)
    assert rel_error(got, expected) < 1e-6
    if regime == "neither clipped":   # here the exact form is the clamped one (factor 1, v as it is): it must differ
        exact, _ = Architect(model, unrolled=True, second_order="exact").arch_gradient(train, valid, state, state,
                                                                                       lr, wd, clip)
        assert rel_error(exact, expected) > 1e-3


@pytest.mark.parametrize("clip", [0.25, 1e3])
def test_darts_form_scales_the_hessian_term_by_its_clip_factors(clip):
    model = tiny("joint", batchnorm=False)
    train, valid = batches()
    lr, wd = 20.0, 5e-7
    state = model.init_state(3)
    last = {}
    for form in ("darts", "exact"):
        architect = Architect(model, unrolled=True, second_order=form, fd_epsilon=1e-4)
        architect.arch_gradient(train, valid, state, state, lr, wd, clip)
        last[form] = architect.last
    g, v = last["exact"]["g_norm"], last["exact"]["v_norm"]
    assert last["darts"]["g_norm"] == pytest.approx(g) and last["darts"]["v_norm"] == pytest.approx(v)
    assert last["darts"]["v_norm_used"] == pytest.approx(min(v, clip), rel=1e-5)
    assert last["exact"]["v_norm_used"] == pytest.approx(v)
    assert last["darts"]["hessian_scale"] == pytest.approx(lr * clip / g, rel=1e-5)          # unclamped
    assert last["exact"]["hessian_scale"] == pytest.approx(lr * min(1.0, clip / g), rel=1e-5)


def test_bn_statistics_frozen_or_updated_by_the_architecture_step():
    train, valid = batches(B=6)
    for freeze, changes in ((True, False), (False, True)):
        model = tiny("intra")
        before = [b.clone() for b in model.buffers()]
        Architect(model, freeze_buffers=freeze).step(None, valid, None, model.init_state(6))
        after = list(model.buffers())
        assert any(not torch.equal(a, b) for a, b in zip(after, before)) == changes


def test_penalty_gradient_is_added_to_the_architecture_gradient():
    model = tiny("joint")
    _, valid = batches()
    state = model.init_state(3)
    plain = Architect(model).arch_gradient(None, valid, None, state)[0]
    with_penalty = Architect(model, penalty=lambda: 3.0 * model.log_partition()).arch_gradient(None, valid, None,
                                                                                              state)[0]
    extra = torch.autograd.grad(3.0 * model.log_partition(), model.arch_parameters())
    for a, b, e in zip(with_penalty, plain, extra):
        torch.testing.assert_close(a, b + e, atol=1e-12, rtol=0)


def test_unknown_second_order_form_is_refused():
    with pytest.raises(ValueError, match="second_order"):
        Architect(tiny("intra"), unrolled=True, second_order="taylor")
