"""Fused forward/backward kernels of the recurrent cells: the fast path's arithmetic, written out by hand.

One time step of the DARTS search cell (:class:`ess.supernet.MixedIntraCell`) and of the discrete DARTS
cell (:class:`ess.models.cells.DARTSCell`) is one :class:`torch.autograd.Function` here: its forward computes
the step with no autograd graph (one matmul per node over all its predecessors stacked, all ops of a
node's edges in one elementwise pass, batch norm fused in), and its backward is written by hand:

* only the gradients autograd asks for are computed (``ctx.needs_input_grad``): the architecture step of
  the search (weights frozen) does no weight-gradient matmul, the weight step no architecture reduction;
* the elementwise work between two matmuls is one pure function per step direction, run eagerly or
  compiled by ``torch.compile`` (inductor), which fuses it into a few vectorised loops (or, on CPU in
  float32, one C++ pass: :mod:`ess.cpu_kernels`);
* under ``torch.no_grad`` (evaluation) nothing is kept for a backward: steps are applied through
  :func:`apply_step`, and :func:`linear_cross_entropy` computes the loss alone;
* the DARTS step's weight gradients are multiplied out once per sequence (:class:`SequenceGrads`): one
  product of inner dimension ``T B`` per weight instead of ``T`` thin ones added up by autograd.

The cells keep their plain autograd formulation (``step_autograd``) and :mod:`ess.supernet.reference`
keeps the edge-by-edge oracle; the tests hold all three to the same outputs and gradients.

Backends (:func:`set_backend`, :func:`backend`, or ``$ESS_KERNELS``):

* ``auto`` (default): fused steps; kernels compiled when a step is big enough to gain
  (``batch * nhid >= COMPILE_MIN_ELEMENTS``) and ``torch.compile`` works here, eager otherwise;
* ``compile`` / ``eager``: fused steps, always compiled / never compiled;
* ``autograd``: no fused step; the cells' plain autograd code (needed for double backward,
  ``create_graph=True`` through the model: the fused backward is not itself differentiable).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

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
    """Select the kernel backend for every cell (see the module docstring)."""
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


def _choose(h: Tensor) -> str:
    """How a fused step runs: ``cpp`` (:mod:`ess.cpu_kernels`), ``compile`` or ``eager`` (Python kernels)."""
    name, device = _state["backend"], h.device
    if device.type == "cpu" and _state["allocator_tuned"] is False:
        tune_cpu_allocator()
    batch, width = h.size(0), h.size(-1)
    if name in ("auto", "cpp") and device.type == "cpu" and h.dtype == torch.float32 and (
            name == "cpp" or batch * width >= CPP_MIN_ELEMENTS):
        from ess import cpu_kernels

        if cpu_kernels.load() is not None:
            return "cpp"
    return "compile" if _wants_compile(batch, width, device) else "eager"


def _wants_compile(batch: int, width: int, device: torch.device | None = None) -> bool:
    if _state["allocator_tuned"] is False and (device is None or device.type == "cpu"):
        tune_cpu_allocator()
    name = _state["backend"]
    if name == "compile":
        return not _state["compile_broken"]
    return name in ("auto", "cpp") and not _state["compile_broken"] and batch * width >= COMPILE_MIN_ELEMENTS


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
# Batch norm (affine-free, as DARTS's search cell), forward and backward


_grad_mode = threading.local()


def apply_step(fn: type[torch.autograd.Function], *args: Any) -> Any:
    """``fn.apply(*args)``, telling its forward whether grad mode is on (see :func:`_needed`).

    The flag holds for this call only: a direct ``fn.apply`` afterwards sees the default (keep what the
    inputs' ``requires_grad`` asks for)."""
    _grad_mode.enabled = torch.is_grad_enabled()
    try:
        return fn.apply(*args)
    finally:
        _grad_mode.enabled = True


def _needed(ctx: Any) -> tuple[bool, ...]:
    """``ctx.needs_input_grad``, all ``False`` when applied under ``torch.no_grad`` (evaluation).

    A Function's ``needs_input_grad`` follows the inputs' ``requires_grad`` even in no-grad mode, where no
    backward can come: the forward would keep local derivatives for nothing.
    """
    if getattr(_grad_mode, "enabled", True):
        return ctx.needs_input_grad
    return (False,) * len(ctx.needs_input_grad)


@dataclass(frozen=True)
class NormSpec:
    """How node states are normalised: ``none``, ``batch`` (batch statistics) or ``running`` (eval)."""

    mode: str = "none"
    eps: float = 1e-5
    update: bool = False  # training: update the running statistics
    momentum: float = 0.1


def norm_spec(bn: nn.Module) -> NormSpec | None:
    """The :class:`NormSpec` of ``bn`` (a ``BatchNorm1d(affine=False)`` or ``Identity``); ``None`` if unsupported."""
    if isinstance(bn, nn.Identity):
        return NormSpec()
    if not isinstance(bn, nn.BatchNorm1d) or bn.affine:
        return None
    if bn.training or not bn.track_running_stats:
        if bn.training and bn.track_running_stats and bn.momentum is None:
            return None  # cumulative average: left to nn.BatchNorm1d
        return NormSpec("batch", bn.eps, update=bn.training and bn.track_running_stats,
                        momentum=float(bn.momentum or 0.0))
    return NormSpec("running", bn.eps)


def running_params(bn: nn.Module, spec: NormSpec) -> tuple[Tensor | None, Tensor | None]:
    """``(running_mean, 1 / sqrt(running_var + eps))`` for the ``running`` mode, else ``(None, None)``."""
    if spec.mode != "running":
        return None, None
    return bn.running_mean, torch.rsqrt(bn.running_var + spec.eps)


@torch.no_grad()
def update_running_stats(bn: nn.Module, spec: NormSpec, means: Tensor, variances: Tensor, batch: int) -> None:
    """Apply ``len(means)`` successive momentum updates (node order) to ``bn``'s running statistics at once.

    ``r <- (1 - m) r + m x_k`` for ``k = 0..N-1`` is ``(1 - m)^N r + sum_k m (1 - m)^(N-1-k) x_k``; the
    variance enters unbiased (``* B / (B - 1)``), as ``nn.BatchNorm1d`` does.
    """
    if not spec.update:
        return
    N, m = means.size(0), spec.momentum
    coef = torch.tensor([m * (1 - m) ** (N - 1 - k) for k in range(N)], dtype=means.dtype, device=means.device)
    bn.running_mean.mul_((1 - m) ** N).add_(coef @ means)
    unbiased = variances * (batch / max(batch - 1, 1))
    bn.running_var.mul_((1 - m) ** N).add_(coef @ unbiased)
    bn.num_batches_tracked.add_(N)


def _norm_fwd(u: Tensor, mode: str, eps: float, rmean: Tensor | None, rrstd: Tensor | None):
    """``(s, mean, var, rstd)``: ``s`` normalised over the batch (dim 0); stats ``None`` when unused."""
    if mode == "batch":
        mean = u.mean(0)
        xc = u - mean
        var = (xc * xc).mean(0)
        rstd = torch.rsqrt(var + eps)
        return xc * rstd, mean, var, rstd
    if mode == "running":
        return (u - rmean) * rrstd, None, None, rrstd
    return u, None, None, None


def _norm_bwd(ds: Tensor, s: Tensor, rstd: Tensor | None, mode: str) -> Tensor:
    if mode == "batch":
        return rstd * (ds - ds.mean(0) - s * (ds * s).mean(0))
    if mode == "running":
        return ds * rstd
    return ds


# --------------------------------------------------------------------------------------------------
# The DARTS search cell (MixedIntraCell): one step, forward and backward


_FAST_TANH = os.environ.get("ESS_FAST_TANH", "1") == "1"
# Rational approximation of tanh on [-c, c] (Eigen's ``ptanh_float``): 3e-7 relative error at most, against
# 6e-8 for ``torch.tanh``, at a quarter of the cost of the vectorised ``tanh`` in a compiled kernel.
_TANH_CLAMP = 7.90531110763549805
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


def _tanh(x: Tensor) -> Tensor:
    """``tanh``; inside a compiled float32 kernel as a rational function (a few fused multiply-adds and a
    division; float64 keeps ``torch.tanh``: the approximation is a float32 one)."""
    if _FAST_TANH and x.dtype == torch.float32 and torch.compiler.is_compiling():
        x = x.clamp(-_TANH_CLAMP, _TANH_CLAMP)
        x2 = x * x
        p = x2 * _TANH_P[6] + _TANH_P[5]
        for a in _TANH_P[4::-1]:
            p = p * x2 + a
        q = x2 * _TANH_Q[3] + _TANH_Q[2]
        for b in _TANH_Q[1::-1]:
            q = q * x2 + b
        return x * p / q
    return torch.tanh(x)


def _sigmoid_tanh(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigmoid(x), tanh(x))``."""
    return torch.sigmoid(x), _tanh(x)


def _node0_fwd(CH0: Tensor, h: Tensor, d: int, factors: bool = False):
    """``u_0 = h + sigmoid(c_0) (tanh(h_0) - h)``; with ``factors`` also ``[3, B, d]``: the derivatives of
    ``u_0`` by ``c_0``, by ``h_0`` and by ``h`` (the backward is then three products)."""
    c = torch.sigmoid(CH0[:, :d])
    t = _tanh(CH0[:, d:])
    u = h + c * (t - h)
    if not factors:
        return u, None
    return u, torch.stack([c * (1 - c) * (t - h), c * (1 - t * t), 1 - c])


def _node0_bwd(du: Tensor, CH0: Tensor | None, h: Tensor, d: int, F0: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(dCH_0, dh)`` of :func:`_node0_fwd` (``dh`` the direct part, not through ``W_0``)."""
    if F0 is None:
        F0 = _node0_fwd(CH0, h, d, True)[1]
    return torch.cat([du * F0[0], du * F0[1]], -1), du * F0[2]


def _mixed_fwd(CH: Tensor, S: Tensor, theta: Tensor, d: int, factors: bool = False):
    """Node value before normalisation, summed over its ``i`` predecessors (dim 0).

    ``CH`` ``[i, B, 2d]`` = ``[c, h]`` of every predecessor, ``S`` ``[i, B, d]`` their states, ``theta``
    ``[i, 4]`` the weights of the non-zero ops (tanh, relu, sigmoid, identity):
    ``sum_j P_j s_j + c_j (mix_j - P_j s_j)``, ``mix = sum_k theta_k f_k(h)``, ``P = sum_k theta_k``.
    With ``factors`` also ``[3, i, B, d]``: the derivatives by ``c``, by ``h`` and by ``s_j`` (direct part).
    """
    C, H = CH[..., :d], CH[..., d:]
    th = theta[:, :, None, None]
    c = torch.sigmoid(C)
    g, t = _sigmoid_tanh(H)
    mix = th[:, 0] * t + th[:, 1] * torch.relu(H) + th[:, 2] * g + th[:, 3] * H
    P = th.sum(1)
    ps = P * S
    u = (ps + c * (mix - ps)).sum(0)
    if not factors:
        return u, None
    slope = th[:, 0] * (1 - t * t) + th[:, 1] * (H > 0).to(H.dtype) + th[:, 2] * g * (1 - g) + th[:, 3]
    return u, torch.stack([c * (1 - c) * (mix - ps), c * slope, P * (1 - c)])


def _mixed_theta_grad(du: Tensor, CH: Tensor, S: Tensor, d: int) -> Tensor:
    """``dtheta`` ``[i, 4]`` of :func:`_mixed_fwd`: ``sum_{B, d} du (c f_k(h) + (1 - c) s_j)``."""
    C, H = CH[..., :d], CH[..., d:]
    c = torch.sigmoid(C)
    g, t = _sigmoid_tanh(H)
    dmix = du * c
    base = (du * (1 - c) * S).sum((1, 2))
    return torch.stack([(dmix * t).sum((1, 2)), (dmix * torch.relu(H)).sum((1, 2)), (dmix * g).sum((1, 2)),
                        (dmix * H).sum((1, 2))], 1) + base[:, None]


def _offsets(n: int) -> list[int]:
    """Row of edge ``(i, 0)`` in the ``[n (n+1) / 2, .]`` edge tables (:func:`ess.space.derive.intra_offset`)."""
    return [i * (i - 1) // 2 for i in range(n + 2)]


def intra_search_forward(xp: Tensor, h: Tensor, mask: Tensor | None, W0h: Tensor, theta: Tensor,
                         Ws: Sequence[Tensor], mode: str, eps: float, rmean: Tensor | None,
                         rrstd: Tensor | None, factors: bool):
    """One step of the search cell. Returns ``(out, CH0, CHs, F, S, S_in, stats)``.

    ``S`` ``[n+1, B, d]`` node states, ``S_in`` the masked ones (the matmul inputs), ``CHs[i-1]``
    ``[i, B, 2d]`` node ``i``'s pre-activations, ``stats`` ``[3, n+1, d]`` (mean, var, rstd) in ``batch``
    mode. With ``factors``, ``F[i]`` holds node ``i``'s local derivatives (``[3, i, B, d]``; ``[3, B, d]`` for
    node 0) and the backward needs no ``CH`` (nor any transcendental): the weight step's way; without, the
    backward recomputes them from ``CH`` (the architecture step's way: it needs ``CH`` for ``dtheta``).
    """
    B, d = h.shape
    n = len(Ws)
    off = _offsets(n)
    h_in = h if mask is None else h * mask
    CH0 = torch.addmm(xp, h_in, W0h)
    S = h.new_empty(n + 1, B, d)
    S_in = S if mask is None else h.new_empty(n + 1, B, d)
    stats = h.new_empty(3, n + 1, d) if mode == "batch" else None
    CHs: list[Tensor] = []
    F: list[Tensor | None] = []
    for i in range(n + 1):
        if i == 0:
            u, f = _node0_fwd(CH0, h, d, factors)
        else:
            CH = (S_in[:i].reshape(i * B, d) @ Ws[i - 1]).view(i, B, 2 * d)
            CHs.append(CH)
            u, f = _mixed_fwd(CH, S[:i], theta[off[i]: off[i] + i], d, factors)
        F.append(f)
        s, mean, var, rstd = _norm_fwd(u, mode, eps, rmean, rrstd)
        S[i] = s
        if mask is not None:
            S_in[i] = s * mask
        if stats is not None:
            stats[0, i] = mean
            stats[1, i] = var
            stats[2, i] = rstd
    return S[1:].mean(0), CH0, CHs, F, S, S_in, stats


def intra_search_backward(dout: Tensor, h: Tensor, mask: Tensor | None, W0h: Tensor, theta: Tensor,
                          Ws: Sequence[Tensor], CH0: Tensor | None, CHs: Sequence[Tensor],
                          F: Sequence[Tensor | None], S: Tensor, S_in: Tensor, rstd: Tensor | None, mode: str,
                          need_w: bool, need_theta: bool):
    """Gradients of :func:`intra_search_forward`: ``(dxp, dh, dW0h, dtheta, dWs)`` (``None`` where not asked).

    ``F`` the forward's factors (or ``None``s: recomputed from ``CH0``/``CHs``, which ``dtheta`` needs).
    """
    n = len(Ws)
    _, B, d = S.shape
    off = _offsets(n)
    acc = torch.zeros_like(S)  # total gradient of every node state
    acc[1:] += (dout / n)[None]
    dthetas: list[Tensor | None] = [None] * n
    dWs: list[Tensor | None] = [None] * n
    for i in range(n, 0, -1):
        du = _norm_bwd(acc[i], S[i], rstd if rstd is None or mode == "running" else rstd[i], mode)
        f = F[i]
        th = theta[off[i]: off[i] + i]
        if f is None:
            f = _mixed_fwd(CHs[i - 1], S[:i], th, d, True)[1]
        dCH = torch.cat([du * f[0], du * f[1]], -1)
        dCH2 = dCH.view(i * B, 2 * d)
        G = (dCH2 @ Ws[i - 1].t()).view(i, B, d)
        acc[:i] += du * f[2] + (G if mask is None else G * mask)
        if need_theta:
            dthetas[i - 1] = _mixed_theta_grad(du, CHs[i - 1], S[:i], d)
        if need_w:
            dWs[i - 1] = S_in[:i].reshape(i * B, d).t() @ dCH2
    du0 = _norm_bwd(acc[0], S[0], rstd if rstd is None or mode == "running" else rstd[0], mode)
    dCH0, dh = _node0_bwd(du0, CH0, h, d, F[0])
    G0 = dCH0 @ W0h.t()  # (computed even where h needs no gradient: one compiled variant less)
    dh = dh + (G0 if mask is None else G0 * mask)
    dW0h = None
    if need_w:
        h_in = h if mask is None else h * mask
        dW0h = h_in.t() @ dCH0
    dtheta = torch.cat(dthetas) if need_theta else None  # type: ignore[arg-type]
    return dCH0, dh, dW0h, dtheta, dWs


_intra_search_fwd = Kernel(intra_search_forward)
_intra_search_bwd = Kernel(intra_search_backward)


class IntraSearchStep(torch.autograd.Function):
    """``h_t`` of the search cell from ``(x_proj_t, h^_{t-1})``; see :func:`intra_search_forward`.

    ``apply(bn, spec, x_proj, h, mask, W0h, theta, *Ws)``: ``bn`` the cell's norm module (its running
    statistics are updated in place in training), ``theta`` ``[n (n+1)/2, 4]`` the non-zero op weights of
    every edge. What the forward keeps depends on the gradients asked for: the pre-activations ``CH`` when
    ``theta`` needs one (the architecture step), else the local derivatives (the weight step); the masked
    states ``S_in`` only when the weights need gradients; nothing without gradients (evaluation).
    """

    @staticmethod
    def forward(ctx, bn: nn.Module, spec: NormSpec, xp: Tensor, h: Tensor, mask: Tensor | None, W0h: Tensor,
                theta: Tensor, *Ws: Tensor) -> Tensor:
        rmean, rrstd = running_params(bn, spec)
        impl = _choose(h)
        need = _needed(ctx)
        need_theta, grad = need[6], any(need)
        factors = grad and not need_theta
        keep_s_in = any(need[7:]) or need[5]
        if impl == "cpp":
            from ess import cpu_kernels

            out, CH0, CH, F0, F, S, S_in, stats = cpu_kernels.load().intra_fwd(
                xp.contiguous(), h.contiguous(), None if mask is None else mask.contiguous(), W0h, theta, list(Ws),
                _NORM_CODE[spec.mode], spec.eps, rmean, rrstd, factors)
            kept = [F0, F] if factors else [CH0, CH]
        else:
            out, CH0, CHs, Fl, S, S_in, stats = _intra_search_fwd(impl, xp, h, mask, W0h, theta, list(Ws),
                                                                  spec.mode, spec.eps, rmean, rrstd, factors)
            kept = list(Fl) if factors else [CH0, *CHs]
        if stats is not None:
            update_running_stats(bn, spec, stats[0], stats[1], h.size(0))
        rstd = stats[2] if stats is not None else rrstd
        ctx.spec, ctx.impl, ctx.n, ctx.factors = spec, impl, len(Ws), factors
        if grad:
            ctx.save_for_backward(h, mask, W0h, theta, S, S_in if keep_s_in else None, rstd, *Ws, *kept)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor):
        n = ctx.n
        h, mask, W0h, theta, S, S_in, rstd, *rest = ctx.saved_tensors
        Ws, kept = rest[:n], rest[n:]
        need = ctx.needs_input_grad
        need_w = any(need[7:]) or need[5]
        if ctx.impl == "cpp":
            from ess import cpu_kernels

            F0, F, CH0, CH = (*kept, None, None) if ctx.factors else (None, None, *kept)
            dxp, dh, dW0h, dtheta, *dWs = cpu_kernels.load().intra_bwd(
                dout.contiguous(), h, mask, W0h, theta, list(Ws), CH0, CH, F0, F, S, S_in, rstd,
                _NORM_CODE[ctx.spec.mode], need_w, need[6])
        else:
            F, CH0, CHs = (list(kept), None, []) if ctx.factors else ([None] * (n + 1), kept[0], list(kept[1:]))
            dxp, dh, dW0h, dtheta, dWs = _intra_search_bwd(
                ctx.impl, dout.contiguous(), h, mask, W0h, theta, list(Ws), CH0, CHs, F, S, S_in, rstd,
                ctx.spec.mode, need_w, need[6])
        return (None, None, dxp if need[2] else None, dh if need[3] else None, None,
                dW0h if need[5] else None, dtheta if need[6] else None,
                *[dW if nd else None for dW, nd in zip(dWs, need[7:])])


_NORM_CODE = {"none": 0, "batch": 1, "running": 2}


# --------------------------------------------------------------------------------------------------
# The discrete DARTS cell (DARTSCell): one step, forward and backward


_ACT_FWD: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": _tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda v: v}


def _act_grad(name: str, H: Tensor) -> tuple[Tensor, Tensor]:
    """``(f(H), f'(H))``."""
    if name == "tanh":
        t = _tanh(H)
        return t, 1 - t * t
    if name == "relu":
        return torch.relu(H), (H > 0).to(H.dtype)
    if name == "sigmoid":
        g = torch.sigmoid(H)
        return g, g * (1 - g)
    return H, torch.ones_like(H)


DARTS_GROUP_COLUMNS = 2_048  # widest concatenated weight of a DARTS node group (CPU, 64-256 rows: measured)


def darts_group_size(nhid: int) -> int:
    """How many nodes fed by one source share a matmul: their concatenated weight ``[nhid, 2 nhid k]`` stays
    within ``DARTS_GROUP_COLUMNS`` columns. Wider products with 64 rows ran slower than the separate ones on
    CPU when timed alone (850-d, 3 nodes: 90 vs 115 GFLOP/s); inside the cell the difference is within this
    machine's noise (``bench/retrain_variants.py``, BENCHMARKS.md); narrower groups save calls."""
    return max(1, DARTS_GROUP_COLUMNS // (2 * nhid))


@dataclass(frozen=True)
class DartsPlan:
    """Static structure of a discrete DARTS cell: node ``i``'s op and predecessor, grouped by source.

    ``groups[k] = (j, (i1, i2, ...))``: nodes fed by ``s_j``, whose ``W_i`` are concatenated so that
    ``s_j`` goes through all of them in one matmul (at most ``max_group`` nodes per group: a source feeding
    more has several groups); ``concat``: the nodes averaged into the output.
    """

    ops: tuple[str, ...]
    preds: tuple[int, ...]
    groups: tuple[tuple[int, tuple[int, ...]], ...]
    concat: tuple[int, ...]

    @classmethod
    def of(cls, genotype, max_group: int | None = None) -> DartsPlan:
        ops = tuple(e.op for e in genotype.recurrent)
        preds = tuple(e.pred for e in genotype.recurrent)
        groups = []
        for j in range(len(preds) + 1):
            fed = tuple(i + 1 for i, p in enumerate(preds) if p == j)
            size = max_group or len(fed) or 1
            groups += [(j, fed[c: c + size]) for c in range(0, len(fed), size)]
        return cls(ops, preds, tuple(groups), tuple(genotype.concat))

    def codes(self) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
        """The plan as integer lists for :mod:`ess.cpu_kernels`: ops (tanh 0, relu 1, sigmoid 2, identity 3),
        predecessors, each group's source, each node's group and position in it (index 0 unused), concat."""
        codes = self.__dict__.get("_codes")
        if codes is None:
            where_g, where_p = [0] * (len(self.ops) + 1), [0] * (len(self.ops) + 1)
            for k, (_, nodes) in enumerate(self.groups):
                for pos, i in enumerate(nodes):
                    where_g[i], where_p[i] = k, pos
            codes = ([("tanh", "relu", "sigmoid", "identity").index(o) for o in self.ops], list(self.preds),
                     [j for j, _ in self.groups], where_g, where_p, list(self.concat))
            object.__setattr__(self, "_codes", codes)
        return codes

    def group_weights(self, Ws: Sequence[Tensor]) -> list[Tensor]:
        """``W_g = [W_i1 | W_i2 | ...]`` per group (a view when the group has one node)."""
        return [Ws[nodes[0] - 1] if len(nodes) == 1 else torch.cat([Ws[i - 1] for i in nodes], 1)
                for _, nodes in self.groups]


def _groups_of(plan: DartsPlan) -> dict[int, list[int]]:
    """Source node -> the indices of the groups it feeds (groups are in source order)."""
    out: dict[int, list[int]] = {}
    for k, (j, _) in enumerate(plan.groups):
        out.setdefault(j, []).append(k)
    return out


def darts_forward(xp: Tensor, h: Tensor, mask: Tensor | None, W0h: Tensor, Wg: Sequence[Tensor], plan: DartsPlan):
    """One step of the discrete cell: ``(out, CH0, CHg, states, states_in)`` (``CHg[k]`` ``[B, |group| 2d]``)."""
    B, d = h.shape
    n = len(plan.ops)
    h_in = h if mask is None else h * mask
    CH0 = torch.addmm(xp, h_in, W0h)
    states: list[Tensor] = [_node0_fwd(CH0, h, d)[0]]
    states_in: list[Tensor] = []
    where: dict[int, tuple[int, int]] = {}  # node -> (group, position)
    CHg: list[Tensor] = []
    groups_of = _groups_of(plan)
    for j in range(n + 1):
        if j > 0:
            k, pos = where[j]
            CH = CHg[k][:, pos * 2 * d: (pos + 1) * 2 * d]
            c = torch.sigmoid(CH[:, :d])
            s_prev = states[plan.preds[j - 1]]
            states.append(s_prev + c * (_ACT_FWD[plan.ops[j - 1]](CH[:, d:]) - s_prev))
        for k in groups_of.get(j, ()):
            s_in = states[j] if mask is None else states[j] * mask
            states_in.append(s_in)
            CHg.append(s_in @ Wg[k])
            for pos, i in enumerate(plan.groups[k][1]):
                where[i] = (k, pos)
    out = states[plan.concat[0]]
    for i in plan.concat[1:]:
        out = out + states[i]
    return out / len(plan.concat), CH0, CHg, states, states_in


def darts_backward(dout: Tensor, h: Tensor, mask: Tensor | None, W0h: Tensor, Wg: Sequence[Tensor], CH0: Tensor,
                   CHg: Sequence[Tensor], states: Sequence[Tensor], states_in: Sequence[Tensor], plan: DartsPlan,
                   need_w: bool):
    """Gradients of :func:`darts_forward`: ``(dxp, dh, dW0h, dWg)``."""
    B, d = h.shape
    n = len(plan.ops)
    g = dout / len(plan.concat)
    ds: list[Tensor | None] = [None] * (n + 1)
    for i in plan.concat:
        ds[i] = g if ds[i] is None else ds[i] + g
    dCH: dict[int, Tensor] = {}
    dWg: list[Tensor | None] = [None] * len(plan.groups)
    groups_of = _groups_of(plan)
    where = {i: (k, pos) for k, (_, nodes) in enumerate(plan.groups) for pos, i in enumerate(nodes)}
    for j in range(n, -1, -1):
        for k in groups_of.get(j, ()):  # every consumer of s_j (all > j) is done: back through W_g
            nodes = plan.groups[k][1]
            dG = dCH[nodes[0]] if len(nodes) == 1 else torch.cat([dCH[i] for i in nodes], 1)
            G = dG @ Wg[k].t()
            G = G if mask is None else G * mask
            ds[j] = G if ds[j] is None else ds[j] + G
            if need_w:
                dWg[k] = states_in[k].t() @ dG
        if j == 0:
            break
        dsj = ds[j]
        if dsj is None:  # a node nothing reads (not in concat, no consumer)
            dsj = torch.zeros_like(h)
        k, pos = where[j]
        CH = CHg[k][:, pos * 2 * d: (pos + 1) * 2 * d]
        p = plan.preds[j - 1]
        c = torch.sigmoid(CH[:, :d])
        f, fprime = _act_grad(plan.ops[j - 1], CH[:, d:])
        dC = dsj * (f - states[p]) * c * (1 - c)
        dH = dsj * c * fprime
        dCH[j] = torch.cat([dC, dH], -1)
        direct = dsj * (1 - c)
        ds[p] = direct if ds[p] is None else ds[p] + direct
    ds0 = ds[0] if ds[0] is not None else torch.zeros_like(h)
    dCH0, dh = _node0_bwd(ds0, CH0, h, d, None)
    G0 = dCH0 @ W0h.t()
    dh = dh + (G0 if mask is None else G0 * mask)
    dW0h = None
    if need_w:
        h_in = h if mask is None else h * mask
        dW0h = h_in.t() @ dCH0
    return dCH0, dh, dW0h, dWg


_darts_fwd = Kernel(darts_forward)
_darts_bwd = Kernel(darts_backward)


class SequenceGrads:
    """The weight gradients of one sequence's steps, multiplied out once over all the steps' rows.

    Per step, ``dW = inputs^T dpre`` has inner dimension ``B`` (a thin product), and autograd then adds up
    ``T`` full-size ``dW``. Steps run under a cell's ``sequence()`` hand their ``(inputs, dpre)`` here
    instead, and step 0's backward (autograd runs it last: every later step reads ``h_0`` through the
    recurrence) returns ``sum_t inputs_t^T dpre_t`` as one product of inner dimension ``T B`` per weight.
    """

    def __init__(self) -> None:
        self._steps = 0
        self._parts: list[tuple[Sequence[Tensor], Sequence[Tensor]]] = []

    def register(self) -> int:
        """A new step's index in the sequence (0 for the first)."""
        self._steps += 1
        return self._steps - 1

    def add(self, index: int, inputs: Sequence[Tensor], dpre: Sequence[Tensor]) -> list[Tensor] | None:
        """Keep one step's factors; at step 0, return every weight's gradient summed over the kept steps."""
        self._parts.append((inputs, dpre))
        if index != 0:
            return None
        parts, self._parts = self._parts, []
        return [torch.cat([p[0][q] for p in parts]).t() @ torch.cat([p[1][q] for p in parts])
                for q in range(len(inputs))]


class DartsStep(torch.autograd.Function):
    """``h_t`` of a discrete DARTS cell; ``apply(plan, grads, x_proj, h, mask, W0h, *Wg)``.

    See :func:`darts_forward`. ``grads``: the sequence's :class:`SequenceGrads` (the C++ step then defers
    its weight gradients to it), or ``None`` (each step returns its own).
    """

    @staticmethod
    def forward(ctx, plan: DartsPlan, grads: SequenceGrads | None, xp: Tensor, h: Tensor, mask: Tensor | None,
                W0h: Tensor, *Wg: Tensor) -> Tensor:
        impl = _choose(h)
        need = _needed(ctx)
        grad = any(need)
        ctx.plan, ctx.impl = plan, impl
        ctx.seq = grads if impl == "cpp" and (need[5] or any(need[6:])) else None
        if ctx.seq is not None:
            ctx.index = ctx.seq.register()
        if impl == "cpp":
            from ess import cpu_kernels

            ops, preds, src, where_g, where_p, concat = plan.codes()
            out, CH0, S, S_in, F, *CHg = cpu_kernels.load().darts_fwd(
                xp.contiguous(), h.contiguous(), None if mask is None else mask.contiguous(), W0h, list(Wg), ops,
                preds, src, where_g, where_p, concat, grad)
            ctx.counts = len(Wg)
            if grad:
                ctx.save_for_backward(h, mask, W0h, S_in, F, *Wg, *CHg)
            return out
        out, CH0, CHg, states, states_in = _darts_fwd(impl, xp, h, mask, W0h, list(Wg), plan)
        ctx.counts = (len(Wg), len(states))
        if grad:
            ctx.save_for_backward(h, mask, W0h, CH0, *Wg, *CHg, *states, *states_in)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor):
        need = ctx.needs_input_grad
        need_w = need[5] or any(need[6:])
        if ctx.impl == "cpp":
            from ess import cpu_kernels

            n_g = ctx.counts
            h, mask, W0h, S_in, F, *rest = ctx.saved_tensors
            _, preds, src, where_g, where_p, concat = ctx.plan.codes()
            defer = ctx.seq is not None
            dxp, dh, dW0h, *dWg = cpu_kernels.load().darts_bwd(
                dout.contiguous(), h, mask, W0h, list(rest[:n_g]), list(rest[n_g:]), S_in, F, preds, src, where_g,
                where_p, concat, need_w and not defer, defer)
            if defer:
                h_in = h if mask is None else h * mask
                total = ctx.seq.add(ctx.index, [h_in, *S_in.unbind(0)], [dxp, *dWg[n_g:]])
                dW0h, *dWg = total if total is not None else [None] * (n_g + 1)
        else:
            n_g, n_s = ctx.counts
            h, mask, W0h, CH0, *rest = ctx.saved_tensors
            Wg, CHg = rest[:n_g], rest[n_g: 2 * n_g]
            states, states_in = rest[2 * n_g: 2 * n_g + n_s], rest[2 * n_g + n_s:]
            dxp, dh, dW0h, dWg = _darts_bwd(ctx.impl, dout.contiguous(), h, mask, W0h, list(Wg), CH0, list(CHg),
                                            list(states), list(states_in), ctx.plan, need_w)
        return (None, None, dxp if need[2] else None, dh if need[3] else None, None, dW0h if need[5] else None,
                *[dW if nd else None for dW, nd in zip(dWg, need[6:])])


# --------------------------------------------------------------------------------------------------
# The ESS inter search cell (MixedInterCell): forward and backward over any number of rows


def _acts(P: Tensor) -> Tensor:
    """The non-zero ops of ``P`` stacked after its leading dims: ``[..., 4, N, d]`` (tanh, relu, sigmoid, identity)."""
    g, t = _sigmoid_tanh(P)
    return torch.stack([t, torch.relu(P), g, P], -3)


def _acts_slope(P: Tensor, dA: Tensor) -> Tensor:
    """``sum_op dA[..., op, :, :] * f_op'(P)``: back through :func:`_acts`."""
    g, t = _sigmoid_tanh(P)
    return (dA[..., 0, :, :] * (1 - t * t) + dA[..., 1, :, :] * (P > 0).to(P.dtype)
            + dA[..., 2, :, :] * (g * (1 - g)) + dA[..., 3, :, :])


def inter_search_forward(X: Tensor, W: Tensor, theta_in: Tensor, theta_nodes: Sequence[Tensor], comb: Tensor | None,
                         combination: str, residual: bool):
    """The inter search DAG over ``m`` inputs ``X`` ``[m, N, d]``. Returns ``(out, P, ab, Pn, nodes)``.

    ``W`` ``[2, m + K - 1, d, d]``; ``theta_in`` ``[2, K, m, 4]`` weights of the inputs' non-zero ops for each
    side and node, ``theta_nodes[k-1]`` ``[2, k, 4]`` those of node ``k``'s node sources; ``comb`` the
    (product, sum) weights when the combination is searched. ``P`` ``[2, m, N, d]`` the inputs' projections,
    ``ab[k]`` ``[2, N, d]`` node ``k``'s branches, ``Pn[k]`` ``[2, N, d]`` node ``k``'s projections.
    """
    m, N, d = X.shape
    K = theta_in.size(1)
    P = torch.matmul(X.unsqueeze(0), W[:, :m])  # [2, m, N, d]: s_j W^side_j
    base = torch.bmm(theta_in.reshape(2, K, m * 4), _acts(P).reshape(2, m * 4, N * d)).view(2, K, N, d)
    ab: list[Tensor] = []
    Pn: list[Tensor] = []
    An: list[Tensor] = []
    nodes: list[Tensor] = []
    for k in range(K):
        branches = base[:, k]
        if k:
            src = torch.stack(An, 1).reshape(2, k * 4, N * d)
            branches = branches + torch.bmm(theta_nodes[k - 1].reshape(2, 1, k * 4), src).view(2, N, d)
        a, b = branches[0], branches[1]
        if combination == "product":
            node = a * b
        elif combination == "sum":
            node = a + b
        else:
            node = comb[0] * (a * b) + comb[1] * (a + b)
        ab.append(branches)
        nodes.append(node)
        if k < K - 1:
            p = torch.matmul(node.unsqueeze(0), W[:, m + k])  # [2, N, d]
            Pn.append(p)
            An.append(_acts(p))
    out = torch.stack(nodes).mean(0)
    if residual:
        out = out + X[0]
    return out, P, ab, Pn, nodes


def inter_search_backward(dout: Tensor, X: Tensor, W: Tensor, theta_in: Tensor, theta_nodes: Sequence[Tensor],
                          comb: Tensor | None, combination: str, residual: bool, P: Tensor, ab: Sequence[Tensor],
                          Pn: Sequence[Tensor], nodes: Sequence[Tensor], need_x: bool, need_w: bool,
                          need_theta: bool):
    """Gradients of :func:`inter_search_forward`: ``(dX, dW, dtheta_in, dtheta_nodes, dcomb)``."""
    m, N, d = X.shape
    K = theta_in.size(1)
    g = dout / K
    An = [_acts(p) for p in Pn]  # [2, 4, N, d] each
    dAn: list[Tensor | None] = [None] * len(Pn)
    dnodes: list[Tensor] = [g] * K
    dbase: list[Tensor] = [g] * K  # placeholders, all set below
    dW = torch.zeros_like(W) if need_w else None
    dtheta_nodes: list[Tensor | None] = [None] * (K - 1)
    dcomb = torch.zeros(2, dtype=X.dtype, device=X.device) if comb is not None else None
    for k in range(K - 1, -1, -1):
        dnode = dnodes[k]
        if k < K - 1:  # back through node k's projections (read by nodes > k, done already)
            dPk = _acts_slope(Pn[k], dAn[k].view(2, 4, N, d))  # [2, N, d]
            dnode = dnode + (torch.matmul(dPk, W[:, m + k].transpose(-1, -2))).sum(0)
            if dW is not None:
                dW[:, m + k] = torch.matmul(nodes[k].t().unsqueeze(0), dPk)
        a, b = ab[k][0], ab[k][1]
        if combination == "product":
            da, db = dnode * b, dnode * a
        elif combination == "sum":
            da, db = dnode, dnode
        else:
            da, db = dnode * (comb[0] * b + comb[1]), dnode * (comb[0] * a + comb[1])
            dcomb = dcomb + torch.stack([(dnode * a * b).sum(), (dnode * (a + b)).sum()])
        dab = torch.stack([da, db])  # [2, N, d]
        dbase[k] = dab
        if k:
            flat = dab.reshape(2, 1, N * d)
            if need_theta:
                src = torch.stack(An[:k], 1).reshape(2, k * 4, N * d)
                dtheta_nodes[k - 1] = torch.bmm(flat, src.transpose(1, 2)).view(2, k, 4)
            dsrc = torch.bmm(theta_nodes[k - 1].reshape(2, k * 4, 1), flat).view(2, k, 4 * N * d)
            for kk in range(k):
                dAn[kk] = dsrc[:, kk] if dAn[kk] is None else dAn[kk] + dsrc[:, kk]
    db_all = torch.stack(dbase, 1).reshape(2, K, N * d)
    A = _acts(P).reshape(2, m * 4, N * d)
    dtheta_in = torch.bmm(db_all, A.transpose(1, 2)).view(2, K, m, 4) if need_theta else None
    dA = torch.bmm(theta_in.reshape(2, K, m * 4).transpose(1, 2), db_all).view(2, m, 4, N, d)
    dP = _acts_slope(P, dA)  # [2, m, N, d]
    dX = None
    if need_x:
        dX = torch.matmul(dP, W[:, :m].transpose(-1, -2)).sum(0)
        if residual:
            dX[0] += dout
    if dW is not None:
        dW[:, :m] = torch.matmul(X.transpose(1, 2).unsqueeze(0), dP)
    return dX, dW, dtheta_in, dtheta_nodes, dcomb


_inter_search_fwd = Kernel(inter_search_forward)
_inter_search_bwd = Kernel(inter_search_backward)


_COMBINATION_CODE = {"product": 0, "sum": 1, "search": 2}
CPP_MAX_INTER_NODES = 16  # the C++ inter step keeps one register block per node


class InterSearchFunction(torch.autograd.Function):
    """The inter search cell on stacked inputs; ``apply(config, X, W, theta_in, comb, *theta_nodes)``.

    ``config = (combination, residual)``; see :func:`inter_search_forward`. Runs the C++ step
    (:mod:`ess.cpu_kernels`: every op-weighted sum over (source, op) fused into one pass per node level,
    no ``[2, m, 4, N, d]`` activations) where :func:`_choose` picks it, else the Python kernels.
    """

    @staticmethod
    def forward(ctx, config: tuple[str, bool], X: Tensor, W: Tensor, theta_in: Tensor, comb: Tensor | None,
                *theta_nodes: Tensor) -> Tensor:
        combination, residual = config
        K = theta_in.size(1)
        impl = _choose(X[0])
        if impl == "cpp" and K > CPP_MAX_INTER_NODES:
            impl = "compile" if _wants_compile(X.size(1), X.size(2), X.device) else "eager"
        if impl == "cpp":
            from ess import cpu_kernels

            theta_nodes = tuple(t.contiguous() for t in theta_nodes)
            out, P, AB, Pn, nodes = cpu_kernels.load().inter_fwd(
                X.contiguous(), W, theta_in.contiguous(), list(theta_nodes), comb, _COMBINATION_CODE[combination],
                residual)
            kept = [AB, Pn, nodes]
        else:
            out, P, ab, Pn_l, nodes_l = _inter_search_fwd(impl, X, W, theta_in, list(theta_nodes), comb, combination,
                                                          residual)
            kept = [*ab, *Pn_l, *nodes_l]
        ctx.config, ctx.impl, ctx.K = config, impl, K
        ctx.save_for_backward(X, W, theta_in, comb, P, *theta_nodes, *kept)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor):
        K = ctx.K
        X, W, theta_in, comb, P, *rest = ctx.saved_tensors
        theta_nodes, kept = rest[: K - 1], rest[K - 1:]
        need = ctx.needs_input_grad
        need_theta = need[3] or need[4] or any(need[5:])
        if ctx.impl == "cpp":
            from ess import cpu_kernels

            combination, residual = ctx.config
            dX, dW, dth_in, dcomb, *dth_nodes = cpu_kernels.load().inter_bwd(
                dout.contiguous(), X.contiguous(), W, theta_in.contiguous(), list(theta_nodes), comb,
                _COMBINATION_CODE[combination], residual, P, *kept, need[1], need[2], need_theta)
        else:
            ab, Pn, nodes = kept[:K], kept[K: 2 * K - 1], kept[2 * K - 1:]
            dX, dW, dth_in, dth_nodes, dcomb = _inter_search_bwd(
                ctx.impl, dout.contiguous(), X, W, theta_in, list(theta_nodes), comb, *ctx.config, P, list(ab),
                list(Pn), list(nodes), need[1], need[2], need_theta)
        return (None, dX if need[1] else None, dW if need[2] else None, dth_in if need[3] else None,
                dcomb if need[4] else None, *[t if nd else None for t, nd in zip(dth_nodes, need[5:])])


