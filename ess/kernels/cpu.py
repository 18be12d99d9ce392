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
:func:`build_directory`, one module per CPU capability (AVX512, AVX2, ...) and source content (so checkouts
of the same source share one build and different ones never rebuild each other's), either on purpose
(``python -m ess.kernels build``) or by the first step that uses it, which prints one line to stderr
before the build (about a minute) and one after. It is not built at ``pip install`` time: a build
backend compiling against torch would run in pip's isolated build environment, where pip installs the
default torch wheel (several GB of CUDA libraries) whatever torch the target environment has, and the
module would be compiled for the build machine's CPU rather than the one it runs on.

Builders of one directory take turns under :func:`build_lock`, an ``flock`` the kernel drops when its holder
dies: torch's own lock file, left behind by a build that was killed (a Ctrl+C, a trial or CI job cut
short), would otherwise make every later build wait for it forever.

If it cannot be built, :func:`load` says so in one line and returns ``None``: the cells then use the Python
kernels (compiled by ``torch.compile`` where they pay). ``ESS_CPU_KERNELS=0`` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ess.extras import require
from ess.kernels.activations import KERNEL_OPS

SOURCE = Path(__file__).resolve().parent / "csrc" / "ess_cpu.cpp"
FUNCTIONS = ("intra_fwd", "intra_bwd", "darts_fwd", "darts_bwd", "inter_fwd", "inter_bwd")

try:
    import fcntl
except ImportError:  # not POSIX: torch's lock file alone
    fcntl = None

_state: dict[str, Any] = {"module": None, "tried": False}
_lock = threading.Lock()


def enabled() -> bool:
    """Whether the cells may use the C++ kernels (``ESS_CPU_KERNELS`` is not ``0``)."""
    return os.environ.get("ESS_CPU_KERNELS", "1") != "0"


def module_name() -> str:
    """The extension's name: one per CPU capability, since the flags (and the code) differ."""
    return f"ess_kernels_cpu_{torch.backends.cpu.get_cpu_capability().lower()}"


@functools.cache
def _digest(source: Path, flags: tuple[str, ...]) -> str:
    h = hashlib.sha256(source.read_bytes())
    h.update("\0".join((torch.__version__, *flags)).encode())
    return h.hexdigest()[:12]


def source_digest() -> str:
    """12 hex digits of the source's content, the compiler flags and torch's version: what a build depends on."""
    return _digest(SOURCE, tuple(_flags()))


def build_directory() -> Path:
    """Where the module is built and cached: ``$TORCH_EXTENSIONS_DIR/<name>-<digest>``, else under torch's default
    root (``~/.cache/torch_extensions/py<version>_<cpu|cuXY>/``); see :func:`source_digest`."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch.utils.cpp_extension import get_default_build_root

        tag = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        root = os.path.join(get_default_build_root(), f"py{sys.version_info.major}{sys.version_info.minor}_{tag}")
    return Path(root) / f"{module_name()}-{source_digest()}"


def library_path() -> Path:
    """The built module's shared library."""
    return build_directory() / f"{module_name()}.so"


def is_built() -> bool:
    """Whether a module built from the current source is cached (loading it then takes a fraction of a second)."""
    return library_path().is_file()


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

    if not is_built():
        require("cpp", "building the C++ CPU steps")
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    with build_lock(directory):
        source, code = directory / SOURCE.name, SOURCE.read_bytes()   # built from a copy: one path for all checkouts
        if not source.is_file() or source.read_bytes() != code:
            partial = source.with_name(f".{source.name}.{os.getpid()}")
            partial.write_bytes(code)
            partial.replace(source)
        module = load_extension(name=module_name(), sources=[str(source)], extra_cflags=_flags(), extra_ldflags=[],
                                build_directory=str(directory), verbose=verbose)
    missing = [name for name in FUNCTIONS if not hasattr(module, name)]
    if missing:
        raise RuntimeError(f"{library_path()} lacks {', '.join(missing)}")
    if tuple(getattr(module, "KERNEL_OPS", ())) != KERNEL_OPS:
        raise RuntimeError(f"{SOURCE.name} computes the ops {tuple(getattr(module, 'KERNEL_OPS', ()))}, "
                           f"ess.kernels expects {KERNEL_OPS}")
    return module


@contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s build lock, waiting (said once) for a live builder; then clear the lock file torch's
    ``load`` leaves when its process dies mid-build, which is stale, since every builder holds this lock."""
    if fcntl is None:
        yield
        return
    with open(directory / "ess-build.flock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process that holds the C++ CPU kernels' build lock in {directory} (it builds "
                 "or loads them) ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        stale = directory / "lock"
        if stale.exists():
            stale.unlink(missing_ok=True)
            _say(f"removed {stale}, left by a build that was interrupted")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
