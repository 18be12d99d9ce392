"""The search cell's fused step (:class:`ess.kernels.IntraSearchStep`) on every backend against autograd."""

from __future__ import annotations

import pytest
import torch

from ess import kernels
from ess.space.ops import PRIMITIVES
from ess.supernet import MixedIntraCell

from kernel_checks import PASSES, TOL, backend_cases, close, grads, impl_of, max_diff, require_cpp, tolerance


def _intra_results(cell, backends, logits, x_proj, h_prev, mask, need_w, need_theta):
    """``{backend: (out, gradients, buffers, impl)}`` of one step from the same start."""
    start = {k: v.clone() for k, v in cell.state_dict().items()}
    results = {}
    for backend in backends:
        cell.load_state_dict(start)
        lg = logits.clone().requires_grad_(need_theta)
        xp, hp = x_proj.clone().requires_grad_(), h_prev.clone().requires_grad_()
        weights = [cell.W0, *cell.Ws]
        for w in weights:
            w.requires_grad_(need_w)
        with kernels.backend(backend), cell.bound({"ops": lg}):
            out = cell.step(xp, hp, mask)
        wrt = [xp, hp] + ([lg] if need_theta else []) + (weights if need_w else [])
        impl = impl_of(out) if backend != "autograd" else "autograd"
        results[backend] = (out, grads(out, wrt), [b.clone() for b in cell.buffers()], impl)
    for w in [cell.W0, *cell.Ws]:
        w.requires_grad_(True)
    return results


