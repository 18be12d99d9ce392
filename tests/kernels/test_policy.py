"""The backend policy (:mod:`ess.kernels.policy`): the decision table, named gradient flags, tunables, the backends
on a whole search model."""

from __future__ import annotations

import pytest
import torch

from ess import kernels
from ess.kernels import policy
from ess.models.cells import build_cell
from ess.models.lm import lm_loss
from ess.space.genotype import DARTS_V2
from ess.supernet import MODES, build_search_model

from kernel_checks import PASSES, close, require_cpp

F32, F64 = torch.float32, torch.float64
CPP_MIN, COMPILE_MIN = kernels.CPP_MIN_ELEMENTS, kernels.COMPILE_MIN_ELEMENTS
# (device, dtype, elements) -> what the decision table of ess.kernels says, per backend
CELLS = {
    ("cpu", F32, CPP_MIN - 1): {"auto": "eager", "cpp": "cpp", "compile": "compile", "eager": "eager"},
    ("cpu", F32, CPP_MIN): {"auto": "cpp", "cpp": "cpp", "compile": "compile", "eager": "eager"},
    ("cpu", F32, COMPILE_MIN): {"auto": "cpp", "cpp": "cpp", "compile": "compile", "eager": "eager"},
    ("cpu", F64, COMPILE_MIN - 1): {"auto": "eager", "cpp": "eager", "compile": "compile", "eager": "eager"},
    ("cpu", F64, COMPILE_MIN): {"auto": "compile", "cpp": "compile", "compile": "compile", "eager": "eager"},
    ("cuda", F32, COMPILE_MIN - 1): {"auto": "eager", "cpp": "eager", "compile": "compile", "eager": "eager"},
    ("cuda", F32, COMPILE_MIN): {"auto": "compile", "cpp": "compile", "compile": "compile", "eager": "eager"},
}


@pytest.mark.parametrize("cell", list(CELLS), ids=lambda c: f"{c[0]}-{str(c[1])[6:]}-{c[2]}")
def test_select_follows_the_decision_table(cell):
    device, dtype, elements = cell
    for name, expected in CELLS[cell].items():
        assert policy.select(name, device, dtype, elements, lambda: True, True) == expected, name
        # without the C++ module: CPU float32 runs as CPU float64
        without = policy.select(name, device, dtype, elements, lambda: False, True)
        assert without == (expected if expected != "cpp" else "compile" if elements >= COMPILE_MIN else "eager")
        # after a torch.compile failure: eager wherever compile was chosen
        broken = policy.select(name, device, dtype, elements, lambda: True, False)
        assert broken == ("eager" if expected == "compile" else expected)


def test_select_asks_for_the_cpp_module_only_where_it_applies():
    def never():
        raise AssertionError("asked")

    for name in ("auto", "cpp", "compile", "eager"):
        policy.select(name, "cpu", F64, COMPILE_MIN, never, True)
        policy.select(name, "cuda", F32, COMPILE_MIN, never, True)
    policy.select("auto", "cpu", F32, CPP_MIN - 1, never, True)


def test_needs_names_the_flags_of_a_signature():
    need = policy.Needs("config X W *rest", (False, True, False, True, False))
    assert (need.config, need.X, need.W, need.rest) == (False, True, False, (True, False))
    assert need.any() and not policy.Needs("a *b", (False,)).any()
    assert need.only(X="dX", W="dW", rest=["d0", "d1"]) == (None, "dX", None, "d0", None)
    assert need.only(X="dX") == (None, "dX", None, None, None)  # a gradient not given: None
    assert "X=True" in repr(need)
    with pytest.raises(ValueError, match="hides Needs.only"):
        policy.Needs("x only", (True, True))


class _Probe(torch.autograd.Function):
    """Records what its forward is told about the gradients asked."""

    seen: list = []

    @staticmethod
    def forward(ctx, x, y):
        _Probe.seen.append(policy.Needs.of(ctx, "x y"))
        return x * y

    @staticmethod
    def backward(ctx, g):
        return g, g


def test_needs_in_a_forward_follow_the_grad_mode_through_apply_step():
    x, y = torch.ones(2, requires_grad=True), torch.ones(2)
    _Probe.seen.clear()
    with torch.no_grad():
        policy.apply_step(_Probe, x, y)
    policy.apply_step(_Probe, x, y)
    with torch.no_grad():
        _Probe.apply(x, y)  # applied directly: requires_grad decides, as a Function's needs_input_grad does
    assert [(n.x, n.y) for n in _Probe.seen] == [(False, False), (True, False), (True, False)]


def test_every_name_the_other_modules_use_is_reachable_on_the_package():
    for name in ("fused_enabled", "apply_step", "norm_spec", "IntraSearchStep", "DartsPlan", "darts_group_size",
                 "SequenceGrads", "DartsStep", "InterSearchFunction", "inter_search_forward", "FUSED_INTER_NORMS",
                 "linear_cross_entropy",
                 "backend", "get_backend", "set_backend", "BACKENDS", "CE_CHUNK_BYTES", "CPP_MIN_ELEMENTS",
                 "COMPILE_MIN_ELEMENTS", "KERNEL_OPS", "supports", "_state", "cpu"):
        assert hasattr(kernels, name), name
    assert callable(kernels.backend)  # the context manager, not a module of that name


# Moved from tests/test_cpu_kernels.py


