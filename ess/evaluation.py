"""Evaluation of a language model: mean next-token loss over a batchified split."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ess.data import get_batch
from ess.models.lm import lm_loss


@torch.no_grad()
def evaluate(model: nn.Module, source: Tensor, bptt: int = 35) -> float:
    """Mean cross entropy (nats per token) over every predicted token of ``source`` ``[T, B]``.

    Fixed-length segments, state carried across segments, dropout off. Unlike the DARTS script,
    the sum is divided by the number of predicted tokens (``(T - 1) * B``), not by ``T``.
    """
    was_training = model.training
    model.eval()
    state = model.init_state(source.size(1))
    total, count = 0.0, 0
    for i in range(0, source.size(0) - 1, bptt):
        data, targets = get_batch(source, i, bptt)
        out = model(data, state)
        state = out.state
        total += lm_loss(out, targets).item() * targets.numel()
        count += targets.numel()
    model.train(was_training)
    return total / max(count, 1)
