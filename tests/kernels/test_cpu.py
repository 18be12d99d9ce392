"""The C++ CPU kernels (:mod:`ess.kernels.cpu`): building, loading, failing in one line, a whole model."""

from __future__ import annotations

import pytest
import torch

from ess import kernels
from ess.kernels import cpu
from ess.models.lm import lm_loss
from ess.supernet import build_search_model

from kernel_checks import TOL, max_diff, require_cpp


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not tried to load the module yet (restored afterwards)."""
    monkeypatch.setitem(cpu._state, "tried", False)
    monkeypatch.setitem(cpu._state, "module", None)


def test_the_first_build_is_announced_in_two_lines(fresh, monkeypatch, capsys):
    built = object()
    monkeypatch.setattr(cpu, "is_built", lambda: False)
    monkeypatch.setattr(cpu, "build", lambda verbose=False: built)
    assert cpu.load() is built
    assert cpu.load() is built  # once per process
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("ess.kernels: building the C++ CPU kernels (first use; cached in ")
    assert str(cpu.build_directory()) in err[0]
    assert err[1].startswith("ess.kernels: C++ CPU kernels built in ") and err[1].endswith(" s")


def test_a_failed_build_is_one_line_and_the_python_kernels_run(fresh, monkeypatch, capsys):
    def broken(verbose=False):
        raise RuntimeError("Error building extension 'ess_kernels_cpu_avx2': [1/2] c++ -O3 ...\nFAILED: main.o")

    monkeypatch.setattr(cpu, "is_built", lambda: True)
    monkeypatch.setattr(cpu, "build", broken)
    assert cpu.load() is None
    err = capsys.readouterr().err.splitlines()
    assert err == ["ess.kernels: the C++ CPU kernels could not be built (RuntimeError: Error building extension "
                   "'ess_kernels_cpu_avx2': [1/2] c++ -O3 ...); using the Python kernels (to see why: "
                   "python -m ess.kernels build)"]
    with kernels.backend("cpp"):
        assert kernels.policy._choose(torch.zeros(2, 8)) == "eager"


def test_ess_cpu_kernels_0_turns_the_module_off(fresh, monkeypatch, capsys):
    monkeypatch.setenv("ESS_CPU_KERNELS", "0")
    monkeypatch.setattr(cpu, "build", lambda verbose=False: pytest.fail("built although turned off"))
    assert cpu.load() is None
    assert not cpu.enabled()
    assert capsys.readouterr().err == ""


def test_a_cached_module_loads_silently(fresh, capsys):
    require_cpp()
    capsys.readouterr()
    cpu._state["tried"] = False
    assert cpu.is_built()
    module = cpu.load()
    assert all(hasattr(module, name) for name in cpu.FUNCTIONS)
    assert capsys.readouterr().err == ""


def test_the_built_module_computes_the_ops_in_kernel_ops_order():
    require_cpp()
    module = cpu.load()
    assert tuple(module.KERNEL_OPS) == kernels.KERNEL_OPS
    assert all(hasattr(module, name) for name in cpu.FUNCTIONS)


def test_a_module_with_another_op_order_is_refused_in_one_line(fresh, monkeypatch, capsys):
    class Permuted:
        KERNEL_OPS = ("relu", "tanh", "sigmoid", "identity")

    for name in cpu.FUNCTIONS:
        setattr(Permuted, name, None)
    monkeypatch.setattr(cpu, "is_built", lambda: True)
    monkeypatch.setattr("torch.utils.cpp_extension.load", lambda **kw: Permuted)
    assert cpu.load() is None
    (line,) = capsys.readouterr().err.splitlines()
    assert "ess_cpu.cpp computes the ops ('relu', 'tanh', 'sigmoid', 'identity')" in line
    assert line.endswith("using the Python kernels (to see why: python -m ess.kernels build)")


def test_the_module_is_cached_per_cpu_capability():
    capability = torch.backends.cpu.get_cpu_capability().lower()
    assert cpu.module_name().endswith(capability)
    assert cpu.build_directory().name == f"{cpu.module_name()}-{cpu.source_digest()}"
    assert cpu.library_path().parent == cpu.build_directory()
    assert cpu.SOURCE.is_file() and cpu.SOURCE.suffix == ".cpp"


def test_the_build_directory_follows_the_source_content_not_its_path(tmp_path, monkeypatch):
    here = cpu.build_directory()
    copy = tmp_path / "checkout" / "ess_cpu.cpp"             # another checkout of the same source
    copy.parent.mkdir()
    copy.write_bytes(cpu.SOURCE.read_bytes())
    monkeypatch.setattr(cpu, "SOURCE", copy)
    assert cpu.build_directory() == here
    copy.write_bytes(cpu.SOURCE.read_bytes() + b"\n// edited\n")
    cpu._digest.cache_clear()
    assert cpu.build_directory() != here and cpu.build_directory().parent == here.parent
    cpu._digest.cache_clear()


_HOLDER = """
import fcntl, os, sys, time
from pathlib import Path
d = Path(sys.argv[1])
handle = open(d / "ess-build.flock", "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
(d / "lock").touch()                 # torch's lock file, as load() creates it while building
(d / "ready").touch()
if sys.argv[2] == "die":
    os.kill(os.getpid(), 9)          # killed mid-build: torch's lock file stays behind
time.sleep(1.5)
(d / "lock").unlink()                # a build that finishes removes it
(d / "done").touch()
"""


def _holder(tmp_path, how):
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), how])
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "ready").exists()
    return proc


@pytest.mark.skipif(cpu.fcntl is None, reason="flock is POSIX")
def test_a_build_killed_midway_does_not_block_the_next_one(tmp_path, capsys):
    proc = _holder(tmp_path, "die")
    assert proc.wait(timeout=60) == -9 and (tmp_path / "lock").exists()
    with cpu.build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
    assert capsys.readouterr().err.splitlines() == [
        f"ess.kernels: removed {tmp_path / 'lock'}, left by a build that was interrupted"]


@pytest.mark.skipif(cpu.fcntl is None, reason="flock is POSIX")
def test_a_live_build_is_waited_for_not_broken_into(tmp_path, capsys):
    proc = _holder(tmp_path, "live")
    with cpu.build_lock(tmp_path):
        assert (tmp_path / "done").exists()                 # entered only once the other build was done
        assert not (tmp_path / "lock").exists()
    proc.wait(timeout=60)
    assert capsys.readouterr().err.splitlines() == [
        f"ess.kernels: waiting for another process that holds the C++ CPU kernels' build lock in {tmp_path} "
        "(it builds or loads them) ..."]


def test_a_stale_torch_lock_in_the_cache_does_not_hang_the_next_process():
    """The CI hang of session 5: a process killed while building left torch's lock file in the cache."""
    import subprocess
    import sys

    require_cpp()
    stale = cpu.build_directory() / "lock"
    stale.touch()
    try:
        done = subprocess.run([sys.executable, "-c", "from ess.kernels import cpu; assert cpu.load() is not None"],
                              capture_output=True, text=True, timeout=300)
    finally:
        stale.unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"removed {stale}, left by a build that was interrupted" in done.stderr


# Moved from tests/test_cpu_kernels.py


@pytest.mark.parametrize("mode", ["intra", "inter", "joint"])
def test_cpp_search_model_equals_reference(mode):
    """A whole BPTT segment of the search model, C++ steps vs the edge-by-edge reference, float32."""
    require_cpp()
    torch.manual_seed(13)
    kw = dict(mode=mode, emsize=16, nhid=16, steps=3, n_inter=2, m=2, dropoute=0.0, inter_norm="none")
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
    assert max_diff(l_c, l_r) <= TOL
    for a, b in zip(g_c, g_r):
        assert max_diff(a, b) <= TOL
    for a, b in zip(b_c, b_r):
        assert max_diff(a, b) <= TOL
