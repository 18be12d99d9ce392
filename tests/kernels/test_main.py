"""``python -m ess.kernels``: ``build`` on purpose, ``info`` on what runs here."""

from __future__ import annotations

import pytest
import torch

from ess.kernels import cpu, policy
from ess.kernels.__main__ import main

from kernel_checks import require_cpp


def _rows(out: str) -> dict[str, list[str]]:
    """The table's rows by backend."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells[0] in policy.BACKENDS or cells[0] == "backend":
            rows[cells[0]] = cells[1:]
    return rows


def test_info_prints_the_decision_table_of_this_machine(monkeypatch, capsys):
    monkeypatch.delenv("ESS_CPU_KERNELS", raising=False)
    monkeypatch.setenv("ESS_FAST_TANH", "1")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["backend"][:3] == ["CPU f32 <2,048", "CPU f32 2,048+", "CPU f32 16,384+"]
    assert rows["auto"] == ["eager", "cpp", "cpp", "eager", "compile", "eager", "compile"]
    assert rows["cpp"] == ["cpp", "cpp", "cpp", "eager", "compile", "eager", "compile"]
    assert set(rows["compile"]) == {"compile"} and set(rows["eager"]) == {"eager"}
    assert set(rows["autograd"]) == {"autograd"}
    assert "CPP_MIN_ELEMENTS = 2,048, COMPILE_MIN_ELEMENTS = 16,384, CPP_MAX_INTER_NODES = 16" in out
    for name in ("ESS_KERNELS=(unset)", "ESS_CPU_KERNELS=(unset)", "ESS_FAST_TANH=1", "ESS_MALLOC_TRIM"):
        assert name in out
    assert f"CPU capability {torch.backends.cpu.get_cpu_capability()}" in out
    assert "C++ CPU module: " + ("built, cached at" if cpu.is_built() else "not built yet") in out


def test_info_with_the_cpp_module_turned_off(monkeypatch, capsys):
    monkeypatch.setenv("ESS_CPU_KERNELS", "0")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert _rows(out)["cpp"] == ["eager", "eager", "compile", "eager", "compile", "eager", "compile"]
    assert "C++ CPU module: off (ESS_CPU_KERNELS=0)" in out


def test_build_says_where_and_how_long(capsys):
    require_cpp()
    capsys.readouterr()
    assert main(["build"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert str(cpu.build_directory()) in out[0] and out[0].endswith("up to date ...")
    assert out[-1].startswith(f"ess.kernels: {cpu.library_path()} ready in ")


def test_a_failed_build_shows_the_compiler_output_then_one_line(monkeypatch, capsys):
    def broken(verbose=False):
        raise RuntimeError("Error building extension 'ess_kernels_cpu_avx2': [1/2] c++ ...\nmain.cpp:1: error: boom")

    monkeypatch.setattr(cpu, "build", broken)
    assert main(["build"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "main.cpp:1: error: boom" in err
    assert err[-1] == ("ess.kernels: the C++ CPU kernels could not be built (RuntimeError, output above); the cells "
                       "will use the Python kernels")


def test_a_command_is_required():
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
