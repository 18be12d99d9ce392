"""The non-zero ops the kernels implement, in their fixed column order (:data:`KERNEL_OPS`), with derivatives.

Every kernel (Python and C++) reads an edge's op weights as columns in this order: tanh, relu, sigmoid,
identity. The architecture tables put ``none`` first, then the same ops in the same order
(:data:`ess.space.ops.PRIMITIVES`): importing :mod:`ess.kernels` checks that, so a change of the registry cannot
silently permute the columns. :func:`supports` tells a cell whether the kernels implement its op set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ess.space.ops import PRIMITIVES, ZERO

KERNEL_OPS: tuple[str, ...] = ("tanh", "relu", "sigmoid", "identity")

if tuple(op for op in PRIMITIVES if op != ZERO) != KERNEL_OPS:
    raise ImportError(f"ess.kernels implement the ops {KERNEL_OPS} in this column order, but ess.space.ops.PRIMITIVES "
                      f"is {PRIMITIVES}: update the kernels (Python and csrc/ess_cpu.cpp) with the registry")


def supports(ops: Sequence[str]) -> bool:
    """Whether the fused kernels implement every op of ``ops`` (``none`` or one of :data:`KERNEL_OPS`)."""
    return all(op == ZERO or op in KERNEL_OPS for op in ops)


_FAST_TANH = os.environ.get("ESS_FAST_TANH", "1") == "1"
# Rational approximation of tanh on [-c, c] (Eigen's ``ptanh_float``): 3e-7 relative error at most, against
# 6e-8 for ``torch.tanh``, at a quarter of the cost of the vectorised ``tanh`` in a compiled kernel.
_TANH_CLAMP = 7.90531110763549805
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


def kernel_tanh(x: Tensor) -> Tensor:
    """``tanh``; inside a compiled float32 kernel as a rational function (a few fused multiply-adds and a
    division; float64 keeps ``torch.tanh``: the approximation is a float32 one). ``ESS_FAST_TANH=0``: always
    ``torch.tanh``."""
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


def sigmoid_tanh(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigmoid(x), tanh(x))``."""
    return torch.sigmoid(x), kernel_tanh(x)


def stacked(P: Tensor) -> Tensor:
    """The non-zero ops of ``P`` stacked after its leading dims: ``[..., 4, N, d]`` (:data:`KERNEL_OPS` order)."""
    g, t = sigmoid_tanh(P)
    return torch.stack([t, torch.relu(P), g, P], -3)


def stacked_slope(P: Tensor, dA: Tensor) -> Tensor:
    """``sum_op dA[..., op, :, :] * f_op'(P)``: back through :func:`stacked`."""
    g, t = sigmoid_tanh(P)
    return (dA[..., 0, :, :] * (1 - t * t) + dA[..., 1, :, :] * (P > 0).to(P.dtype)
            + dA[..., 2, :, :] * (g * (1 - g)) + dA[..., 3, :, :])


ACT_FWD: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": kernel_tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda v: v}


def act_grad(name: str, H: Tensor) -> tuple[Tensor, Tensor]:
    """``(f(H), f'(H))`` of op ``name``."""
    if name == "tanh":
        t = kernel_tanh(H)
        return t, 1 - t * t
    if name == "relu":
        return torch.relu(H), (H > 0).to(H.dtype)
    if name == "sigmoid":
        g = torch.sigmoid(H)
        return g, g * (1 - g)
    return H, torch.ones_like(H)
