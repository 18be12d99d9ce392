"""The discrete DARTS cell's fused step (:class:`ess.kernels.DartsStep`) on every backend against autograd; its plan."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ess import kernels
from ess.kernels import DartsPlan
from ess.models.cells import DARTSCell, build_cell
from ess.space.genotype import DARTS_V1, DARTS_V2, ENAS

from kernel_checks import TOL, backend_cases, grads, impl_of, max_diff, require_cpp, tolerance

NEED_W = {"inputs": False, "weights": True}  # the retraining's evaluation-free passes: x and h, or all


def _darts_results(cell, backends, x_proj, h_prev, mask, need_w):
    """``{backend: (out, gradients, impl)}`` of one step."""
    weights = [cell.W0, *cell.Ws]
    results = {}
    for backend in backends:
        for w in weights:
            w.requires_grad_(need_w)
        xp, hp = x_proj.clone().requires_grad_(), h_prev.clone().requires_grad_()
        with kernels.backend(backend):
            out = cell.step(xp, hp, mask)
        impl = impl_of(out) if backend != "autograd" else "autograd"
        results[backend] = (out, grads(out, [xp, hp] + (weights if need_w else [])), impl)
    for w in weights:
        w.requires_grad_(True)
    return results


@pytest.mark.parametrize("backend,dtype,grads_asked", backend_cases(tuple(NEED_W)))
def test_darts_step_on_every_backend_equals_autograd(backend, dtype, grads_asked):
    """DARTS_V2 (a source feeding three nodes: grouped matmuls), masked."""
    if backend == "cpp":
        require_cpp()
    torch.manual_seed(22)
    B, nhid = 4, 6
    cell = DARTSCell(5, nhid, DARTS_V2.intra).to(dtype)
    x_proj, h_prev = torch.randn(B, 2 * nhid, dtype=dtype), torch.randn(B, nhid, dtype=dtype)
    mask = torch.bernoulli(torch.full((B, nhid), 0.7, dtype=dtype)) / 0.7
    results = _darts_results(cell, (backend, "autograd"), x_proj, h_prev, mask, NEED_W[grads_asked])
    (out_f, g_f, impl), (out_a, g_a, _) = results[backend], results["autograd"]
    assert impl == backend
    tol = tolerance(dtype)
    assert max_diff(out_f, out_a) <= tol
    for a, b in zip(g_f, g_a):
        assert max_diff(a, b) <= tol
    assert not kernels._state["compile_broken"]


# Moved from tests/test_cpu_kernels.py


@pytest.mark.parametrize("genotype", [DARTS_V1, DARTS_V2], ids=["DARTS_V1", "DARTS_V2"])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("need_w", [True, False])
@pytest.mark.parametrize("max_group", [None, 1, 2])
def test_cpp_darts_step_equals_autograd(genotype, masked, need_w, max_group):
    require_cpp()
    torch.manual_seed(12)
    B, ninp, nhid = 8, 12, 16
    cell = DARTSCell(ninp, nhid, genotype.intra)
    cell.plan = DartsPlan.of(genotype.intra, max_group)  # a source feeding more nodes than that: several groups
    x_proj, h_prev = torch.randn(B, 2 * nhid), torch.randn(B, nhid)
    mask = torch.bernoulli(torch.full((B, nhid), 0.7)) / 0.7 if masked else None
    results = _darts_results(cell, ("cpp", "autograd"), x_proj, h_prev, mask, need_w)
    assert max_diff(results["cpp"][0], results["autograd"][0]) <= TOL
    for a, b in zip(results["cpp"][1], results["autograd"][1]):
        assert max_diff(a, b) <= TOL


@pytest.mark.parametrize("loss_steps", ["all", "first_three"])
@pytest.mark.parametrize("masked", [True, False])
def test_sequence_weight_gradients_equal_per_step_and_autograd(loss_steps, masked):
    """Under ``DARTSCell.sequence`` the C++ steps hand their weight factors to one ``SequenceGrads`` and step 0
    returns the whole sequence's dW. Equal to the same steps returning their own dW (to rounding: 1e-6 of the
    gradient's scale) and to autograd (TOL), also when the loss reads only early steps and when the graph is
    walked twice (``retain_graph``)."""
    require_cpp()
    torch.manual_seed(16)
    cell = build_cell("ess", 12, 12, DARTS_V2, dropouth=0.3 if masked else 0.0).train()
    x = torch.randn(7, 5, 12)
    results = {}
    for name, backend in (("sequence", "cpp"), ("per_step", "cpp"), ("autograd", "autograd")):
        if name == "per_step":  # no sequence context: each step returns its own weight gradients
            cell.intra.sequence = contextlib.nullcontext
        torch.manual_seed(17)  # the same masks
        with kernels.backend(backend):
            out, _ = cell(x, cell.init_state(5))
        vars(cell.intra).pop("sequence", None)
        used = out if loss_steps == "all" else out[:3]
        loss = used.pow(2).sum() + used.sum()
        params = list(cell.parameters())
        once = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        twice = torch.autograd.grad(loss, params, allow_unused=True)
        results[name] = (once, twice)
    for run in range(2):
        for a, b, c in zip(results["sequence"][run], results["per_step"][run], results["autograd"][run]):
            assert (a is None) == (b is None) == (c is None)
            if a is not None:
                assert (a - b).abs().max() <= 1e-6 * b.abs().max()
                assert max_diff(a, c) <= TOL


# Moved from tests/models/test_cells.py


@pytest.mark.parametrize("genotype", [DARTS_V2, ENAS], ids=["DARTS_V2", "ENAS"])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("need_w", [True, False])
@pytest.mark.parametrize("max_group", [None, 1, 2])
def test_fused_darts_step_equals_autograd(genotype, masked, need_w, max_group):
    torch.manual_seed(9)
    cell = DARTSCell(5, 4, genotype.intra).double()
    cell.plan = DartsPlan.of(genotype.intra, max_group)
    x = torch.randn(6, 8, dtype=torch.float64)  # x_proj: [B, 2 nhid]
    h = torch.randn(6, 4, dtype=torch.float64)
    mask = torch.bernoulli(torch.full((6, 4), 0.7, dtype=torch.float64)) / 0.7 if masked else None
    weights = [cell.W0, *cell.Ws]
    results = []
    for backend in ("eager", "autograd"):
        for w in weights:
            w.requires_grad_(need_w)
        xp, hp = x.clone().requires_grad_(), h.clone().requires_grad_()
        with kernels.backend(backend):
            out = cell.step(xp, hp, mask)
        wrt = [xp, hp] + (weights if need_w else [])
        results.append((out, torch.autograd.grad(out.pow(2).sum() + out.sum(), wrt)))
    for w in weights:
        w.requires_grad_(True)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_darts_plan_groups_nodes_by_source():
    plan = DartsPlan.of(DARTS_V2.intra)
    # DARTS_V2: preds 0, 1, 1, 1, 2, 5, 3, 5 -> s_1 feeds nodes 2, 3, 4; s_5 feeds 6 and 8
    assert plan.groups == ((0, (1,)), (1, (2, 3, 4)), (2, (5,)), (3, (7,)), (5, (6, 8)))
    assert plan.concat == DARTS_V2.intra.concat
    capped = DartsPlan.of(DARTS_V2.intra, max_group=2)  # a source feeding more nodes gets several groups
    assert capped.groups == ((0, (1,)), (1, (2, 3)), (1, (4,)), (2, (5,)), (3, (7,)), (5, (6, 8)))
    single = DartsPlan.of(DARTS_V2.intra, max_group=1).groups
    assert [nodes for _, nodes in single] == [(1,), (2,), (3,), (4,), (5,), (7,), (6,), (8,)]
    assert [j for j, _ in single] == [0, 1, 1, 1, 2, 3, 5, 5]


@pytest.mark.parametrize("nhid,max_group", [(300, 3), (850, 1), (512, 2), (4, 256)])
def test_darts_cell_groups_within_the_column_budget(nhid, max_group):
    assert kernels.darts_group_size(nhid) == max_group
    cell = DARTSCell(8, nhid, DARTS_V2.intra)
    assert all(len(nodes) <= max_group for _, nodes in cell.plan.groups)


def test_fused_darts_step_gradcheck():
    torch.manual_seed(10)
    cell = DARTSCell(3, 3, DARTS_V2.intra).double()
    plan = cell.plan
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 3, dtype=torch.float64) + 0.5
    W0h = cell.W0[3:].detach().clone().requires_grad_()
    Wg = [w.detach().clone().requires_grad_() for w in plan.group_weights(list(cell.Ws))]
    assert torch.autograd.gradcheck(lambda a, b, c, *ws: kernels.DartsStep.apply(plan, None, a, b, mask, c, *ws),
                                    (x, h, W0h, *Wg))
