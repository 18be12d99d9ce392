"""Cells: hand-computed forwards, the DARTS equivalence of the identity inter cell, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ess.models.cells import CELLS, DARTSCell, InterCell, build_cell
from ess.space.genotype import (
    DARTS_V2,
    ENAS,
    IDENTITY_INTER,
    Edge,
    ESSGenotype,
    InterGenotype,
    InterNode,
    IntraGenotype,
)

ACT = {"tanh": math.tanh, "relu": lambda v: max(v, 0.0), "sigmoid": lambda v: 1 / (1 + math.exp(-v)),
       "identity": lambda v: v}


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _vecmat(v: list[float], M: list[list[float]]) -> list[float]:
    return [sum(v[i] * M[i][j] for i in range(len(v))) for j in range(len(M[0]))]


def test_two_node_darts_cell_matches_hand_computation():
    genotype = IntraGenotype((Edge("tanh", 0), Edge("relu", 1)), (1, 2))
    cell = DARTSCell(2, 2, genotype).double()
    W0 = [[0.1, -0.2, 0.3, 0.05], [0.4, 0.1, -0.3, 0.2], [-0.5, 0.2, 0.1, 0.3], [0.2, -0.1, 0.4, -0.2]]
    W1 = [[0.3, -0.1, 0.2, 0.6], [-0.2, 0.5, 0.1, -0.4]]
    W2 = [[-0.3, 0.2, 0.7, -0.1], [0.1, 0.4, -0.5, 0.3]]
    with torch.no_grad():
        cell.W0.copy_(torch.tensor(W0, dtype=torch.float64))
        cell.Ws[0].copy_(torch.tensor(W1, dtype=torch.float64))
        cell.Ws[1].copy_(torch.tensor(W2, dtype=torch.float64))
    x, h = [0.5, -1.0], [0.2, 0.3]
    # node 0: [c0, h0] = [x, h] W0; s0 = h + sigmoid(c0) * (tanh(h0) - h)
    ch = _vecmat(x + h, W0)
    s0 = [h[k] + _sig(ch[k]) * (math.tanh(ch[2 + k]) - h[k]) for k in range(2)]
    ch = _vecmat(s0, W1)
    s1 = [s0[k] + _sig(ch[k]) * (math.tanh(ch[2 + k]) - s0[k]) for k in range(2)]
    ch = _vecmat(s1, W2)
    s2 = [s1[k] + _sig(ch[k]) * (max(ch[2 + k], 0.0) - s1[k]) for k in range(2)]
    expected = torch.tensor([[(s1[k] + s2[k]) / 2 for k in range(2)]], dtype=torch.float64)
    xt, ht = torch.tensor([x], dtype=torch.float64), torch.tensor([h], dtype=torch.float64)
    out = cell.step(cell.input_projection(xt), ht)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_inter_cell_matches_hand_computation():
    genotype = InterGenotype(m=2, nodes=(InterNode(Edge("relu", 0), Edge("tanh", 1)),
                                         InterNode(Edge("sigmoid", 2), Edge("identity", 0))),
                             combination="product", residual=True)
    cell = InterCell(3, genotype).double()
    torch.manual_seed(0)
    h1, h2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert sorted(cell.W) == ["a0", "a2", "b0", "b1"]  # one map per branch side and source
    W = cell.W
    n1 = torch.relu(h1 @ W["a0"]) * torch.tanh(h2 @ W["b1"])
    n2 = torch.sigmoid(n1 @ W["a2"]) * (h1 @ W["b0"])
    torch.testing.assert_close(cell([h1, h2]), h1 + (n1 + n2) / 2)
    summed = InterCell(3, InterGenotype(2, genotype.nodes, "sum", residual=False)).double()
    summed.load_state_dict(cell.state_dict())
    m1 = torch.relu(h1 @ W["a0"]) + torch.tanh(h2 @ W["b1"])
    m2 = torch.sigmoid(m1 @ W["a2"]) + h1 @ W["b0"]
    torch.testing.assert_close(summed([h1, h2]), (m1 + m2) / 2)


def test_identity_inter_cell_leaves_vectors_unchanged():
    cell = InterCell(5, IDENTITY_INTER)
    assert cell.m == 1 and len(list(cell.parameters())) == 0
    h = torch.randn(3, 5)
    assert cell([h]) is h


def _plain_darts_forward(cell: DARTSCell, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The DARTS model's recurrence written out as in the DARTS code (concat [x, h] per step)."""
    outs = []
    for t in range(x.size(0)):
        c0, h0 = (torch.cat([x[t], h], -1) @ cell.W0).split(cell.nhid, -1)
        states = [h + torch.sigmoid(c0) * (torch.tanh(h0) - h)]
        for i, (op, pred) in enumerate(cell.genotype.recurrent):
            c, hh = (states[pred] @ cell.Ws[i]).split(cell.nhid, -1)
            act = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda v: v}[op]
            states.append(states[pred] + torch.sigmoid(c) * (act(hh) - states[pred]))
        h = torch.stack([states[i] for i in cell.genotype.concat]).mean(0)
        outs.append(h)
    return torch.stack(outs), h


