"""One step of the DARTS search cell (:class:`ess.supernet.MixedIntraCell`) as one autograd node.

Node 0 (:func:`node0_forward`) is shared with the discrete cell (:mod:`ess.kernels.darts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ess.kernels import cpu
from ess.kernels.activations import kernel_tanh, sigmoid_tanh
from ess.kernels.norm import NORM_CODE, NormSpec, norm_backward, norm_forward, running_params, update_running_stats
from ess.kernels.policy import Kernel, Needs, _choose


def node0_forward(CH0: Tensor, h: Tensor, d: int, factors: bool = False):
    """``u_0 = h + sigmoid(c_0) (tanh(h_0) - h)``; with ``factors`` also ``[3, B, d]``: the derivatives of
    ``u_0`` by ``c_0``, by ``h_0`` and by ``h`` (the backward is then three products)."""
    c = torch.sigmoid(CH0[:, :d])
    t = kernel_tanh(CH0[:, d:])
    u = h + c * (t - h)
    if not factors:
        return u, None
    return u, torch.stack([c * (1 - c) * (t - h), c * (1 - t * t), 1 - c])


def node0_backward(du: Tensor, CH0: Tensor | None, h: Tensor, d: int, F0: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(dCH_0, dh)`` of :func:`node0_forward` (``dh`` the direct part, not through ``W_0``)."""
    if F0 is None:
        F0 = node0_forward(CH0, h, d, True)[1]
    return torch.cat([du * F0[0], du * F0[1]], -1), du * F0[2]


def _mixed_fwd(CH: Tensor, S: Tensor, theta: Tensor, d: int, factors: bool = False):
    """Node value before normalisation, summed over its ``i`` predecessors (dim 0).

    ``CH`` ``[i, B, 2d]`` = ``[c, h]`` of every predecessor, ``S`` ``[i, B, d]`` their states, ``theta``
    ``[i, 4]`` the weights of the non-zero ops (:data:`~ess.kernels.activations.KERNEL_OPS` order):
    ``sum_j P_j s_j + c_j (mix_j - P_j s_j)``, ``mix = sum_k theta_k f_k(h)``, ``P = sum_k theta_k``.
    With ``factors`` also ``[3, i, B, d]``: the derivatives by ``c``, by ``h`` and by ``s_j`` (direct part).
    """
    C, H = CH[..., :d], CH[..., d:]
    th = theta[:, :, None, None]
    c = torch.sigmoid(C)
    g, t = sigmoid_tanh(H)
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
    g, t = sigmoid_tanh(H)
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
            u, f = node0_forward(CH0, h, d, factors)
        else:
            CH = (S_in[:i].reshape(i * B, d) @ Ws[i - 1]).view(i, B, 2 * d)
            CHs.append(CH)
            u, f = _mixed_fwd(CH, S[:i], theta[off[i]: off[i] + i], d, factors)
        F.append(f)
        s, mean, var, rstd = norm_forward(u, mode, eps, rmean, rrstd)
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
        du = norm_backward(acc[i], S[i], rstd if rstd is None or mode == "running" else rstd[i], mode)
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
    du0 = norm_backward(acc[0], S[0], rstd if rstd is None or mode == "running" else rstd[0], mode)
    dCH0, dh = node0_backward(du0, CH0, h, d, F[0])
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

    ARGS = "bn spec xp h mask W0h theta *Ws"

    @staticmethod
    def forward(ctx, bn: nn.Module, spec: NormSpec, xp: Tensor, h: Tensor, mask: Tensor | None, W0h: Tensor,
                theta: Tensor, *Ws: Tensor) -> Tensor:
        rmean, rrstd = running_params(bn, spec)
        impl = _choose(h)
        need = Needs.of(ctx, IntraSearchStep.ARGS)
        grad = need.any()
        factors = grad and not need.theta
        keep_s_in = need.W0h or any(need.Ws)
        if impl == "cpp":
            out, CH0, CH, F0, F, S, S_in, stats = cpu.load().intra_fwd(
                xp.contiguous(), h.contiguous(), None if mask is None else mask.contiguous(), W0h, theta, list(Ws),
                NORM_CODE[spec.mode], spec.eps, rmean, rrstd, factors)
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
        need = Needs(IntraSearchStep.ARGS, ctx.needs_input_grad)
        need_w = need.W0h or any(need.Ws)
        if ctx.impl == "cpp":
            F0, F, CH0, CH = (*kept, None, None) if ctx.factors else (None, None, *kept)
            dxp, dh, dW0h, dtheta, *dWs = cpu.load().intra_bwd(
                dout.contiguous(), h, mask, W0h, theta, list(Ws), CH0, CH, F0, F, S, S_in, rstd,
                NORM_CODE[ctx.spec.mode], need_w, need.theta)
        else:
            F, CH0, CHs = (list(kept), None, []) if ctx.factors else ([None] * (n + 1), kept[0], list(kept[1:]))
            dxp, dh, dW0h, dtheta, dWs = _intra_search_bwd(
                ctx.impl, dout.contiguous(), h, mask, W0h, theta, list(Ws), CH0, CHs, F, S, S_in, rstd,
                ctx.spec.mode, need_w, need.theta)
        return need.only(xp=dxp, h=dh, W0h=dW0h, theta=dtheta, Ws=dWs)
