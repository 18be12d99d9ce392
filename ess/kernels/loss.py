"""The tied decoder fused into the cross-entropy loss: no ``[T, B, V]`` logits."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ess.kernels.policy import Needs

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

    ARGS = "x W b y"

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor | None, y: Tensor) -> Tensor:
        need = Needs(LinearCrossEntropy.ARGS, ctx.needs_input_grad)
        loss, dx, dW, db = _linear_cross_entropy_sums(x, W, b, y, need.x, need.W, need.b)
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