@pytest.mark.parametrize("genotype", [DARTS_V2, ENAS], ids=["DARTS_V2", "ENAS"])
def test_ess_cell_with_identity_inter_equals_plain_darts(genotype):
    torch.manual_seed(1)
    cell = build_cell("ess", 6, 6, genotype, dropoutx=0.0, dropouth=0.0).double()
    x = torch.randn(7, 3, 6, dtype=torch.float64)
    state = cell.init_state(3)
    state = (torch.randn_like(state[0]), state[1])
    out, (hs, xs) = cell(x, state)
    ref_out, ref_h = _plain_darts_forward(cell.intra, x, state[0][0])
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(hs[0], ref_h)
    assert xs.shape == (0, 3, 6)


def _ess_genotype(m_h: int = 3, m_x: int = 2) -> ESSGenotype:
    history = InterGenotype(m_h, (InterNode(Edge("relu", 0), Edge("tanh", m_h - 1)),
                                  InterNode(Edge("sigmoid", m_h), Edge("identity", 1))), "product", True)
    inputs = InterGenotype(m_x, (InterNode(Edge("tanh", 0), Edge("relu", m_x - 1)),), "sum", True)
    return ESSGenotype(DARTS_V2.intra, history, inputs)


def test_ess_cell_step_by_step_definition():
    """Each step: h_t = pi(f(h_{t-1}, h_{t-2}, h_{t-3}), g(x_t, x_{t-1})), queues carried."""
    torch.manual_seed(2)
    cell = build_cell("ess", 4, 4, _ess_genotype()).double().eval()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    h_q = torch.randn(3, 2, 4, dtype=torch.float64)
    x_q = torch.randn(1, 2, 4, dtype=torch.float64)
    out, (hs, xs) = cell(x, (h_q, x_q))
    hist, xprev = list(h_q.unbind(0)), x_q[0]
    for t in range(5):
        x_hat = cell.inputs([x[t], xprev])
        h_hat = cell.history(hist)
        h = cell.intra.step(cell.intra.input_projection(x_hat), h_hat)
        torch.testing.assert_close(out[t], h)
        hist, xprev = [h] + hist[:-1], x[t]
    torch.testing.assert_close(hs, torch.stack(hist))
    torch.testing.assert_close(xs[0], x[-1])


