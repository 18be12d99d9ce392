"""The ops the kernels implement (:mod:`ess.kernels.activations`): their order against the registry, derivatives."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ess import kernels
from ess.kernels import activations
from ess.space.ops import PRIMITIVES, ZERO


def test_kernel_ops_are_the_registry_non_zero_ops_in_order():
    assert kernels.KERNEL_OPS == tuple(op for op in PRIMITIVES if op != ZERO) == ("tanh", "relu", "sigmoid", "identity")


def test_supports_says_whether_the_kernels_implement_an_op_set():
    assert kernels.supports(PRIMITIVES)
    assert kernels.supports(("none", "relu")) and kernels.supports(())
    assert not kernels.supports(("tanh", "gelu"))
    assert not kernels.supports(("Tanh",))


def test_importing_the_kernels_refuses_a_permuted_registry():
    code = ("import ess.space.ops as ops; ops.PRIMITIVES = ('none', 'relu', 'tanh', 'sigmoid', 'identity'); "
            "import ess.kernels")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "ess.kernels implement the ops ('tanh', 'relu', 'sigmoid', 'identity') in this column order" in proc.stderr


@pytest.mark.parametrize("op", activations.KERNEL_OPS)
def test_each_op_and_its_derivative_equal_autograd(op):
    H = torch.linspace(-4, 4, 81, dtype=torch.float64).requires_grad_()
    f, fprime = activations.act_grad(op, H)
    torch.testing.assert_close(f, activations.ACT_FWD[op](H), rtol=0, atol=1e-15)
    (expected,) = torch.autograd.grad(f.sum(), H)
    torch.testing.assert_close(fprime, expected, rtol=0, atol=1e-12)


def test_stacked_ops_follow_kernel_ops_and_their_slope_is_the_gradient():
    P = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    A = activations.stacked(P)  # [2, 4, 3, 5]
    for k, op in enumerate(activations.KERNEL_OPS):
        torch.testing.assert_close(A[:, k], activations.ACT_FWD[op](P), rtol=0, atol=1e-15)
    dA = torch.randn_like(A)
    (expected,) = torch.autograd.grad((A * dA).sum(), P)
    torch.testing.assert_close(activations.stacked_slope(P, dA), expected, rtol=0, atol=1e-12)


def test_the_compiled_float32_tanh_is_within_its_stated_error(monkeypatch):
    """Inside a compiled float32 kernel tanh is a rational function: 3e-7 relative error (and float32 rounding)."""
    x = torch.linspace(-12, 12, 20001)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    approx = activations.kernel_tanh(x).double()
    exact = torch.tanh(x.double())
    assert ((approx - exact).abs() / exact.abs().clamp(min=1e-3)).max() <= 4e-7
    assert activations.kernel_tanh(x.double()).equal(exact)  # float64 keeps torch.tanh
