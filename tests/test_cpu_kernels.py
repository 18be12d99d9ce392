"""The C++ CPU steps (:mod:`ess.cpu_kernels`) against the cells' plain autograd code, in float32.

The Python kernels are held to autograd in float64 (tests/test_supernet.py, tests/test_cells.py); these
tests hold the C++ build, which the default backend uses on CPU from ``batch * nhid >= CPP_MIN_ELEMENTS``,
to the same outputs, gradients and batch-norm statistics within the benchmarks' tolerance (1e-5).
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from ess import cpu_kernels, kernels
from ess.kernels import DartsPlan
from ess.models.cells import DARTSCell, build_cell
from ess.models.lm import lm_loss
from ess.space.genotype import DARTS_V1, DARTS_V2
from ess.space.ops import PRIMITIVES
from ess.supernet import MixedInterCell, MixedIntraCell, build_search_model

TOL = 1e-5
PASSES = {"arch": (False, True), "weights": (True, False), "both": (True, True)}  # (weights, theta) need grad


@pytest.fixture(scope="module", autouse=True)
def built():
    if cpu_kernels.load() is None:
        if os.environ.get("CI") == "true":  # CI has a compiler: the build must work there
            pytest.fail("ess.cpu_kernels could not be built")
        pytest.skip("no C++ toolchain here: the C++ steps are off and the Python kernels run")


def _max_diff(a, b) -> float:
    """Max abs difference, relative where ``|b| > 1`` (float32 carries ~7 significant digits)."""
    assert a.shape == b.shape
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp(min=1.0)).max().item()


def _grads(out, wrt):
    return torch.autograd.grad(out.pow(2).sum() + out.sum(), wrt)


@pytest.mark.parametrize("batchnorm,masked,training", [(True, True, True), (True, False, True), (True, True, False),
                                                       (False, True, True)])
@pytest.mark.parametrize("grads", list(PASSES))
def test_cpp_intra_step_equals_autograd(batchnorm, masked, training, grads):
    torch.manual_seed(11)
    need_w, need_theta = PASSES[grads]
    B, ninp, nhid, steps = 8, 12, 16, 4
    cell = MixedIntraCell(ninp, nhid, steps=steps, batchnorm=batchnorm).train(training)
    if batchnorm:
        with torch.no_grad():
            cell.bn.running_mean.normal_()
            cell.bn.running_var.uniform_(0.5, 2.0)
    logits = torch.randn(steps * (steps + 1) // 2, len(PRIMITIVES))
    x_proj, h_prev = torch.randn(B, 2 * nhid), torch.randn(B, nhid)
    mask = torch.bernoulli(torch.full((B, nhid), 0.7)) / 0.7 if masked else None
    start = {k: v.clone() for k, v in cell.state_dict().items()}
    results = {}
    for backend in ("cpp", "autograd"):
        cell.load_state_dict(start)
        lg = logits.clone().requires_grad_(need_theta)
        xp, hp = x_proj.clone().requires_grad_(), h_prev.clone().requires_grad_()
        weights = [cell.W0, *cell.Ws]
        for w in weights:
            w.requires_grad_(need_w)
        with kernels.backend(backend), cell.bound({"ops": lg}):
            out = cell.step(xp, hp, mask)
        wrt = [xp, hp] + ([lg] if need_theta else []) + (weights if need_w else [])
        results[backend] = (out, _grads(out, wrt), [b.clone() for b in cell.buffers()])
    for w in [cell.W0, *cell.Ws]:
        w.requires_grad_(True)
    (out_c, g_c, b_c), (out_a, g_a, b_a) = results["cpp"], results["autograd"]
    assert _max_diff(out_c, out_a) <= TOL
    for a, b in zip(g_c, g_a):
        assert _max_diff(a, b) <= TOL
    for a, b in zip(b_c, b_a):
        assert _max_diff(a, b) <= TOL


@pytest.mark.parametrize("genotype", [DARTS_V1, DARTS_V2], ids=["DARTS_V1", "DARTS_V2"])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("need_w", [True, False])
@pytest.mark.parametrize("max_group", [None, 1, 2])
def test_cpp_darts_step_equals_autograd(genotype, masked, need_w, max_group):
    torch.manual_seed(12)
    B, ninp, nhid = 8, 12, 16
    cell = DARTSCell(ninp, nhid, genotype.intra)
    cell.plan = DartsPlan.of(genotype.intra, max_group)  # a source feeding more nodes than that: several groups
    x_proj, h_prev = torch.randn(B, 2 * nhid), torch.randn(B, nhid)
    mask = torch.bernoulli(torch.full((B, nhid), 0.7)) / 0.7 if masked else None
    weights = [cell.W0, *cell.Ws]
    results = {}
    for backend in ("cpp", "autograd"):
        for w in weights:
            w.requires_grad_(need_w)
        xp, hp = x_proj.clone().requires_grad_(), h_prev.clone().requires_grad_()
        with kernels.backend(backend):
            out = cell.step(xp, hp, mask)
        results[backend] = (out, _grads(out, [xp, hp] + (weights if need_w else [])))
    for w in weights:
        w.requires_grad_(True)
    assert _max_diff(results["cpp"][0], results["autograd"][0]) <= TOL
    for a, b in zip(results["cpp"][1], results["autograd"][1]):
        assert _max_diff(a, b) <= TOL


@pytest.mark.parametrize("loss_steps", ["all", "first_three"])
@pytest.mark.parametrize("masked", [True, False])
def test_sequence_weight_gradients_equal_per_step_and_autograd(loss_steps, masked):
    """Under ``DARTSCell.sequence`` the C++ steps hand their weight factors to one ``SequenceGrads`` and step 0
    returns the whole sequence's dW. Equal to the same steps returning their own dW (to rounding: 1e-6 of the
    gradient's scale) and to autograd (TOL), also when the loss reads only early steps and when the graph is
    walked twice (``retain_graph``)."""
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
                assert _max_diff(a, c) <= TOL


@pytest.mark.parametrize("combination", ["product", "sum", "search"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("m,n_nodes", [(3, 3), (1, 1), (2, 4)])
@pytest.mark.parametrize("grads", list(PASSES))
def test_cpp_inter_cell_equals_autograd(combination, residual, m, n_nodes, grads):
    """The fused inter DAG in C++ (every (source, op) sum in the node passes) vs its plain autograd code."""
    torch.manual_seed(15)
    need_w, need_theta = PASSES[grads]
    N, dim = 10, 20  # rows not a multiple of the threads' blocks, width not of the vector length
    cell = MixedInterCell(dim, m=m, n_nodes=n_nodes, combination=combination, residual=residual)
    alphas = {k: torch.randn(*shape) for k, shape in cell.arch_spec().items()}
    inputs = [torch.randn(N, dim) for _ in range(m)]
    results = {}
    for backend in ("cpp", "autograd"):
        al = {k: v.clone().requires_grad_(need_theta) for k, v in alphas.items()}
        xs = [v.clone().requires_grad_() for v in inputs]
        cell.W.requires_grad_(need_w)
        with kernels.backend(backend), cell.bound(al):
            out = cell(xs)
        wrt = xs + (list(al.values()) if need_theta else []) + ([cell.W] if need_w else [])
        results[backend] = (out, _grads(out, wrt))
    cell.W.requires_grad_(True)
    assert _max_diff(results["cpp"][0], results["autograd"][0]) <= TOL
    for a, b in zip(results["cpp"][1], results["autograd"][1]):
        assert _max_diff(a, b) <= TOL


@pytest.mark.parametrize("mode", ["intra", "inter", "joint"])
def test_cpp_search_model_equals_reference(mode):
    """A whole BPTT segment of the search model, C++ steps vs the edge-by-edge reference, float32."""
    torch.manual_seed(13)
    kw = dict(mode=mode, ninp=16, nhid=16, steps=3, n_inter=2, m=2, dropoute=0.0)
    fast = build_search_model(40, **kw)
    ref = build_search_model(40, implementation="reference", **kw)
    ref.load_state_dict(fast.state_dict())
    tokens, targets = torch.randint(0, 40, (4, 8)), torch.randint(0, 40, (4, 8))
    results = []
    for model, backend in ((fast, "cpp"), (ref, "autograd")):
        torch.manual_seed(14)  # the same dropout masks
        with kernels.backend(backend):
            out = model(tokens, model.init_state(8))
            loss = lm_loss(out, targets)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters())), list(model.buffers())))
    (l_c, g_c, b_c), (l_r, g_r, b_r) = results
    assert _max_diff(l_c, l_r) <= TOL
    for a, b in zip(g_c, g_r):
        assert _max_diff(a, b) <= TOL
    for a, b in zip(b_c, b_r):
        assert _max_diff(a, b) <= TOL


def test_default_backend_uses_cpp_from_the_threshold():
    """``auto`` picks the C++ steps on CPU in float32 from ``CPP_MIN_ELEMENTS`` (below: the Python kernels)."""
    small = torch.zeros(2, 8)
    big = torch.zeros(kernels.CPP_MIN_ELEMENTS // 16, 16)
    with kernels.backend("auto"):
        assert kernels._choose(big) == "cpp"
        assert kernels._choose(small) != "cpp"
        assert kernels._choose(big.double()) != "cpp"  # float32 only
