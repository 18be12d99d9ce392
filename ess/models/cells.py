"""Discrete recurrent cells: the DARTS intra cell, the ESS inter cells, their composition, and LSTM.

Notation follows reference.md and the seed summary. One time step of the ESS cell is

    h^_{t-1} = f(h_{t-1}, ..., h_{t-m})          (history inter cell, :class:`InterCell`)
    x^_t     = g(x_t, ..., x_{t-m+1})             (input inter cell, :class:`InterCell`)
    h_t      = pi(h^_{t-1}, x^_t)                 (intra cell, :class:`DARTSCell`; seed eq. 1)

and the recurrent state carried across BPTT segments is the queue of the last ``m`` hidden states and
the last ``m - 1`` inputs (zeros at the start).

Cells are registered in :data:`CELLS` by name; a cell module maps a ``[T, B, ninp]`` input sequence
and a state to ``[T, B, nhid]`` outputs and the new state, and exposes ``init_state(batch, device)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ess import kernels
from ess.space.genotype import ESSGenotype, InterGenotype, IntraGenotype
from ess.space.ops import activation

INIT_RANGE = 0.04  # DARTS: uniform(-0.04, 0.04) for every recurrent weight matrix

State = tuple[Tensor, ...]


def variational_mask(batch: int, dim: int, dropout: float, like: Tensor) -> Tensor:
    """A per-sequence dropout mask ``[B, dim]`` scaled by ``1 / (1 - dropout)`` (Gal & Ghahramani)."""
    keep = 1.0 - dropout
    return torch.empty(batch, dim, dtype=like.dtype, device=like.device).bernoulli_(keep).div_(keep)


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-INIT_RANGE, INIT_RANGE))


class DARTSCell(nn.Module):
    """The discrete DARTS recurrent cell pi (reference.md section 3).

    Node 0: ``[c0, h0] = [x^_t, h^_{t-1}] W_0``, ``s_0 = h^_{t-1} + sigmoid(c0) ⊙ (tanh(h0) - h^_{t-1})``.
    Node i with edge (f, j): ``[c, h] = s_j W_i``, ``s_i = s_j + sigmoid(c) ⊙ (f(h) - s_j)``.
    Output: the mean of the ``concat`` nodes. Variational masks: ``x_mask`` on x^ (applied by the
    caller before :meth:`input_projection`), ``h_mask`` on h^_{t-1} and on every node input.
    """

    def __init__(self, ninp: int, nhid: int, genotype: IntraGenotype):
        super().__init__()
        self.ninp, self.nhid, self.genotype = ninp, nhid, genotype
        self.W0 = _uniform(ninp + nhid, 2 * nhid)
        self.Ws = nn.ParameterList([_uniform(nhid, 2 * nhid) for _ in genotype.recurrent])
        self._activations = [activation(e.op) for e in genotype.recurrent]
        self.plan = kernels.DartsPlan.of(genotype, kernels.darts_group_size(nhid))

    def input_projection(self, x: Tensor) -> Tensor:
        """``x W_0[:ninp]`` for every time step at once: ``[T, B, ninp] -> [T, B, 2 nhid]``."""
        return x @ self.W0[: self.ninp]

    def initial_node(self, x_proj: Tensor, h_prev: Tensor, h_mask: Tensor | None) -> Tensor:
        h_in = h_prev if h_mask is None else h_prev * h_mask
        c0, h0 = (x_proj + h_in @ self.W0[self.ninp:]).split(self.nhid, dim=-1)
        return h_prev + torch.sigmoid(c0) * (torch.tanh(h0) - h_prev)

    # ---- fused path (ess.kernels): one autograd node per step, weights of a source node concatenated

    def _fused_weights(self) -> tuple[Tensor, list[Tensor], kernels.SequenceGrads | None]:
        return self.W0[self.ninp:], self.plan.group_weights(list(self.Ws)), None

    @contextlib.contextmanager
    def sequence(self) -> Iterator[None]:
        """Steps of one sequence: the weights prepared once (the concatenations are autograd nodes), and
        the weight gradients multiplied out once over all steps (:class:`ess.kernels.SequenceGrads`)."""
        if kernels.fused_enabled():
            W0h, Wg, _ = self._fused_weights()
            self._sequence_weights = (W0h, Wg, kernels.SequenceGrads())
        try:
            yield
        finally:
            self._sequence_weights = None

    _sequence_weights: tuple[Tensor, list[Tensor], kernels.SequenceGrads | None] | None = None

    def step(self, x_proj: Tensor, h_prev: Tensor, h_mask: Tensor | None = None) -> Tensor:
        if not kernels.fused_enabled():
            return self.step_autograd(x_proj, h_prev, h_mask)
        W0h, Wg, grads = self._sequence_weights or self._fused_weights()
        return kernels.apply_step(kernels.DartsStep, self.plan, grads, x_proj, h_prev, h_mask, W0h, *Wg)

    def step_autograd(self, x_proj: Tensor, h_prev: Tensor, h_mask: Tensor | None = None) -> Tensor:
        """The step in plain autograd ops (differentiable twice)."""
        states = [self.initial_node(x_proj, h_prev, h_mask)]
        for (_, pred), W, act in zip(self.genotype.recurrent, self.Ws, self._activations):
            s_prev = states[pred]
            s_in = s_prev if h_mask is None else s_prev * h_mask
            c, h = (s_in @ W).split(self.nhid, dim=-1)
            states.append(s_prev + torch.sigmoid(c) * (act(h) - s_prev))
        return torch.stack([states[i] for i in self.genotype.concat]).mean(0)


class InterCell(nn.Module):
    """A discrete inter-cell DAG of ESS (reference.md section 2) over ``m`` earlier vectors.

    Index ``j < m`` is input ``j`` (0 = most recent). Node ``k`` (index ``m + k``) is
    ``F(alpha; beta) = a ⊙ b`` (or ``a + b``) with branches ``a = o_a(s_{j_a} W^a_{j_a})`` and
    ``b = o_b(s_{j_b} W^b_{j_b})``: one linear map per source index ``j`` as in the seed's node formula
    ``o(s_j · W_j)``, and one set of maps per branch side, so that the two operands of the product are
    different projections even when both branches read the same source (with a single shared ``W_j``
    the search starts with ``a = b`` and tends to keep it: the product degenerates to a square).
    Output: ``s_0 + mean_k(s_{m+k})`` with the residual, else the mean.
    """

    def __init__(self, dim: int, genotype: InterGenotype):
        super().__init__()
        self.dim, self.genotype, self.m = dim, genotype, genotype.m
        used = sorted({f"{side}{edge.pred}" for node in genotype.nodes
                       for side, edge in (("a", node.a), ("b", node.b))})
        self.W = nn.ParameterDict({key: _uniform(dim, dim) for key in used})  # "a2": W^a_2

    @property
    def is_identity(self) -> bool:
        return self.genotype.is_identity

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """``inputs[j]`` is the j-th most recent vector (any leading shape, last dim ``dim``)."""
        g = self.genotype
        if g.is_identity:
            return inputs[0]
        states: list[Tensor] = list(inputs[: self.m])
        projected: dict[str, Tensor] = {}

        def branch(side: str, op: str, pred: int) -> Tensor:
            key = f"{side}{pred}"
            if key not in projected:
                projected[key] = states[pred] @ self.W[key]
            return activation(op)(projected[key])

        for node in g.nodes:
            a, b = branch("a", *node.a), branch("b", *node.b)
            states.append(a * b if g.combination == "product" else a + b)
        out = torch.stack(states[self.m:]).mean(0)
        return states[0] + out if g.residual else out


class ESSCell(nn.Module):
    """Inter cells then intra cell over a sequence: ``h_t = pi(f(h_{t-1..t-m}), g(x_{t..t-m+1}))``.

    The input DAG does not depend on h, so ``x^`` and its projection by ``W_0`` are computed for the
    whole segment before the recurrence. ``intra`` is any module with ``input_projection`` and
    ``step`` (the discrete :class:`DARTSCell` or a search cell); ``history``/``inputs`` any module
    with ``m`` and ``forward(list_of_vectors)``.
    """

    def __init__(self, ninp: int, nhid: int, intra: nn.Module, history: nn.Module, inputs: nn.Module,
                 dropoutx: float = 0.0, dropouth: float = 0.0):
        super().__init__()
        self.ninp, self.nhid = ninp, nhid
        self.intra, self.history, self.inputs = intra, history, inputs
        self.dropoutx, self.dropouth = dropoutx, dropouth

    @property
    def m_h(self) -> int:
        return self.history.m

    @property
    def m_x(self) -> int:
        return self.inputs.m

    def init_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """(last m hidden states, most recent first; last m-1 inputs, most recent first), all zeros."""
        w = next(self.parameters())
        kw = {"dtype": w.dtype, "device": device if device is not None else w.device}
        return (torch.zeros(self.m_h, batch, self.nhid, **kw), torch.zeros(self.m_x - 1, batch, self.ninp, **kw))

    def input_sequence(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        """x^ for every step and the new input queue. ``x_prev``: ``[m_x - 1, B, ninp]``, newest first."""
        m = self.m_x
        if m == 1:
            return self.inputs([x]), x_prev
        chrono = torch.cat([x_prev.flip(0), x], 0)  # x_{-(m-1)}, ..., x_{-1}, x_0, ..., x_{T-1}
        T = x.size(0)
        lagged = [chrono[m - 1 - k: m - 1 - k + T] for k in range(m)]  # lagged[k][t] = x_{t-k}
        return self.inputs(lagged), chrono[-(m - 1):].flip(0)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h_queue, x_prev = state
        B = x.size(1)
        x_mask = h_mask = None
        if self.training and self.dropoutx > 0:
            x_mask = variational_mask(B, self.ninp, self.dropoutx, x)
        if self.training and self.dropouth > 0:
            h_mask = variational_mask(B, self.nhid, self.dropouth, x)
        x_hat, new_x_prev = self.input_sequence(x, x_prev)
        if x_mask is not None:
            x_hat = x_hat * x_mask
        # unbind, not x_proj[t]: one backward node stacking the steps' gradients, where T selects would
        # each scatter into a zero [T, B, 2 nhid] tensor and add it up
        x_steps = self.intra.input_projection(x_hat).unbind(0)
        hs = list(h_queue.unbind(0))
        outputs = []
        sequence = getattr(self.intra, "sequence", contextlib.nullcontext)
        with sequence():
            for x_t in x_steps:
                h_hat = self.history(hs)
                h = self.intra.step(x_t, h_hat, h_mask)
                outputs.append(h)
                hs = [h] + hs[:-1]
        return torch.stack(outputs), (torch.stack(hs), new_x_prev)


class LSTMCell(nn.Module):
    """The LSTM baseline: one ``torch.nn.LSTM`` layer, with a variational mask on its input."""

    def __init__(self, ninp: int, nhid: int, dropoutx: float = 0.0):
        super().__init__()
        self.ninp, self.nhid, self.dropoutx = ninp, nhid, dropoutx
        self.lstm = nn.LSTM(ninp, nhid)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> State:
        w = self.lstm.weight_hh_l0
        kw = {"dtype": w.dtype, "device": device if device is not None else w.device}
        return (torch.zeros(1, batch, self.nhid, **kw), torch.zeros(1, batch, self.nhid, **kw))

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if self.training and self.dropoutx > 0:
            x = x * variational_mask(x.size(1), self.ninp, self.dropoutx, x)
        out, (h, c) = self.lstm(x, (state[0], state[1]))
        return out, (h, c)


def build_ess_cell(ninp: int, nhid: int, genotype: ESSGenotype | None = None, dropoutx: float = 0.0,
                   dropouth: float = 0.0) -> ESSCell:
    if genotype is None:
        raise ValueError("the 'ess' cell needs a genotype")
    return ESSCell(ninp, nhid, DARTSCell(ninp, nhid, genotype.intra), InterCell(nhid, genotype.history),
                   InterCell(ninp, genotype.input), dropoutx=dropoutx, dropouth=dropouth)


def build_lstm_cell(ninp: int, nhid: int, genotype: ESSGenotype | None = None, dropoutx: float = 0.0,
                    dropouth: float = 0.0) -> LSTMCell:
    return LSTMCell(ninp, nhid, dropoutx=dropoutx)


CELLS: dict[str, Callable[..., nn.Module]] = {"ess": build_ess_cell, "lstm": build_lstm_cell}


def build_cell(kind: str, ninp: int, nhid: int, genotype: ESSGenotype | None = None, dropoutx: float = 0.0,
               dropouth: float = 0.0) -> nn.Module:
    try:
        builder = CELLS[kind]
    except KeyError:
        raise ValueError(f"unknown cell kind {kind!r} (known: {', '.join(CELLS)})") from None
    return builder(ninp, nhid, genotype, dropoutx=dropoutx, dropouth=dropouth)


def detach_state(state: State) -> State:
    """Cut the graph between BPTT segments (``repackage_hidden`` in DARTS)."""
    return tuple(s.detach() for s in state)


__all__ = ["CELLS", "DARTSCell", "ESSCell", "InterCell", "LSTMCell", "build_cell", "detach_state",
           "variational_mask", "F"]
