"""Which implementation runs a fused step: the backend setting, its size thresholds, the grad-mode flag.

The decision table itself is in the docstring of :mod:`ess.kernels`; :func:`select` is its code, and
``python -m ess.kernels info`` prints it for this machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ess.kernels import cpu

BACKENDS: tuple[str, ...] = ("auto", "cpp", "compile", "eager", "autograd")
COMPILE_MIN_ELEMENTS = 16_384  # batch * nhid from which compiled kernels pay on CPU (64 x 256)
CPP_MIN_ELEMENTS = 2_048  # batch * nhid from which the C++ steps are used (their one-off build pays)

_state: dict[str, Any] = {"backend": os.environ.get("ESS_KERNELS", "auto"), "compile_broken": False,
                          "allocator_tuned": False}
if _state["backend"] not in BACKENDS:
    raise ValueError(f"ESS_KERNELS={_state['backend']!r}: expected one of {', '.join(BACKENDS)}")


def get_backend() -> str:
    return _state["backend"]


def set_backend(name: str) -> None:
    """Select the kernel backend for every cell (see the decision table of :mod:`ess.kernels`)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r} (known: {', '.join(BACKENDS)})")
    _state["backend"] = name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Context manager: run the block with kernel backend ``name``."""
    saved = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(saved)


def fused_enabled() -> bool:
    """Whether cells use the fused steps (every backend but ``autograd``)."""
    return _state["backend"] != "autograd"


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of handing it back to the kernel (glibc ``M_TRIM_THRESHOLD``).

    A training step allocates and frees the same few hundred MB every iteration; with glibc's defaults the
    top of the heap is returned to the kernel after each pass and faulted in again, page by page, by the
    next (~0.5 GB of minor faults per search iteration at batch 64, 10-20% of its time). Done once, on
    the first fused CPU step; ``ESS_MALLOC_TRIM=0`` leaves the allocator alone. Returns whether it is set.
    """
    if _state["allocator_tuned"] is not False:
        return bool(_state["allocator_tuned"])
    _state["allocator_tuned"] = None
    if os.environ.get("ESS_MALLOC_TRIM", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # M_TRIM_THRESHOLD: never trim; M_MMAP_THRESHOLD: heap (reused) up to glibc's maximum, 32 MB (setting
        # either turns off glibc's dynamic threshold, which would leave it at 128 KB: every buffer mmapped)
        _state["allocator_tuned"] = bool(libc.mallopt(-1, 2**31 - 1)) and bool(libc.mallopt(-3, 32 << 20))
    except (OSError, AttributeError):
        return False
    return bool(_state["allocator_tuned"])


def select(name: str, device_type: str, dtype: torch.dtype, elements: int, cpp_ready: Callable[[], bool],
           compile_ok: bool) -> str:
    """How a fused step of ``elements = batch * nhid`` runs under backend ``name``: ``cpp``, ``compile`` or
    ``eager``. ``cpp_ready()`` (asked only where the C++ step applies) says whether the C++ module loads;
    ``compile_ok`` is false once ``torch.compile`` has failed in this process. The ``autograd`` backend runs
    no fused step (a Function applied directly under it runs eager)."""
    if name in ("auto", "cpp") and device_type == "cpu" and dtype == torch.float32 and (
            name == "cpp" or elements >= CPP_MIN_ELEMENTS) and cpp_ready():
        return "cpp"
    return "compile" if _compile_wanted(name, elements, compile_ok) else "eager"


def _compile_wanted(name: str, elements: int, compile_ok: bool) -> bool:
    if name == "compile":
        return compile_ok
    return name in ("auto", "cpp") and compile_ok and elements >= COMPILE_MIN_ELEMENTS


def _choose(h: Tensor) -> str:
    """How a fused step on state ``h`` ``[B, d]`` runs here and now (:func:`select`, building the C++ module
    on the first step it applies to)."""
    if h.device.type == "cpu" and _state["allocator_tuned"] is False:
        tune_cpu_allocator()
    return select(_state["backend"], h.device.type, h.dtype, h.size(0) * h.size(-1),
                  lambda: cpu.load() is not None, not _state["compile_broken"])


def _wants_compile(batch: int, width: int, device: torch.device | None = None) -> bool:
    if _state["allocator_tuned"] is False and (device is None or device.type == "cpu"):
        tune_cpu_allocator()
    return _compile_wanted(_state["backend"], batch * width, not _state["compile_broken"])


class Kernel:
    """A pure tensor function run eagerly or, on request, through ``torch.compile`` (compiled once, lazily).

    A compile failure (no C++ compiler, an unsupported platform) is reported once and turns compilation
    off for the process: the eager function computes the same thing.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.compiled: Callable[..., Any] | None = None

    def __call__(self, use_compile: bool | str, *args: Any) -> Any:
        if use_compile is True or use_compile == "compile":
            use_compile = not _state["compile_broken"]
        else:
            use_compile = False
        if use_compile:
            if self.compiled is None:
                _raise_recompile_limit()
                self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
            try:
                # the thread count is part of the generated code but not of inductor's cache key: make it so
                with torch._inductor.config.patch({"cpp.threads": torch.get_num_threads()}):
                    return self.compiled(*args)
            except Exception as err:  # noqa: BLE001 - a compiler failure falls back to eager, once and for all
                result = self.fn(*args)  # an error of the call itself raises here, and compilation stays on
                _state["compile_broken"] = True
                warnings.warn(f"ess.kernels: torch.compile failed ({type(err).__name__}: {str(err)[:200]}); "
                              "using eager kernels", RuntimeWarning, stacklevel=2)
                return result
        return self.fn(*args)


def _raise_recompile_limit() -> None:
    # One compiled graph per (structure, dtype, mode) variant of a kernel: tests and mixed workloads need
    # more than dynamo's default of 8 before it gives up and runs eagerly.
    import torch._dynamo.config as dynamo_config

    if getattr(dynamo_config, "recompile_limit", 64) < 64:
        dynamo_config.recompile_limit = 64


# --------------------------------------------------------------------------------------------------
# Which gradients a step is asked for


_grad_mode = threading.local()


def apply_step(fn: type[torch.autograd.Function], *args: Any) -> Any:
    """``fn.apply(*args)``, telling its forward whether grad mode is on (see :meth:`Needs.of`).

    The flag holds for this call only: a direct ``fn.apply`` afterwards sees the default (keep what the
    inputs' ``requires_grad`` asks for)."""
    _grad_mode.enabled = torch.is_grad_enabled()
    try:
        return fn.apply(*args)
    finally:
        _grad_mode.enabled = True


class Needs:
    """``ctx.needs_input_grad`` by argument name: ``need.theta``, ``need.W0h``; a ``*`` argument gives a tuple.

    ``signature`` names a Function's ``apply`` arguments in order, e.g. ``"bn spec xp h mask W0h theta *Ws"``.
    In a backward, ``Needs(SIGNATURE, ctx.needs_input_grad)``; in a forward, :meth:`of`.
    """

    def __init__(self, signature: str, flags: Sequence[bool]):
        self._names = signature.split()
        self._flags = tuple(bool(f) for f in flags)
        for i, name in enumerate(self._names):
            if hasattr(Needs, name.lstrip("*")):
                raise ValueError(f"argument name {name!r} hides Needs.{name.lstrip('*')}")
            if name.startswith("*"):
                setattr(self, name[1:], self._flags[i:])
            else:
                setattr(self, name, self._flags[i])

    @classmethod
    def of(cls, ctx: Any, signature: str) -> Needs:
        """The flags in a forward: all ``False`` when applied by :func:`apply_step` under ``torch.no_grad``.

        A Function's ``needs_input_grad`` follows the inputs' ``requires_grad`` even in no-grad mode, where
        no backward can come: the forward would keep local derivatives for nothing.
        """
        if getattr(_grad_mode, "enabled", True):
            return cls(signature, ctx.needs_input_grad)
        return cls(signature, (False,) * len(ctx.needs_input_grad))

    def any(self) -> bool:
        """Whether any input needs a gradient."""
        return any(self._flags)

    def only(self, **grads: Any) -> tuple[Tensor | None, ...]:
        """A backward's return value: each named gradient where its input needs one, ``None`` elsewhere."""
        out: list[Tensor | None] = []
        for i, name in enumerate(self._names):
            if name.startswith("*"):
                given = list(grads.get(name[1:]) or [])
                out += [given[k] if need and k < len(given) else None for k, need in enumerate(self._flags[i:])]
            else:
                out.append(grads.get(name) if self._flags[i] else None)
        return tuple(out)

    def __repr__(self) -> str:
        pairs = [f"{name}={getattr(self, name.lstrip('*'))}" for name in self._names]
        return f"Needs({', '.join(pairs)})"