@pytest.mark.parametrize("backend,dtype,grads_asked", backend_cases())
def test_intra_step_on_every_backend_equals_autograd(backend, dtype, grads_asked):
    """Output, every gradient asked and the batch-norm statistics; masked, in training (batch statistics)."""
    if backend == "cpp":
        require_cpp()
    torch.manual_seed(21)
    need_w, need_theta = PASSES[grads_asked]
    B, nhid, steps = 4, 6, 3
    cell = MixedIntraCell(5, nhid, steps=steps).to(dtype).train()
    logits = torch.randn(steps * (steps + 1) // 2, len(PRIMITIVES), dtype=dtype)
    x_proj, h_prev = torch.randn(B, 2 * nhid, dtype=dtype), torch.randn(B, nhid, dtype=dtype)
    mask = torch.bernoulli(torch.full((B, nhid), 0.7, dtype=dtype)) / 0.7
    results = _intra_results(cell, (backend, "autograd"), logits, x_proj, h_prev, mask, need_w, need_theta)
    (out_f, g_f, b_f, impl), (out_a, g_a, b_a, _) = results[backend], results["autograd"]
    assert impl == backend
    tol = tolerance(dtype)
    assert max_diff(out_f, out_a) <= tol
    for a, b in zip(g_f, g_a):
        assert max_diff(a, b) <= tol
    for a, b in zip(b_f, b_a):
        assert max_diff(a, b) <= tol
    assert not kernels._state["compile_broken"]


# Moved from tests/test_cpu_kernels.py


@pytest.mark.parametrize("batchnorm,masked,training", [(True, True, True), (True, False, True), (True, True, False),
                                                       (False, True, True)])
@pytest.mark.parametrize("grads_asked", list(PASSES))
def test_cpp_intra_step_equals_autograd(batchnorm, masked, training, grads_asked):
    require_cpp()
    torch.manual_seed(11)
    need_w, need_theta = PASSES[grads_asked]
    B, ninp, nhid, steps = 8, 12, 16, 4
    cell = MixedIntraCell(ninp, nhid, steps=steps, batchnorm=batchnorm).train(training)
    if batchnorm:
        with torch.no_grad():
            cell.bn.running_mean.normal_()
            cell.bn.running_var.uniform_(0.5, 2.0)
    logits = torch.randn(steps * (steps + 1) // 2, len(PRIMITIVES))
    x_proj, h_prev = torch.randn(B, 2 * nhid), torch.randn(B, nhid)
    mask = torch.bernoulli(torch.full((B, nhid), 0.7)) / 0.7 if masked else None
    results = _intra_results(cell, ("cpp", "autograd"), logits, x_proj, h_prev, mask, need_w, need_theta)
    (out_c, g_c, b_c, _), (out_a, g_a, b_a, _) = results["cpp"], results["autograd"]
    assert max_diff(out_c, out_a) <= TOL
    for a, b in zip(g_c, g_a):
        assert max_diff(a, b) <= TOL
    for a, b in zip(b_c, b_a):
        assert max_diff(a, b) <= TOL


# Moved from tests/supernet/test_supernet.py

DT = torch.float64


def _intra_inputs(ninp=5, nhid=4, batch=6):
    x_proj = torch.randn(batch, 2 * nhid, dtype=DT)
    h_prev = torch.randn(batch, nhid, dtype=DT)
    h_mask = torch.bernoulli(torch.full((batch, nhid), 0.7, dtype=DT)) / 0.7
    return x_proj, h_prev, h_mask


def _intra_case(batchnorm, masked, training, B=6):
    cell = MixedIntraCell(5, 4, steps=4, batchnorm=batchnorm).to(DT).train(training)
    logits = torch.randn(10, len(PRIMITIVES), dtype=DT)
    x_proj, h_prev, h_mask = _intra_inputs(batch=B)
    return cell, logits, x_proj, h_prev, h_mask if masked else None


@pytest.mark.parametrize("batchnorm,masked,training", [(True, True, True), (True, False, True), (True, False, False),
                                                       (False, True, True)])
@pytest.mark.parametrize("grads_asked", list(PASSES))
def test_fused_intra_step_equals_autograd(batchnorm, masked, training, grads_asked):
    """Outputs, every gradient and the batch-norm statistics, for each set of gradients an iteration asks."""
    torch.manual_seed(0)
    need_w, need_theta = PASSES[grads_asked]
    cell, logits, x_proj, h_prev, h_mask = _intra_case(batchnorm, masked, training)
    if batchnorm:
        with torch.no_grad():
            cell.bn.running_mean.normal_()
            cell.bn.running_var.uniform_(0.5, 2.0)
    start = {k: v.clone() for k, v in cell.state_dict().items()}
    results = []
    for backend in ("eager", "autograd"):
        cell.load_state_dict(start)
        lg = logits.clone().requires_grad_(need_theta)
        xp, hp = x_proj.clone().requires_grad_(), h_prev.clone().requires_grad_()
        weights = [cell.W0, *cell.Ws]
        for w in weights:
            w.requires_grad_(need_w)
        with kernels.backend(backend), cell.bound({"ops": lg}):
            out = cell.step(xp, hp, h_mask)
        wrt = [xp, hp] + ([lg] if need_theta else []) + (weights if need_w else [])
        results.append((out, grads(out, wrt), [b.clone() for b in cell.buffers()]))
    for w in [cell.W0, *cell.Ws]:
        w.requires_grad_(True)
    (out_f, g_f, b_f), (out_a, g_a, b_a) = results
    close(out_f, out_a)
    for a, b in zip(g_f, g_a):
        close(a, b)
    for a, b in zip(b_f, b_a):
        close(a.double(), b.double())


def test_fused_intra_step_gradcheck():
    torch.manual_seed(1)
    cell = MixedIntraCell(3, 3, steps=3).to(DT)
    spec = kernels.norm_spec(cell.bn)
    x_proj, h_prev, h_mask = _intra_inputs(3, 3, batch=5)
    theta = torch.rand(6, 4, dtype=DT)
    inputs = [x_proj, h_prev, cell.W0[3:].detach().clone(), theta, *[w.detach().clone() for w in cell.Ws]]
    inputs = [t.clone().requires_grad_() for t in inputs]

    def fn(xp, h, W0h, th, *Ws):
        return kernels.IntraSearchStep.apply(cell.bn, spec, xp, h, h_mask, W0h, th, *Ws)

    assert torch.autograd.gradcheck(fn, inputs)
    for keep in range(len(inputs)):  # one input at a time: the forward keeps only what that gradient needs
        only = [t.detach().requires_grad_(k == keep) for k, t in enumerate(inputs)]
        assert torch.autograd.gradcheck(fn, only)


def test_fused_step_is_differentiable_once_only():
    torch.manual_seed(0)
    cell, logits, x_proj, h_prev, h_mask = _intra_case(True, True, True)
    h = h_prev.clone().requires_grad_()
    with cell.bound({"ops": logits}):
        out = cell.step(x_proj, h, h_mask)
    (g,) = torch.autograd.grad(out.pow(2).sum(), h, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()
    with kernels.backend("autograd"), cell.bound({"ops": logits}):  # the plain code is differentiable twice
        (g,) = torch.autograd.grad(cell.step(x_proj, h, h_mask).pow(2).sum(), h, create_graph=True)
    assert torch.autograd.grad(g.sum(), h)[0].shape == h.shape
