"""The ESS inter search cell (:class:`ess.supernet.MixedInterCell`) over any number of rows, as one autograd node.

``norm``: ``"none"``, or ``"op"`` (:data:`ess.supernet.base.OP_NORMS`): every op's activation of every source is
layer-normalised over its row (no affine), ``a = (f(p) - mean) / sqrt(var + OP_NORM_EPS)``, before the op-weighted
sums. The branch norms ``centre`` and ``layer`` are not fused (the cell runs its plain code for them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ess.kernels import cpu
from ess.kernels.activations import kernel_tanh, stacked, stacked_slope
from ess.kernels.policy import Kernel, Needs, _choose, _wants_compile

FUSED_INTER_NORMS: tuple[str, ...] = ("none", "op")  # the inter-cell norms the fused kernels implement
OP_NORM_EPS = 1e-5  # F.layer_norm's default, as the plain cells use it


def op_norm(A: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, r)``: ``A`` layer-normalised over its last dim (no affine) and ``r = 1 / sqrt(var + eps)``."""
    c = A - A.mean(-1, keepdim=True)
    r = torch.rsqrt((c * c).mean(-1, keepdim=True) + OP_NORM_EPS)
    return c * r, r


def op_norm_backward(da: Tensor, a: Tensor, r: Tensor) -> Tensor:
    """The gradient of :func:`op_norm`'s input from ``da``, the gradient of its output ``a``."""
    return r * (da - da.mean(-1, keepdim=True) - a * (da * a).mean(-1, keepdim=True))


def _acts(P: Tensor, norm: str) -> tuple[Tensor, Tensor | None]:
    """The (normalised) activations of the non-zero ops of ``P``, ``[..., 4, N, d]``, and their ``r``.

    The norm is shift-invariant: sigmoid enters it as ``sigmoid - 1/2 = tanh(P / 2) / 2``, whose float32 values
    keep their precision where sigmoid's crowd around 1/2 (row deviations of 1e-3 at small projections)."""
    if norm != "op":
        return stacked(P), None
    return op_norm(torch.stack([kernel_tanh(P), torch.relu(P), 0.5 * kernel_tanh(0.5 * P), P], -3))


def _back_through_acts(P: Tensor, dA: Tensor, A: Tensor, r: Tensor | None) -> Tensor:
    """``dP`` from ``dA``, the gradient of :func:`_acts`'s activations ``A``."""
    if r is not None:
        dA = op_norm_backward(dA, A, r)
    return stacked_slope(P, dA)


def inter_search_forward(X: Tensor, W: Tensor, theta_in: Tensor, theta_nodes: Sequence[Tensor], comb: Tensor | None,
                         combination: str, residual: bool, norm: str = "none"):
    """The inter search DAG over ``m`` inputs ``X`` ``[m, N, d]``. Returns ``(out, P, ab, Pn, nodes)``.

    ``W`` ``[2, m + K - 1, d, d]``; ``theta_in`` ``[2, K, m, 4]`` weights of the inputs' non-zero ops for each
    side and node, ``theta_nodes[k-1]`` ``[2, k, 4]`` those of node ``k``'s node sources; ``comb`` the
    (product, sum) weights when the combination is searched; ``norm`` one of :data:`FUSED_INTER_NORMS`. ``P``
    ``[2, m, N, d]`` the inputs' projections, ``ab[k]`` ``[2, N, d]`` node ``k``'s branches, ``Pn[k]`` ``[2, N, d]``
    node ``k``'s projections.
    """
    m, N, d = X.shape
    K = theta_in.size(1)
    P = torch.matmul(X.unsqueeze(0), W[:, :m])  # [2, m, N, d]: s_j W^side_j
    base = torch.bmm(theta_in.reshape(2, K, m * 4), _acts(P, norm)[0].reshape(2, m * 4, N * d)).view(2, K, N, d)
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
            An.append(_acts(p, norm)[0])
    out = torch.stack(nodes).mean(0)
    if residual:
        out = out + X[0]
    return out, P, ab, Pn, nodes