# --------------------------------------------------------------------------------------------------
# The tied decoder and the loss, fused: no [T, B, V] logits


CE_CHUNK_BYTES = 24 << 20  # logits of one chunk of rows (below glibc's 32 MB mmap threshold: no page faults)


def _linear_cross_entropy_sums(x: Tensor, W: Tensor, b: Tensor | None, y: Tensor, need_x: bool, need_W: bool,
                               need_b: bool) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``(mean loss, dx, dW, db)``, the gradients of the summed loss (``None`` where not asked)."""
    N, V = x.size(0), W.size(0)
    dx = torch.empty_like(x) if need_x else None
    dWt = W.new_zeros(W.size(1), V) if need_W else None  # dW^T: x^T probs runs faster than probs^T x
    db = torch.zeros_like(b) if need_b and b is not None else None
    rows = max(1, CE_CHUNK_BYTES // (V * x.element_size()))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    Wt = W.t()
    for r0 in range(0, N, rows):
        xc, yc = x[r0: r0 + rows], y[r0: r0 + rows]
        logits = torch.addmm(b, xc, Wt) if b is not None else xc @ Wt
        target = logits.gather(1, yc[:, None]).squeeze(1)
        top = logits.amax(1, keepdim=True)
        probs = logits.sub_(top).exp_()
        norm = probs.sum(1, keepdim=True)
        total += (top.squeeze(1) + norm.squeeze(1).log() - target).sum(dtype=torch.float64)
        if dx is None and dWt is None and db is None:
            continue
        probs.div_(norm)
        probs[torch.arange(yc.size(0), device=yc.device), yc] -= 1  # d(sum of losses)/dlogits
        if dx is not None:
            torch.mm(probs, W, out=dx[r0: r0 + rows])
        if dWt is not None:
            dWt.addmm_(xc.t(), probs)
        if db is not None:
            db += probs.sum(0)
    return (total / N).to(x.dtype), dx, None if dWt is None else dWt.t(), db


class LinearCrossEntropy(torch.autograd.Function):
    """``cross_entropy(x W^T + b, y)`` (mean) over row chunks, gradients computed on the way.

    Each chunk's logits (``CE_CHUNK_BYTES``) become its softmax in place, then ``softmax - onehot`` is
    multiplied out into ``dx``, ``dW``, ``db`` (only those autograd asks for; none without gradients), so
    the ``N x V`` logits never exist: same matmuls as the plain decoder + loss, a fraction of the memory
    traffic. The backward scales the kept gradients by ``grad / N``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor | None, y: Tensor) -> Tensor:
        loss, dx, dW, db = _linear_cross_entropy_sums(x, W, b, y, *ctx.needs_input_grad[:3])
        ctx.N = x.size(0)
        ctx.save_for_backward(dx, dW, db)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        dx, dW, db = ctx.saved_tensors
        scale = grad / ctx.N
        return (None if dx is None else dx * scale, None if dW is None else dW * scale,
                None if db is None else db * scale, None)


