"""The decoder fused into the loss (:mod:`ess.kernels.loss`) under every backend against the plain loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ess import kernels
from ess.models.lm import LMOutput, lm_loss

from kernel_checks import FUSED_BACKENDS, TOL, max_diff


def _loss_and_grads(backend, output, weight, bias, targets):
    out = LMOutput(None, [], output, output, decoder=(weight, bias))
    with kernels.backend(backend):
        loss = lm_loss(out, targets)
    return loss, torch.autograd.grad(3 * loss, [output, weight, bias])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_lm_loss_on_every_backend_equals_the_plain_loss(backend, dtype):
    torch.manual_seed(41)
    T, B, d, V = 3, 4, 5, 11
    output = torch.randn(T, B, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, d, dtype=dtype, requires_grad=True)
    bias = torch.randn(V, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (T, B))
    fused, g_f = _loss_and_grads(backend, output, weight, bias, targets)
    assert type(fused.grad_fn).__name__ == "LinearCrossEntropyBackward"
    plain, g_p = _loss_and_grads("autograd", output, weight, bias, targets)
    assert type(plain.grad_fn).__name__ != "LinearCrossEntropyBackward"
    tol = TOL if dtype == torch.float32 else 1e-12
    assert max_diff(fused, plain) <= tol
    for a, b in zip(g_f, g_p):
        assert max_diff(a, b) <= tol


class _CountMax(TorchDispatchMode):
    """Counts ``amax`` calls: one per chunk of rows."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.ops.aten.amax.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("chunk_rows,chunks", [(1, 7), (3, 3), (1000, 1)])
def test_the_chunk_size_set_on_the_loss_module_splits_the_rows(monkeypatch, chunk_rows, chunks):
    N, d, V = 7, 5, 11
    monkeypatch.setattr(kernels.loss, "CE_CHUNK_BYTES", chunk_rows * V * 8)  # float64: chunk_rows rows a chunk
    x, W = torch.randn(N, d, dtype=torch.float64, requires_grad=True), torch.randn(V, d, dtype=torch.float64)
    with _CountMax() as counter:
        kernels.linear_cross_entropy(x, W, None, torch.randint(0, V, (N,)))
    assert counter.calls == chunks


# Moved from tests/models/test_lm.py


@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_cross_entropy_equals_decoder_then_cross_entropy(monkeypatch, chunk_rows, bias):
    torch.manual_seed(1)
    N, d, V = 7, 5, 11
    monkeypatch.setattr(kernels.loss, "CE_CHUNK_BYTES", chunk_rows * V * 8)  # float64: chunk_rows rows a chunk
    x = torch.randn(N, d, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, requires_grad=True) if bias else None
    y = torch.randint(0, V, (N,))
    params = [x, W] + ([b] if bias else [])
    fused = kernels.linear_cross_entropy(x, W, b, y)
    plain = F.cross_entropy(F.linear(x, W, b), y)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
    for g_f, g_p in zip(torch.autograd.grad(3 * fused, params), torch.autograd.grad(3 * plain, params)):
        torch.testing.assert_close(g_f, g_p, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *p: kernels.linear_cross_entropy(*p[:2], p[2] if bias else None, y),
                                    tuple(params))


def test_linear_cross_entropy_computes_only_the_gradients_asked():
    x, W = torch.randn(4, 3), torch.randn(6, 3, requires_grad=True)
    loss = kernels.linear_cross_entropy(x, W, None, torch.randint(0, 6, (4,)))
    dx, dW, db = loss.grad_fn.saved_tensors
    assert dx is None and db is None and dW.shape == W.shape
    with torch.no_grad():
        assert not kernels.linear_cross_entropy(x, W, None, torch.randint(0, 6, (4,))).requires_grad


def test_linear_cross_entropy_in_evaluation_makes_only_the_logits():
    """Under no_grad (evaluation) the loss is the plain one and no gradient product is computed, although the
    inputs require gradients (a Function's ``needs_input_grad`` would say they do)."""
    x, W = torch.randn(4, 3, requires_grad=True), torch.randn(6, 3, requires_grad=True)
    y = torch.randint(0, 6, (4,))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss = kernels.linear_cross_entropy(x, W, None, y)
    assert counter.get_total_flops() == 2 * 4 * 3 * 6  # x W^T only (dx would add as much again)
    torch.testing.assert_close(loss, F.cross_entropy(x.detach() @ W.detach().t(), y))
