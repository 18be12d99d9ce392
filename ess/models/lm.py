"""The recurrent language model of DARTS/ESS around any registered cell.

embedding (word dropout ``dropoute``) -> locked dropout ``dropouti`` -> cell (variational masks
``dropoutx`` on x, ``dropouth`` on h inside) -> locked dropout ``dropout`` -> decoder tied to the
embedding. AR/TAR regularisers follow AWD-LSTM: ``alpha * mean(dropped_output^2)`` and
``beta * mean((raw_t - raw_{t-1})^2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ess import kernels
from ess.models.cells import State, detach_state


def locked_dropout(x: Tensor, dropout: float, training: bool) -> Tensor:
    """One mask per sequence and feature, shared over time: ``x`` is ``[T, B, D]``."""
    if not training or dropout == 0:
        return x
    keep = 1.0 - dropout
    mask = torch.empty(1, x.size(1), x.size(2), dtype=x.dtype, device=x.device).bernoulli_(keep).div_(keep)
    return x * mask


def embedded_dropout(embed: nn.Embedding, words: Tensor, dropout: float, training: bool) -> Tensor:
    """Word dropout (AWD-LSTM): drop whole rows of the embedding matrix, scale the rest.

    Gathering the row mask by word equals masking the matrix first, without building a masked
    ``V x D`` copy.
    """
    emb = embed(words)
    if not training or dropout == 0:
        return emb
    keep = 1.0 - dropout
    row_mask = torch.empty(embed.weight.size(0), 1, dtype=emb.dtype, device=emb.device).bernoulli_(keep).div_(keep)
    return emb * row_mask[words]


class LMOutput:
    """What the model returns: ``logits`` ``[T, B, V]``, the ``state`` carried to the next segment, the cell
    outputs before (``raw_output``, TAR) and after (``output``, AR) the output dropout.

    The logits are computed on first access from ``output`` and the decoder weights the forward pass used
    (``decoder``); :func:`lm_loss` does not access them: it fuses the decoder into the loss
    (:func:`ess.kernels.linear_cross_entropy`) and no ``[T, B, V]`` tensor is ever made.
    """

    def __init__(self, logits: Tensor | None, state: State, raw_output: Tensor, output: Tensor,
                 decoder: tuple[Tensor, Tensor | None] | None = None):
        if logits is None and decoder is None:
            raise ValueError("LMOutput needs the logits or the decoder weights")
        self._logits, self.state, self.raw_output, self.output, self.decoder = (logits, state, raw_output, output,
                                                                                decoder)

    @property
    def logits(self) -> Tensor:
        if self._logits is None:
            weight, bias = self.decoder  # type: ignore[misc]
            self._logits = F.linear(self.output, weight, bias)
        return self._logits

    def __repr__(self) -> str:
        return f"LMOutput(output={tuple(self.output.shape)}, state={[tuple(s.shape) for s in self.state]})"


class RNNModel(nn.Module):
    """Word-level LM: tied embedding/decoder (so ``ninp == nhid``) around ``cell``."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, cell: nn.Module, dropout: float = 0.75,
                 dropouti: float = 0.2, dropoute: float = 0.1, init_range: float = 0.1):
        super().__init__()
        if ninp != nhid:
            raise ValueError(f"tied weights need ninp == nhid (got {ninp} and {nhid})")
        self.ntoken, self.ninp, self.nhid = ntoken, ninp, nhid
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute
        self.encoder = nn.Embedding(ntoken, ninp)
        self.cell = cell
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -init_range, init_range)  # AWD-LSTM 0.1, DARTS search 0.04
        nn.init.zeros_(self.decoder.bias)

    def init_state(self, batch: int) -> State:
        return self.cell.init_state(batch, self.encoder.weight.device)

    def forward(self, tokens: Tensor, state: State, cell: nn.Module | None = None) -> LMOutput:
        """``tokens`` ``[T, B]`` through the embedding, ``cell`` (default: the model's own; a cell restricted to
        paths of a supernet, :class:`ess.supernet.path.PathCell`, shares its weights) and the tied decoder."""
        emb = embedded_dropout(self.encoder, tokens, self.dropoute, self.training)
        emb = locked_dropout(emb, self.dropouti, self.training)
        raw, new_state = (cell if cell is not None else self.cell)(emb, state)
        out = locked_dropout(raw, self.dropout, self.training)
        return LMOutput(None, new_state, raw, out, decoder=(self.decoder.weight, self.decoder.bias))


def lm_loss(out: LMOutput, targets: Tensor) -> Tensor:
    """Mean next-token cross entropy (nats) over all ``T x B`` positions.

    Fused with the decoder (:func:`ess.kernels.linear_cross_entropy`) unless the logits were already made or
    the kernel backend is ``autograd`` (the fused loss is differentiable once only).
    """
    if out._logits is None and kernels.fused_enabled():
        weight, bias = out.decoder  # type: ignore[misc]
        return kernels.linear_cross_entropy(out.output.reshape(-1, out.output.size(-1)), weight, bias,
                                            targets.reshape(-1))
    return F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), targets.reshape(-1))


def regularisation(out: LMOutput, alpha: float, beta: float) -> Tensor:
    """AR (``alpha``, on dropped outputs) + TAR (``beta``, on raw outputs), as AWD-LSTM/DARTS."""
    reg = out.raw_output.new_zeros(())
    if alpha:
        reg = reg + alpha * out.output.pow(2).mean()
    if beta:
        reg = reg + beta * (out.raw_output[1:] - out.raw_output[:-1]).pow(2).mean()
    return reg


__all__ = ["LMOutput", "RNNModel", "detach_state", "embedded_dropout", "lm_loss", "locked_dropout",
           "regularisation"]
