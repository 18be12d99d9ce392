"""The inter search cell's fused DAG (:class:`ess.kernels.InterSearchFunction`) on every backend against autograd."""

from __future__ import annotations

import itertools

import pytest
import torch

from ess import kernels
from ess.supernet import MixedInterCell

from kernel_checks import PASSES, TOL, backend_cases, close, grads, impl_of, max_diff, require_cpp, tolerance


def _inter_results(cell, backends, alphas, inputs, need_w, need_theta):
    """``{backend: (out, gradients, impl)}`` of the cell on ``inputs``."""
    results = {}
    for backend in backends:
        al = {k: v.clone().requires_grad_(need_theta) for k, v in alphas.items()}
        xs = [v.clone().requires_grad_() for v in inputs]
        cell.W.requires_grad_(need_w)
        with kernels.backend(backend), cell.bound(al):
            out = cell(xs)
        wrt = xs + (list(al.values()) if need_theta else []) + ([cell.W] if need_w else [])
        impl = impl_of(out) if backend != "autograd" else "autograd"
        results[backend] = (out, grads(out, wrt), impl)
    cell.W.requires_grad_(True)
    return results


@pytest.mark.parametrize("backend,dtype,grads_asked", backend_cases())
def test_inter_cell_on_every_backend_equals_autograd(backend, dtype, grads_asked):
    """m = 2 inputs, 3 nodes, the combination searched (every gradient path), residual."""
    if backend == "cpp":
        require_cpp()
    torch.manual_seed(23)
    need_w, need_theta = PASSES[grads_asked]
    m, N, dim = 2, 5, 6
    cell = MixedInterCell(dim, m=m, n_nodes=3, combination="search", residual=True).to(dtype)
    alphas = {k: torch.randn(*shape, dtype=dtype) for k, shape in cell.arch_spec().items()}
    inputs = [torch.randn(N, dim, dtype=dtype) for _ in range(m)]
    results = _inter_results(cell, (backend, "autograd"), alphas, inputs, need_w, need_theta)
    (out_f, g_f, impl), (out_a, g_a, _) = results[backend], results["autograd"]
    assert impl == backend
    tol = tolerance(dtype)
    assert max_diff(out_f, out_a) <= tol
    for a, b in zip(g_f, g_a):
        assert max_diff(a, b) <= tol
    assert not kernels._state["compile_broken"]


def test_inter_cell_beyond_the_cpp_node_limit_runs_python():
    """More nodes than the C++ step keeps (``CPP_MAX_INTER_NODES``): the Python kernels, same result."""
    require_cpp()
    torch.manual_seed(24)
    cell = MixedInterCell(4, m=1, n_nodes=kernels.CPP_MAX_INTER_NODES + 1, combination="sum", residual=False)
    alphas = {k: torch.randn(*shape) for k, shape in cell.arch_spec().items()}
    results = _inter_results(cell, ("cpp", "autograd"), alphas, [torch.randn(3, 4)], True, True)
    assert results["cpp"][2] == "eager"
    assert max_diff(results["cpp"][0], results["autograd"][0]) <= TOL
    for a, b in zip(results["cpp"][1], results["autograd"][1]):
        assert max_diff(a, b) <= TOL


# Moved from tests/test_cpu_kernels.py


@pytest.mark.parametrize("combination", ["product", "sum", "search"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("m,n_nodes", [(3, 3), (1, 1), (2, 4)])
@pytest.mark.parametrize("grads_asked", list(PASSES))
def test_cpp_inter_cell_equals_autograd(combination, residual, m, n_nodes, grads_asked):
    """The fused inter DAG in C++ (every (source, op) sum in the node passes) vs its plain autograd code."""
    require_cpp()
    torch.manual_seed(15)
    need_w, need_theta = PASSES[grads_asked]
    N, dim = 10, 20  # rows not a multiple of the threads' blocks, width not of the vector length
    cell = MixedInterCell(dim, m=m, n_nodes=n_nodes, combination=combination, residual=residual)
    alphas = {k: torch.randn(*shape) for k, shape in cell.arch_spec().items()}
    inputs = [torch.randn(N, dim) for _ in range(m)]
    results = _inter_results(cell, ("cpp", "autograd"), alphas, inputs, need_w, need_theta)
    assert max_diff(results["cpp"][0], results["autograd"][0]) <= TOL
    for a, b in zip(results["cpp"][1], results["autograd"][1]):
        assert max_diff(a, b) <= TOL


# Moved from tests/supernet/test_supernet.py

DT = torch.float64
INTER_CASES = list(itertools.product(["node", "edge"], ["product", "sum", "search"], [True, False]))


@pytest.mark.parametrize("scope,combination,residual", INTER_CASES)
@pytest.mark.parametrize("grads_asked", list(PASSES))
def test_fused_inter_equals_autograd(scope, combination, residual, grads_asked):
    torch.manual_seed(0)
    need_w, need_theta = PASSES[grads_asked]
    m, n, d = 2, 3, 4
    cell = MixedInterCell(d, m, n, combination, residual, scope).to(DT)
    alphas = {k: torch.randn(*shape, dtype=DT) for k, shape in cell.arch_spec().items()}
    inputs = [torch.randn(3, 2, d, dtype=DT) for _ in range(m)]
    cell.W.requires_grad_(need_w)
    results = []
    for backend in ("eager", "autograd"):
        al = {k: v.clone().requires_grad_(need_theta) for k, v in alphas.items()}
        xs = [v.clone().requires_grad_(j == 0) for j, v in enumerate(inputs)]  # input 1: no gradient wanted
        with kernels.backend(backend), cell.bound(al):
            out = cell(xs)
        wrt = xs[:1] + (list(al.values()) if need_theta else []) + ([cell.W] if need_w else [])
        results.append((out, grads(out, wrt)))
    cell.W.requires_grad_(True)
    close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        close(a, b)


@pytest.mark.parametrize("combination", ["product", "sum", "search"])
def test_fused_inter_gradcheck(combination):
    torch.manual_seed(2)
    m, K, N, d = 2, 3, 4, 3
    X = torch.randn(m, N, d, dtype=DT, requires_grad=True)
    W = (0.5 * torch.randn(2, m + K - 1, d, d, dtype=DT)).requires_grad_()
    theta_in = torch.rand(2, K, m, 4, dtype=DT, requires_grad=True)
    theta_nodes = [torch.rand(2, k, 4, dtype=DT, requires_grad=True) for k in range(1, K)]
    comb = torch.rand(2, dtype=DT, requires_grad=True) if combination == "search" else None
    args = [X, W, theta_in, *([comb] if comb is not None else []), *theta_nodes]

    def fn(X, W, theta_in, *rest):
        c, nodes = (rest[0], rest[1:]) if comb is not None else (None, rest)
        return kernels.InterSearchFunction.apply((combination, True), X, W, theta_in, c, *nodes)

    assert torch.autograd.gradcheck(fn, args)