def inter_search_backward(dout: Tensor, X: Tensor, W: Tensor, theta_in: Tensor, theta_nodes: Sequence[Tensor],
                          comb: Tensor | None, combination: str, residual: bool, P: Tensor, ab: Sequence[Tensor],
                          Pn: Sequence[Tensor], nodes: Sequence[Tensor], need_x: bool, need_w: bool,
                          need_theta: bool, norm: str = "none"):
    """Gradients of :func:`inter_search_forward`: ``(dX, dW, dtheta_in, dtheta_nodes, dcomb)``."""
    m, N, d = X.shape
    K = theta_in.size(1)
    g = dout / K
    An, Rn = zip(*[_acts(p, norm) for p in Pn]) if Pn else ((), ())  # [2, 4, N, d] each
    dAn: list[Tensor | None] = [None] * len(Pn)
    dnodes: list[Tensor] = [g] * K
    dbase: list[Tensor] = [g] * K  # placeholders, all set below
    dW = torch.zeros_like(W) if need_w else None
    dtheta_nodes: list[Tensor | None] = [None] * (K - 1)
    dcomb = torch.zeros(2, dtype=X.dtype, device=X.device) if comb is not None else None
    for k in range(K - 1, -1, -1):
        dnode = dnodes[k]
        if k < K - 1:  # back through node k's projections (read by nodes > k, done already)
            dPk = _back_through_acts(Pn[k], dAn[k].view(2, 4, N, d), An[k], Rn[k])  # [2, N, d]
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
    A, R = _acts(P, norm)
    dtheta_in = torch.bmm(db_all, A.reshape(2, m * 4, N * d).transpose(1, 2)).view(2, K, m, 4) if need_theta else None
    dA = torch.bmm(theta_in.reshape(2, K, m * 4).transpose(1, 2), db_all).view(2, m, 4, N, d)
    dP = _back_through_acts(P, dA, A, R)  # [2, m, N, d]
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

    ``config = (combination, residual, norm)``; see :func:`inter_search_forward`. Runs the C++ step
    (:mod:`ess.kernels.cpu`: every op-weighted sum over (source, op) fused into one pass per node level,
    no ``[2, m, 4, N, d]`` activations; with ``norm = "op"`` each source's row statistics first, kept for the
    backward) where the policy picks it, else the Python kernels.
    """

    ARGS = "config X W theta_in comb *theta_nodes"

    @staticmethod
    def forward(ctx, config: tuple[str, bool, str], X: Tensor, W: Tensor, theta_in: Tensor, comb: Tensor | None,
                *theta_nodes: Tensor) -> Tensor:
        combination, residual, norm = config
        if norm not in FUSED_INTER_NORMS:
            raise ValueError(f"the fused inter cell normalises with {', '.join(FUSED_INTER_NORMS)}, not {norm!r}")
        K = theta_in.size(1)
        impl = _choose(X[0])
        if impl == "cpp" and K > CPP_MAX_INTER_NODES:
            impl = "compile" if _wants_compile(X.size(1), X.size(2), X.device) else "eager"
        if impl == "cpp":
            theta_nodes = tuple(t.contiguous() for t in theta_nodes)
            out, P, AB, Pn, nodes, SP, SN = cpu.load().inter_fwd(
                X.contiguous(), W, theta_in.contiguous(), list(theta_nodes), comb, _COMBINATION_CODE[combination],
                residual, norm == "op", OP_NORM_EPS)
            kept = [AB, Pn, nodes, SP, SN]
        else:
            out, P, ab, Pn_l, nodes_l = _inter_search_fwd(impl, X, W, theta_in, list(theta_nodes), comb, combination,
                                                          residual, norm)
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
        need = Needs(InterSearchFunction.ARGS, ctx.needs_input_grad)
        need_theta = need.theta_in or need.comb or any(need.theta_nodes)
        combination, residual, norm = ctx.config
        if ctx.impl == "cpp":
            dX, dW, dth_in, dcomb, *dth_nodes = cpu.load().inter_bwd(
                dout.contiguous(), X.contiguous(), W, theta_in.contiguous(), list(theta_nodes), comb,
                _COMBINATION_CODE[combination], residual, P, *kept, need.X, need.W, need_theta)
        else:
            ab, Pn, nodes = kept[:K], kept[K: 2 * K - 1], kept[2 * K - 1:]
            dX, dW, dth_in, dth_nodes, dcomb = _inter_search_bwd(
                ctx.impl, dout.contiguous(), X, W, theta_in, list(theta_nodes), comb, combination, residual, P,
                list(ab), list(Pn), list(nodes), need.X, need.W, need_theta, norm)
        return need.only(X=dX, W=dW, theta_in=dth_in, comb=dcomb, theta_nodes=dth_nodes)