def test_default_backend_uses_cpp_from_the_threshold():
    """``auto`` picks the C++ steps on CPU in float32 from ``CPP_MIN_ELEMENTS`` (below: the Python kernels)."""
    require_cpp()
    small = torch.zeros(2, 8)
    big = torch.zeros(kernels.CPP_MIN_ELEMENTS // 16, 16)
    with kernels.backend("auto"):
        assert policy._choose(big) == "cpp"
        assert policy._choose(small) != "cpp"
        assert policy._choose(big.double()) != "cpp"  # float32 only


# Moved from tests/supernet/test_supernet.py: the backends on the whole search model

DT = torch.float64


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("grads_asked", list(PASSES))
def test_fused_model_equals_reference_for_every_pass(mode, grads_asked):
    """The whole search model, fused path vs the edge-by-edge reference, for each pass of the iteration."""
    torch.manual_seed(0)
    need_w, need_theta = PASSES[grads_asked]
    kw = dict(mode=mode, emsize=4, nhid=4, steps=3, n_inter=2, m=2, dropoute=0.1, inter_norm="none",
              combination="search" if mode != "intra" else "product")
    fast = build_search_model(20, **kw).to(DT)
    ref = build_search_model(20, implementation="reference", **kw).to(DT)
    ref.load_state_dict(fast.state_dict())
    tokens, targets = torch.randint(0, 20, (5, 3)), torch.randint(0, 20, (5, 3))
    results = []
    for model, backend in ((fast, "eager"), (ref, "autograd")):
        for p in model.weight_parameters():
            p.requires_grad_(need_w)
        for p in model.arch_parameters():
            p.requires_grad_(need_theta)
        torch.manual_seed(3)
        with kernels.backend(backend):
            out = model(tokens, model.init_state(3))
            loss = lm_loss(out, targets)
        params = [p for p in model.parameters() if p.requires_grad]
        results.append((out.output, loss, torch.autograd.grad(loss, params), list(model.buffers())))
        for p in model.parameters():
            p.requires_grad_(True)
    (o_f, l_f, g_f, b_f), (o_r, l_r, g_r, b_r) = results
    close(o_f, o_r)
    close(l_f, l_r)
    for a, b in zip(g_f, g_r):
        close(a, b)
    for a, b in zip(b_f, b_r):
        close(a.double(), b.double())


def test_kernel_backends():
    assert kernels.get_backend() in kernels.BACKENDS
    with kernels.backend("autograd"):
        assert not kernels.fused_enabled()
        with kernels.backend("eager"):
            assert kernels.fused_enabled()
        assert kernels.get_backend() == "autograd"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.set_backend("fastest")


@pytest.mark.slow
def test_compiled_kernels_equal_eager():
    """torch.compile'd kernels (inductor) against the eager ones, every pass, search and discrete cells."""
    torch.manual_seed(4)
    kw = dict(mode="joint", emsize=24, nhid=24, steps=3, n_inter=2, m=2, combination="search", inter_norm="none")
    model = build_search_model(30, **kw).to(DT)
    tokens, targets = torch.randint(0, 30, (4, 8)), torch.randint(0, 30, (4, 8))
    for need_w, need_theta in PASSES.values():
        results = []
        for backend in ("compile", "eager"):
            for p in model.weight_parameters():
                p.requires_grad_(need_w)
            for p in model.arch_parameters():
                p.requires_grad_(need_theta)
            torch.manual_seed(5)
            with kernels.backend(backend):
                out = model(tokens, model.init_state(8))
                loss = lm_loss(out, targets)
            results.append((loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])))
        close(results[0][0], results[1][0], 1e-9)
        for a, b in zip(results[0][1], results[1][1]):
            close(a, b, 1e-9)
    # float32: the compiled kernels use a rational tanh (3e-7 relative error at most)
    model = model.float()
    results = []
    for backend in ("compile", "eager"):
        torch.manual_seed(5)
        with kernels.backend(backend):
            out = model(tokens, model.init_state(8))
            loss = lm_loss(out, targets)
        results.append((out.output, loss, torch.autograd.grad(loss, list(model.parameters()))))
    for a, b in zip(results[0][:2] + tuple(results[0][2]), results[1][:2] + tuple(results[1][2])):
        close(a, b, 1e-5)
    assert not kernels._state["compile_broken"]


# Moved from tests/models/test_lm.py


def test_a_no_grad_step_does_not_leak_into_a_later_direct_apply():
    """``apply_step`` under no_grad tells that one call to keep nothing; a later ``DartsStep.apply`` with
    gradients (no ``apply_step``) still keeps what its backward needs."""
    torch.manual_seed(5)
    cell = build_cell("ess", 4, 4, DARTS_V2).intra.double()
    x, h = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    W0h, Wg = cell.W0[4:], cell.plan.group_weights(list(cell.Ws))
    with torch.no_grad():
        kernels.apply_step(kernels.DartsStep, cell.plan, None, x, h, None, W0h, *Wg)
    out = kernels.DartsStep.apply(cell.plan, None, x, h, None, W0h, *Wg)
    (dh,) = torch.autograd.grad(out.sum(), [h])
    with kernels.backend("autograd"):
        (expected,) = torch.autograd.grad(cell.step(x, h).sum(), [h])
    torch.testing.assert_close(dh, expected, rtol=0, atol=1e-12)
