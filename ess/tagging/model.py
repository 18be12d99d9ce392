"""A BiRNN-CRF sequence tagger whose recurrent cell is any registered cell (an ESS genotype or LSTM).

Token representation: a word embedding (trainable; optionally initialised from pre-trained vectors)
concatenated with character features (a character CNN with max pooling over the word, Ma & Hovy
2016), with dropout. Two cells read the sentence, one left to right and one right to left; their
outputs are concatenated, dropped out, projected to label scores and fed to a linear-chain CRF.

Cells have no packing: padding follows the real tokens, so the forward cell runs on the padded batch
as it is, and the backward cell runs on every sentence reversed within its own length (a gather with
per-sentence reversed indices, undone by the same gather). Outputs at padded positions are never
used: the CRF masks them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ess.models.cells import build_cell
from ess.space.genotype import ESSGenotype
from ess.tagging.crf import CRF
from ess.tagging.vocab import Batch


class CharCNN(nn.Module):
    """Character embeddings, one convolution, max over the word's characters: ``[T, B, L] -> [T, B, F]``."""

    def __init__(self, nchars: int, dim: int, filters: int, width: int = 3):
        super().__init__()
        self.embed = nn.Embedding(nchars, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, filters, width, padding=width // 2)
        self.filters = filters

    def forward(self, chars: Tensor, dropout: nn.Module | None = None) -> Tensor:
        T, B, L = chars.shape
        flat = chars.reshape(T * B, L)
        x = self.embed(flat)
        if dropout is not None:
            x = dropout(x)
        h = self.conv(x.transpose(1, 2))[:, :, :L]                    # [TB, F, L]
        h = h.masked_fill((flat == 0).unsqueeze(1), float("-inf")).max(dim=2).values
        h = torch.where(torch.isfinite(h), h, torch.zeros_like(h))     # words of padding: zeros
        return h.reshape(T, B, self.filters)


def reverse_index(lengths: Tensor, T: int) -> Tensor:
    """``idx[t, b] = lengths[b] - 1 - t`` for ``t < lengths[b]``, else ``t``: an involution."""
    t = torch.arange(T, device=lengths.device).unsqueeze(1)
    return torch.where(t < lengths.unsqueeze(0), lengths.unsqueeze(0) - 1 - t, t)


def reverse_padded(x: Tensor, idx: Tensor) -> Tensor:
    """Reverse each sentence of ``x [T, B, D]`` within its length (``idx`` from :func:`reverse_index`)."""
    return x.gather(0, idx.unsqueeze(2).expand_as(x))


class BiRNN(nn.Module):
    """Two cells of kind ``kind`` (``ess`` with a genotype, or ``lstm``): ``[T, B, ninp] -> [T, B, 2 nhid]``."""

    def __init__(self, kind: str, ninp: int, nhid: int, genotype: ESSGenotype | None = None,
                 dropoutx: float = 0.0, dropouth: float = 0.0):
        super().__init__()
        self.forward_cell = build_cell(kind, ninp, nhid, genotype, dropoutx=dropoutx, dropouth=dropouth)
        self.backward_cell = build_cell(kind, ninp, nhid, genotype, dropoutx=dropoutx, dropouth=dropouth)
        self.nhid = nhid

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        B = x.size(1)
        fw, _ = self.forward_cell(x, self.forward_cell.init_state(B, x.device))
        idx = reverse_index(lengths, x.size(0))
        bw, _ = self.backward_cell(reverse_padded(x, idx), self.backward_cell.init_state(B, x.device))
        return torch.cat([fw, reverse_padded(bw, idx)], dim=2)


class Tagger(nn.Module):
    def __init__(self, nwords: int, nchars: int, nlabels: int, *, cell: str = "lstm",
                 genotype: ESSGenotype | None = None, word_dim: int = 100, char_dim: int = 30,
                 char_filters: int = 50, char_width: int = 3, nhid: int = 200, dropout: float = 0.5,
                 dropoutx: float = 0.0, dropouth: float = 0.0,
                 allowed: tuple[Tensor, Tensor, Tensor] | None = None,
                 word_init: Tensor | None = None):
        super().__init__()
        self.words = nn.Embedding(nwords, word_dim, padding_idx=0)
        if word_init is not None:
            with torch.no_grad():
                self.words.weight.copy_(word_init)
        self.chars = CharCNN(nchars, char_dim, char_filters, char_width) if char_filters > 0 else None
        ninp = word_dim + (char_filters if self.chars is not None else 0)
        self.drop = nn.Dropout(dropout)
        self.rnn = BiRNN(cell, ninp, nhid, genotype, dropoutx=dropoutx, dropouth=dropouth)
        self.project = nn.Linear(2 * nhid, nlabels)
        self.crf = CRF(nlabels, allowed)

    def emissions(self, batch: Batch) -> Tensor:
        x = self.words(batch.words)
        if self.chars is not None:
            x = torch.cat([x, self.chars(batch.chars, self.drop)], dim=2)
        h = self.rnn(self.drop(x), batch.lengths)
        return self.project(self.drop(h))

    def loss(self, batch: Batch) -> Tensor:
        """Mean negative log-likelihood per sentence."""
        return self.crf.neg_log_likelihood(self.emissions(batch), batch.labels, batch.mask).mean()

    @torch.no_grad()
    def decode(self, batch: Batch) -> list[list[int]]:
        paths, _ = self.crf.viterbi(self.emissions(batch), batch.mask)
        return paths


__all__ = ["BiRNN", "CharCNN", "Tagger", "reverse_index", "reverse_padded"]
