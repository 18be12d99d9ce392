"""The inter search cell's fused DAG (:class:`ess.kernels.InterSearchFunction`) on every backend against autograd."""

from __future__ import annotations

import itertools

import pytest
import torch

from ess import kernels
from ess.supernet import MixedInterCell
from ess.supernet.reference import ReferenceMixedInterCell

from kernel_checks import (
    PASSES,
    TOL,
    backend_cases,
    close,
    grads,
    impl_of,
    max_diff,
    require_cpp,
    scaled_diff,
    tolerance,
)


def _inter_results(cell, backends, alphas, inputs, need_w, need_theta):
    """``{backend: (out, gradients, impl)}`` of the cell on ``inputs`` (cast to the cell's dtype)."""
    results = {}
    dtype = cell.W.dtype
    for backend in backends:
        al = {k: v.to(dtype).clone().requires_grad_(need_theta) for k, v in alphas.items()}
        xs = [v.to(dtype).clone().requires_grad_() for v in inputs]
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


# The op norm (every op's activation layer-normalised over its row) in the fused kernels


# float32 against float64 with the op norm, relative to each tensor's scale: the plain code in float32 is itself
# up to 8.6e-6 away from float64 on these cases (the norm divides by row deviations; sigmoid's are small)
OP_NORM_TOL = 3e-5


def _op_norm_case(m, n_nodes, combination, residual, N, dim, seed):
    """A float64 op-normed cell, the edge-by-edge reference cell with its weights (the oracle), arch logits and
    inputs."""
    torch.manual_seed(seed)
    cell = MixedInterCell(dim, m=m, n_nodes=n_nodes, combination=combination, residual=residual, norm="op").double()
    oracle = ReferenceMixedInterCell(dim, m=m, n_nodes=n_nodes, combination=combination, residual=residual,
                                     norm="op").double()
    oracle.load_state_dict(cell.state_dict())
    alphas = {k: torch.randn(*shape, dtype=torch.float64) for k, shape in cell.arch_spec().items()}
    inputs = [torch.randn(N, dim, dtype=torch.float64) for _ in range(m)]
    return cell, oracle, alphas, inputs


def _oracle(oracle, alphas, inputs, need_w, need_theta):
    """The reference cell's output and gradients (``_inter_results``'s order) under plain autograd."""
    with kernels.backend("autograd"):
        out, g, _ = _inter_results(oracle, ("autograd",), alphas, inputs, need_w, need_theta)["autograd"]
    return out, g


@pytest.mark.parametrize("backend,dtype,grads_asked", backend_cases())
def test_op_norm_on_every_backend_equals_the_plain_code(backend, dtype, grads_asked):
    """The fused op norm, forward and backward: float64 (eager, compile) to 1e-10 of the plain code; the C++ step
    (float32) within ``OP_NORM_TOL`` of the float64 plain code, relative to each tensor's scale."""
    if backend == "cpp":
        require_cpp()
    need_w, need_theta = PASSES[grads_asked]
    cell, oracle, alphas, inputs = _op_norm_case(2, 3, "search", True, 10, 20, 31)
    out_o, g_o = _oracle(oracle, alphas, inputs, need_w, need_theta)
    fused = cell.to(dtype)
    out_f, g_f, impl = _inter_results(fused, (backend,), alphas, inputs, need_w, need_theta)[backend]
    assert impl == backend
    if dtype == torch.float64:
        for a, b in zip((out_f, *g_f), (out_o, *g_o)):
            close(a, b)
    else:
        assert max(scaled_diff(a, b) for a, b in zip((out_f, *g_f), (out_o, *g_o))) <= OP_NORM_TOL
    assert not kernels._state["compile_broken"]


@pytest.mark.parametrize("combination", ["product", "sum", "search"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("m,n_nodes", [(3, 3), (1, 1), (2, 4)])
@pytest.mark.parametrize("N,dim", [(10, 20), (32, 64)])
def test_cpp_op_norm_equals_the_plain_code(combination, residual, m, n_nodes, N, dim):
    """The C++ step with the op norm (row statistics, its backward through them) against the float64 plain code,
    on rows shorter than, a multiple of, and not a multiple of the vector length; every pass at once."""
    require_cpp()
    cell, oracle, alphas, inputs = _op_norm_case(m, n_nodes, combination, residual, N, dim, 16)
    out_o, g_o = _oracle(oracle, alphas, inputs, True, True)
    out_c, g_c, impl = _inter_results(cell.float(), ("cpp",), alphas, inputs, True, True)["cpp"]
    assert impl == "cpp"
    assert max(scaled_diff(a, b) for a, b in zip((out_c, *g_c), (out_o, *g_o))) <= OP_NORM_TOL


def test_op_norm_keeps_a_constant_row_finite():
    """A row whose activation is constant (relu of a negative row: variance 0) normalises to 0, as F.layer_norm
    does with its eps, in every implementation; its gradients stay finite."""
    require_cpp()
    cell, oracle, alphas, inputs = _op_norm_case(1, 2, "product", True, 6, 16, 5)
    inputs[0][2] = -1.0
    with torch.no_grad():
        for c in (cell, oracle):
            c.W[:, 0] = torch.eye(16, dtype=torch.float64)  # row 2's projections: all -1 (relu 0, the others flat)
    out_o, g_o = _oracle(oracle, alphas, inputs, True, True)
    out_c, g_c, _ = _inter_results(cell.float(), ("cpp",), alphas, inputs, True, True)["cpp"]
    assert all(torch.isfinite(t).all() for t in (out_c, *g_c))
    assert max(scaled_diff(a, b) for a, b in zip((out_c, *g_c), (out_o, *g_o))) <= OP_NORM_TOL


def test_branch_norms_are_not_fused():
    with pytest.raises(ValueError, match="not 'centre'"):
        kernels.InterSearchFunction.apply(("sum", True, "centre"), torch.zeros(1, 2, 3), torch.zeros(2, 1, 3, 3),
                                          torch.zeros(2, 1, 1, 4), None)


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


@pytest.mark.parametrize("norm", kernels.FUSED_INTER_NORMS)
@pytest.mark.parametrize("scope,combination,residual", INTER_CASES)
@pytest.mark.parametrize("grads_asked", list(PASSES))
def test_fused_inter_equals_autograd(scope, combination, residual, grads_asked, norm):
    torch.manual_seed(0)
    need_w, need_theta = PASSES[grads_asked]
    m, n, d = 2, 3, 4
    cell = MixedInterCell(d, m, n, combination, residual, scope, norm).to(DT)
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


@pytest.mark.parametrize("norm", kernels.FUSED_INTER_NORMS)
@pytest.mark.parametrize("combination", ["product", "sum", "search"])
def test_fused_inter_gradcheck(combination, norm):
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
        return kernels.InterSearchFunction.apply((combination, True, norm), X, W, theta_in, c, *nodes)

    assert torch.autograd.gradcheck(fn, args)
