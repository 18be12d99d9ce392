"""The loader of the C++ CPU kernels (``csrc/ess_cpu.cpp``): built on purpose or on first use, cached per CPU.

``csrc/ess_cpu.cpp`` writes out in C++, for float32 on CPU, the search cell's step
(:func:`ess.kernels.intra.intra_search_forward` / ``_backward``), the discrete DARTS cell's step
(:func:`ess.kernels.darts.darts_forward` / ``_backward``) and the inter search DAG
(:func:`ess.kernels.inter.inter_search_forward` / ``_backward``): the matmuls go to the same BLAS
(``at::mm``, ``addmm_`` accumulating in place), everything between two matmuls is one pass over the rows
(AVX-512/AVX2 vectors of ``at::vec::Vectorized<float>``, threads of ``at::parallel_for``), and the whole
step is one call from Python. Same equations, same saved tensors, same outputs as the Python kernels
(float32 rounding apart; ``tests/kernels`` holds them together).

It is compiled with ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja are needed) into
:func:`build_directory`, one module per CPU capability (AVX512, AVX2, ...), either on purpose
(``python -m ess.kernels build``) or by the first step that uses it, which prints one line to stderr
before the build (about a minute) and one after. It is not built at ``pip install`` time: a build
backend compiling against torch would run in pip's isolated build environment, where pip installs the
default torch wheel (several GB of CUDA libraries) whatever torch the target environment has, and the
module would be compiled for the build machine's CPU rather than the one it runs on.

If it cannot be built, :func:`load` says so in one line and returns ``None``: the cells then use the Python
kernels (compiled by ``torch.compile`` where they pay). ``ESS_CPU_KERNELS=0`` turns it off.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ess.kernels.activations import KERNEL_OPS

SOURCE = Path(__file__).resolve().parent / "csrc" / "ess_cpu.cpp"
FUNCTIONS = ("intra_fwd", "intra_bwd", "darts_fwd", "darts_bwd", "inter_fwd", "inter_bwd")

_state: dict[str, Any] = {"module": None, "tried": False}
_lock = threading.Lock()


def enabled() -> bool:
    """Whether the cells may use the C++ kernels (``ESS_CPU_KERNELS`` is not ``0``)."""
    return os.environ.get("ESS_CPU_KERNELS", "1") != "0"


def module_name() -> str:
    """The extension's name: one per CPU capability, since the flags (and the code) differ."""
    return f"ess_kernels_cpu_{torch.backends.cpu.get_cpu_capability().lower()}"


def build_directory() -> Path:
    """Where the module is built and cached: ``$TORCH_EXTENSIONS_DIR/<name>``, else torch's default root
    (``~/.cache/torch_extensions/py<version>_<cpu|cuXY>/<name>``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch.utils.cpp_extension import get_default_build_root

        tag = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        root = os.path.join(get_default_build_root(), f"py{sys.version_info.major}{sys.version_info.minor}_{tag}")
    return Path(root) / module_name()


def library_path() -> Path:
    """The built module's shared library."""
    return build_directory() / f"{module_name()}.so"


def is_built() -> bool:
    """Whether a module built from the current source is cached (loading it then takes a fraction of a second)."""
    library = library_path()
    return library.is_file() and library.stat().st_mtime >= SOURCE.stat().st_mtime


def _flags() -> list[str]:
    cap = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3"]
    if cap == "AVX512":
        flags += ["-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl",
                  "-mavx512bw", "-mfma", "-mavx2"]
    elif cap == "AVX2":
        flags += ["-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2", "-mavx2", "-mfma"]
    return flags


def build(verbose: bool = False) -> Any:
    """Compile the module where it is missing or stale, then import it; raises what the build raises."""
    from torch.utils.cpp_extension import load as load_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    module = load_extension(name=module_name(), sources=[str(SOURCE)], extra_cflags=_flags(), extra_ldflags=[],
                            build_directory=str(directory), verbose=verbose)
    missing = [name for name in FUNCTIONS if not hasattr(module, name)]
    if missing:
        raise RuntimeError(f"{library_path()} lacks {', '.join(missing)}")
    if tuple(getattr(module, "KERNEL_OPS", ())) != KERNEL_OPS:
        raise RuntimeError(f"{SOURCE.name} computes the ops {tuple(getattr(module, 'KERNEL_OPS', ()))}, "
                           f"ess.kernels expects {KERNEL_OPS}")
    return module


def load() -> Any | None:
    """The compiled module, building it on first call; ``None`` when it is off or cannot be built (said once)."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        _state["tried"] = True
        if not enabled():
            return None
        announce = not is_built()
        if announce:
            _say(f"building the C++ CPU kernels (first use; cached in {build_directory()}) ...")
        start = time.perf_counter()
        try:
            _state["module"] = build()
        except Exception as err:  # noqa: BLE001 - no compiler, no ninja, a platform without these ISAs
            _say(f"the C++ CPU kernels could not be built ({failure(err)}); using the Python kernels "
                 "(to see why: python -m ess.kernels build)")
            return None
        if announce:
            _say(f"C++ CPU kernels built in {time.perf_counter() - start:.0f} s")
    return _state["module"]


def failure(err: BaseException) -> str:
    """``err`` in one line: its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def _say(message: str) -> None:
    print(f"ess.kernels: {message}", file=sys.stderr, flush=True)
