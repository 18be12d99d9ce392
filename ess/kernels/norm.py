"""Affine-free batch norm of the search cell's node states (as DARTS's), forward with its backward."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

NORM_CODE = {"none": 0, "batch": 1, "running": 2}  # the mode as the C++ kernels read it


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


def norm_forward(u: Tensor, mode: str, eps: float, rmean: Tensor | None, rrstd: Tensor | None):
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


def norm_backward(ds: Tensor, s: Tensor, rstd: Tensor | None, mode: str) -> Tensor:
    """``du`` from ``ds``, the gradient of :func:`norm_forward`'s ``s``."""
    if mode == "batch":
        return rstd * (ds - ds.mean(0) - s * (ds * s).mean(0))
    if mode == "running":
        return ds * rstd
    return ds
