"""What the kernel tests share: the backends under test, the passes of a search iteration, the tolerance."""

from __future__ import annotations

import os

import pytest
import torch

from ess import kernels

TOL = 1e-5  # float32: the benchmarks' tolerance
PASSES = {"arch": (False, True), "weights": (True, False), "both": (True, True)}  # (weights, theta) need grad
FUSED_BACKENDS = ("cpp", "compile", "eager")  # each held to ``autograd``, the cells' plain code


def backend_cases(passes=tuple(PASSES)) -> list:
    """``(backend, dtype, pass)`` for each fused backend: float32 in every pass (the C++ steps are float32
    only), float64 in the last (``compile`` and ``eager``). ``compile`` cases are slow (inductor builds
    each variant): marked so."""
    cases = [(b, torch.float32, p) for b in FUSED_BACKENDS for p in passes]
    cases += [(b, torch.float64, passes[-1]) for b in FUSED_BACKENDS if b != "cpp"]
    return [pytest.param(b, dt, p, id=f"{b}-{str(dt)[6:]}-{p}", marks=[pytest.mark.slow] if b == "compile" else [])
            for b, dt, p in cases]


def tolerance(dtype: torch.dtype) -> float:
    """Against autograd: ``TOL`` in float32, 1e-9 in float64 (the compiled kernels' float64 agreement)."""
    return TOL if dtype == torch.float32 else 1e-9


def require_cpp() -> None:
    """Skip (fail on CI, which has a compiler) where the C++ module cannot be built."""
    if kernels.cpu.load() is None:
        if os.environ.get("CI") == "true":  # CI has a compiler: the build must work there
            pytest.fail("the C++ CPU kernels (ess.kernels.cpu) could not be built")
        pytest.skip("no C++ toolchain here: the C++ steps are off and the Python kernels run")


def max_diff(a, b) -> float:
    """Max abs difference, relative where ``|b| > 1`` (float32 carries ~7 significant digits)."""
    assert a.shape == b.shape
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp(min=1.0)).max().item()


def scaled_diff(a, b) -> float:
    """Max abs difference over ``b``'s largest magnitude: float32 against a float64 oracle where the op norm
    divides by small row deviations (its values and gradients are large, their float32 rounding with them)."""
    assert a.shape == b.shape
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def close(a, b, tol=1e-10):
    """Absolute agreement within ``tol`` (float64 cases: the fused kernels against the plain code)."""
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


def grads(out, wrt):
    return torch.autograd.grad(out.pow(2).sum() + out.sum(), wrt)


def impl_of(out) -> str:
    """The implementation (``cpp``, ``compile``, ``eager``) of the fused step nearest to ``out`` in its graph."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop(0)
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "impl"):
            return node.impl
        todo += [next_node for next_node, _ in node.next_functions]
    raise AssertionError("no fused step in the graph")