def test_segments_carry_the_queue_exactly():
    """One long segment equals two shorter ones with the state carried across (eval mode)."""
    torch.manual_seed(3)
    cell = build_cell("ess", 4, 4, _ess_genotype(m_h=3, m_x=3)).double().eval()
    x = torch.randn(9, 2, 4, dtype=torch.float64)
    whole, state_whole = cell(x, cell.init_state(2))
    first, state = cell(x[:4], cell.init_state(2))
    second, state = cell(x[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    for a, b in zip(state, state_whole):
        torch.testing.assert_close(a, b)


class _Step(torch.nn.Module):
    """``cell.step`` as a module call, so ``functional_call`` can swap its weights."""

    def __init__(self, cell: DARTSCell):
        super().__init__()
        self.cell = cell

    def forward(self, x, h, mask):
        return self.cell.step(self.cell.input_projection(x), h, mask)


def test_gradcheck_darts_cell():
    torch.manual_seed(4)
    step = _Step(DARTSCell(3, 3, DARTS_V2.intra).double())
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 3, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda a, b: step(a, b, mask), (x, h))
    names = ("cell.W0", "cell.Ws.0", "cell.Ws.5")
    params = dict(step.named_parameters())
    weights = tuple(params[n].detach().clone().requires_grad_() for n in names)

    def by_weights(*ws):
        return torch.func.functional_call(step, {**params, **dict(zip(names, ws))}, (x.detach(), h.detach(), mask))

    assert torch.autograd.gradcheck(by_weights, weights)


@pytest.mark.parametrize("combination", ["product", "sum"])
@pytest.mark.parametrize("residual", [True, False])
def test_gradcheck_inter_and_ess_cell(combination, residual):
    torch.manual_seed(5)
    g = InterGenotype(2, (InterNode(Edge("tanh", 0), Edge("sigmoid", 1)), InterNode(Edge("relu", 2), Edge("tanh", 0))),
                      combination, residual)
    inter = InterCell(3, g).double()
    a = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, v: inter([u, v]), (a, b))
    cell = build_cell("ess", 3, 3, ESSGenotype(DARTS_V2.intra, g, g)).double().eval()
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, hq, xq: cell(u, (hq, xq))[0], (x, h0, x0))


def test_lstm_cell_is_torch_lstm():
    torch.manual_seed(6)
    cell = build_cell("lstm", 4, 5, None).eval()
    x = torch.randn(6, 3, 4)
    out, (h, c) = cell(x, cell.init_state(3))
    ref_out, (ref_h, ref_c) = cell.lstm(x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(c, ref_c)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_every_registered_cell_runs_a_sequence_with_dropout(kind):
    torch.manual_seed(7)
    cell = build_cell(kind, 8, 8, _ess_genotype(), dropoutx=0.5, dropouth=0.3).train()
    x = torch.randn(5, 4, 8)
    out, state = cell(x, cell.init_state(4))
    assert out.shape == (5, 4, 8) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cell.parameters())


def test_variational_masks_are_shared_over_time():
    """dropoutx: one mask per sequence: a dropped input unit is dropped at every step."""
    torch.manual_seed(8)
    cell = build_cell("ess", 6, 6, DARTS_V2, dropoutx=0.5).train()
    seen = []
    original = cell.intra.input_projection
    cell.intra.input_projection = lambda xh: seen.append(xh) or original(xh)
    cell(torch.ones(4, 3, 6), cell.init_state(3))
    zeros = seen[0] == 0
    assert zeros.any() and (zeros == zeros[0:1]).all()


# --------------------------------------------------------------------------------------------------
# The grouped weights of the fused step (ess.kernels.DartsStep), prepared by the cell once a sequence


def test_sequence_prepares_the_grouped_weights_once():
    cell = build_cell("ess", 6, 6, DARTS_V2).double()
    calls = []
    original = cell.intra.plan.group_weights

    def counting(ws):
        calls.append(1)
        return original(ws)

    object.__setattr__(cell.intra.plan, "group_weights", counting)
    cell(torch.randn(7, 2, 6, dtype=torch.float64), cell.init_state(2))
    assert len(calls) == 1  # one concatenation for the 7 steps
    assert cell.intra._sequence_weights is None
