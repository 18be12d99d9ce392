"""A linear-chain CRF: log-partition by the forward algorithm, gold-path score, Viterbi decoding.

The score of tags ``y_1..y_n`` for emissions ``E`` is
``start[y_1] + sum_t E[t, y_t] + sum_{t>1} trans[y_{t-1}, y_t] + end[y_n]``. Tensors are time-major
like the cells: emissions ``[T, B, K]``, tags ``[T, B]``, mask ``[T, B]`` (true on real tokens; every
sentence has at least one, and padding comes after the real tokens).

Optional constraints (``allowed`` from :func:`ess.tagging.schemes.allowed_transitions`) add a large
negative constant to forbidden transitions, starts and ends, in training and decoding alike, so
decoded sequences are well formed (no ``I-X`` after ``O`` in BIO, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FORBIDDEN = -10_000.0


class CRF(nn.Module):
    def __init__(self, num_tags: int, allowed: tuple[Tensor, Tensor, Tensor] | None = None):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        if allowed is None:
            allowed = (torch.ones(num_tags, num_tags, dtype=torch.bool), torch.ones(num_tags, dtype=torch.bool),
                       torch.ones(num_tags, dtype=torch.bool))
        trans, start, end = allowed
        if trans.shape != (num_tags, num_tags) or start.shape != (num_tags,) or end.shape != (num_tags,):
            raise ValueError(f"constraints do not fit {num_tags} tags")
        # Penalties are buffers (not learnt); persistent=False keeps them out of checkpoints.
        self.register_buffer("trans_penalty", (~trans).float() * FORBIDDEN, persistent=False)
        self.register_buffer("start_penalty", (~start).float() * FORBIDDEN, persistent=False)
        self.register_buffer("end_penalty", (~end).float() * FORBIDDEN, persistent=False)

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        return (self.transitions + self.trans_penalty, self.start + self.start_penalty,
                self.end + self.end_penalty)

    @staticmethod
    def _check(emissions: Tensor, mask: Tensor) -> None:
        if emissions.dim() != 3 or mask.shape != emissions.shape[:2]:
            raise ValueError(f"expected emissions [T, B, K] and mask [T, B], got {tuple(emissions.shape)} "
                             f"and {tuple(mask.shape)}")
        if not bool(mask[0].all()):
            raise ValueError("every sentence needs at least one token (mask[0] must be all true)")

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """``log Z`` per sentence: ``[B]``."""
        self._check(emissions, mask)
        trans, start, end = self._params()
        alpha = start + emissions[0]                                   # [B, K]
        for t in range(1, emissions.size(0)):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + emissions[t]
            alpha = torch.where(mask[t].unsqueeze(1), nxt, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """The score of the given tag sequences: ``[B]``."""
        self._check(emissions, mask)
        trans, start, end = self._params()
        maskf = mask.to(emissions.dtype)
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)       # [T, B]
        total = start[tags[0]] + (emit * maskf).sum(0)
        if emissions.size(0) > 1:
            total = total + (trans[tags[:-1], tags[1:]] * maskf[1:]).sum(0)
        last = mask.long().sum(0) - 1
        total = total + end[tags.gather(0, last.unsqueeze(0)).squeeze(0)]
        return total

    def neg_log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """``log Z - score(gold)`` per sentence: ``[B]``."""
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    @torch.no_grad()
    def viterbi(self, emissions: Tensor, mask: Tensor) -> tuple[list[list[int]], Tensor]:
        """The best tag sequence of each sentence (its own length) and its score ``[B]``."""
        self._check(emissions, mask)
        trans, start, end = self._params()
        T, B, K = emissions.shape
        delta = start + emissions[0]
        backpointers = []
        for t in range(1, T):
            best, idx = (delta.unsqueeze(2) + trans).max(dim=1)       # over the previous tag
            m = mask[t].unsqueeze(1)
            delta = torch.where(m, best + emissions[t], delta)
            # Padded steps point to the same tag, so backtracking from the end passes through them.
            keep = torch.arange(K, device=emissions.device).expand(B, K)
            backpointers.append(torch.where(m, idx, keep))
        final = delta + end
        score, last = final.max(dim=1)
        lengths = mask.long().sum(0).tolist()
        path = [last]
        for bp in reversed(backpointers):
            path.append(bp.gather(1, path[-1].unsqueeze(1)).squeeze(1))
        path.reverse()
        full = torch.stack(path).t().tolist() if T > 0 else [[] for _ in range(B)]   # [B, T]
        return [row[:n] for row, n in zip(full, lengths)], score


__all__ = ["CRF", "FORBIDDEN"]