def linear_cross_entropy(x: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    """Mean ``cross_entropy(x @ weight.T + bias, targets)`` over the rows of ``x`` ``[N, d]``, fused
    (:class:`LinearCrossEntropy`). Without gradients (evaluation, ``torch.no_grad``) only the loss is computed:
    a Function's ``needs_input_grad`` follows ``requires_grad``, not the grad mode."""
    if not torch.is_grad_enabled():
        return _linear_cross_entropy_sums(x, weight, bias, targets, False, False, False)[0]
    return LinearCrossEntropy.apply(x, weight, bias, targets)


__all__ = [
    "BACKENDS",
    "CE_CHUNK_BYTES",
    "COMPILE_MIN_ELEMENTS",
    "CPP_MIN_ELEMENTS",
    "DARTS_GROUP_COLUMNS",
    "DartsPlan",
    "DartsStep",
    "InterSearchFunction",
    "IntraSearchStep",
    "Kernel",
    "LinearCrossEntropy",
    "NormSpec",
    "SequenceGrads",
    "apply_step",
    "backend",
    "darts_backward",
    "darts_forward",
    "darts_group_size",
    "fused_enabled",
    "get_backend",
    "inter_search_backward",
    "inter_search_forward",
    "intra_search_backward",
    "intra_search_forward",
    "linear_cross_entropy",
    "norm_spec",
    "set_backend",
    "tune_cpu_allocator",
    "update_running_stats",
]
