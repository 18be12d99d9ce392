"""The backend policy (:mod:`ess.kernels.policy`): the decision table, named gradient flags, tunables."""

from __future__ import annotations

import pytest
import torch

from ess import kernels
from ess.kernels import policy

from kernel_checks import require_cpp

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


@pytest.mark.parametrize("name", sorted(kernels._TUNABLES))
def test_a_tunable_set_on_the_package_reaches_the_module_that_reads_it(monkeypatch, name):
    owner = kernels._TUNABLES[name]
    before = getattr(owner, name)
    monkeypatch.setattr(kernels, name, before + 1)
    assert getattr(owner, name) == getattr(kernels, name) == before + 1
    monkeypatch.undo()
    assert getattr(owner, name) == getattr(kernels, name) == before


def test_every_name_the_other_modules_use_is_reachable_on_the_package():
    for name in ("fused_enabled", "apply_step", "norm_spec", "IntraSearchStep", "DartsPlan", "darts_group_size",
                 "SequenceGrads", "DartsStep", "InterSearchFunction", "inter_search_forward", "linear_cross_entropy",
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
