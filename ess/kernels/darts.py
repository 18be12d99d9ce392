"""One step of the discrete DARTS cell (:class:`ess.models.cells.DARTSCell`) as one autograd node."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ess.kernels import cpu
from ess.kernels.activations import ACT_FWD, KERNEL_OPS, act_grad
from ess.kernels.intra import node0_backward, node0_forward
from ess.kernels.policy import Kernel, Needs, _choose

DARTS_GROUP_COLUMNS = 2_048  # widest concatenated weight of a DARTS node group (CPU, 64-256 rows: measured)


def darts_group_size(nhid: int) -> int:
    """How many nodes fed by one source share a matmul: their concatenated weight ``[nhid, 2 nhid k]`` stays
    within ``DARTS_GROUP_COLUMNS`` columns. Wider products with 64 rows ran slower than the separate ones on
    CPU when timed alone (850-d, 3 nodes: 90 vs 115 GFLOP/s); inside the cell the difference is within this
    machine's noise (``bench/retrain_variants.py``, BENCHMARKS.md); narrower groups save calls."""
    return max(1, DARTS_GROUP_COLUMNS // (2 * nhid))


@dataclass(frozen=True)
class DartsPlan:
    """Static structure of a discrete DARTS cell: node ``i``'s op and predecessor, grouped by source.

    ``groups[k] = (j, (i1, i2, ...))``: nodes fed by ``s_j``, whose ``W_i`` are concatenated so that
    ``s_j`` goes through all of them in one matmul (at most ``max_group`` nodes per group: a source feeding
    more has several groups); ``concat``: the nodes averaged into the output.
    """

    ops: tuple[str, ...]
    preds: tuple[int, ...]
    groups: tuple[tuple[int, tuple[int, ...]], ...]
    concat: tuple[int, ...]

    @classmethod
    def of(cls, genotype, max_group: int | None = None) -> DartsPlan:
        ops = tuple(e.op for e in genotype.recurrent)
        preds = tuple(e.pred for e in genotype.recurrent)
        groups = []
        for j in range(len(preds) + 1):
            fed = tuple(i + 1 for i, p in enumerate(preds) if p == j)
            size = max_group or len(fed) or 1
            groups += [(j, fed[c: c + size]) for c in range(0, len(fed), size)]
        return cls(ops, preds, tuple(groups), tuple(genotype.concat))

    def codes(self) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
        """The plan as integer lists for the C++ step: ops (their index in ``KERNEL_OPS``), predecessors, each
        group's source, each node's group and position in it (index 0 unused), concat."""
        codes = self.__dict__.get("_codes")
        if codes is None:
            where_g, where_p = [0] * (len(self.ops) + 1), [0] * (len(self.ops) + 1)
            for k, (_, nodes) in enumerate(self.groups):
                for pos, i in enumerate(nodes):
                    where_g[i], where_p[i] = k, pos
            codes = ([KERNEL_OPS.index(o) for o in self.ops], list(self.preds),
                     [j for j, _ in self.groups], where_g, where_p, list(self.concat))
            object.__setattr__(self, "_codes", codes)
        return codes

    def group_weights(self, Ws: Sequence[Tensor]) -> list[Tensor]:
        """``W_g = [W_i1 | W_i2 | ...]`` per group (a view when the group has one node)."""
        return [Ws[nodes[0] - 1] if len(nodes) == 1 else torch.cat([Ws[i - 1] for i in nodes], 1)
                for _, nodes in self.groups]


def _groups_of(plan: DartsPlan) -> dict[int, list[int]]:
    """Source node -> the indices of the groups it feeds (groups are in source order)."""
    out: dict[int, list[int]] = {}
    for k, (j, _) in enumerate(plan.groups):
        out.setdefault(j, []).append(k)
    return out


def darts_forward(xp: Tensor, h: Tensor, mask: Tensor | None, W0h: Tensor, Wg: Sequence[Tensor], plan: DartsPlan):
    """One step of the discrete cell: ``(out, CH0, CHg, states, states_in)`` (``CHg[k]`` ``[B, |group| 2d]``)."""
    B, d = h.shape
    n = len(plan.ops)
    h_in = h if mask is None else h * mask
    CH0 = torch.addmm(xp, h_in, W0h)
    states: list[Tensor] = [node0_forward(CH0, h, d)[0]]
    states_in: list[Tensor] = []
    where: dict[int, tuple[int, int]] = {}  # node -> (group, position)
    CHg: list[Tensor] = []
    groups_of = _groups_of(plan)
    for j in range(n + 1):
        if j > 0:
            k, pos = where[j]
            CH = CHg[k][:, pos * 2 * d: (pos + 1) * 2 * d]
            c = torch.sigmoid(CH[:, :d])
            s_prev = states[plan.preds[j - 1]]
            states.append(s_prev + c * (ACT_FWD[plan.ops[j - 1]](CH[:, d:]) - s_prev))
        for k in groups_of.get(j, ()):
            s_in = states[j] if mask is None else states[j] * mask
            states_in.append(s_in)
            CHg.append(s_in @ Wg[k])
            for pos, i in enumerate(plan.groups[k][1]):
                where[i] = (k, pos)
    out = states[plan.concat[0]]
    for i in plan.concat[1:]:
        out = out + states[i]
    return out / len(plan.concat), CH0, CHg, states, states_in


def darts_backward(dout: Tensor, h: Tensor, mask: Tensor | None, W0h: Tensor, Wg: Sequence[Tensor], CH0: Tensor,
                   CHg: Sequence[Tensor], states: Sequence[Tensor], states_in: Sequence[Tensor], plan: DartsPlan,
                   need_w: bool):
    """Gradients of :func:`darts_forward`: ``(dxp, dh, dW0h, dWg)``."""
    B, d = h.shape
    n = len(plan.ops)
    g = dout / len(plan.concat)
    ds: list[Tensor | None] = [None] * (n + 1)
    for i in plan.concat:
        ds[i] = g if ds[i] is None else ds[i] + g
    dCH: dict[int, Tensor] = {}
    dWg: list[Tensor | None] = [None] * len(plan.groups)
    groups_of = _groups_of(plan)
    where = {i: (k, pos) for k, (_, nodes) in enumerate(plan.groups) for pos, i in enumerate(nodes)}
    for j in range(n, -1, -1):
        for k in groups_of.get(j, ()):  # every consumer of s_j (all > j) is done: back through W_g
            nodes = plan.groups[k][1]
            dG = dCH[nodes[0]] if len(nodes) == 1 else torch.cat([dCH[i] for i in nodes], 1)
            G = dG @ Wg[k].t()
            G = G if mask is None else G * mask
            ds[j] = G if ds[j] is None else ds[j] + G
            if need_w:
                dWg[k] = states_in[k].t() @ dG
        if j == 0:
            break
        dsj = ds[j]
        if dsj is None:  # a node nothing reads (not in concat, no consumer)
            dsj = torch.zeros_like(h)
        k, pos = where[j]
        CH = CHg[k][:, pos * 2 * d: (pos + 1) * 2 * d]
        p = plan.preds[j - 1]
        c = torch.sigmoid(CH[:, :d])
        f, fprime = act_grad(plan.ops[j - 1], CH[:, d:])
        dC = dsj * (f - states[p]) * c * (1 - c)
        dH = dsj * c * fprime
        dCH[j] = torch.cat([dC, dH], -1)
        direct = dsj * (1 - c)
        ds[p] = direct if ds[p] is None else ds[p] + direct
    ds0 = ds[0] if ds[0] is not None else torch.zeros_like(h)
    dCH0, dh = node0_backward(ds0, CH0, h, d, None)
    G0 = dCH0 @ W0h.t()
    dh = dh + (G0 if mask is None else G0 * mask)
    dW0h = None
    if need_w:
        h_in = h if mask is None else h * mask
        dW0h = h_in.t() @ dCH0
    return dCH0, dh, dW0h, dWg


_darts_fwd = Kernel(darts_forward)
_darts_bwd = Kernel(darts_backward)


class SequenceGrads:
    """The weight gradients of one sequence's steps, multiplied out once over all the steps' rows.

    Per step, ``dW = inputs^T dpre`` has inner dimension ``B`` (a thin product), and autograd then adds up
    ``T`` full-size ``dW``. Steps run under a cell's ``sequence()`` hand their ``(inputs, dpre)`` here
    instead, and step 0's backward (autograd runs it last: every later step reads ``h_0`` through the
    recurrence) returns ``sum_t inputs_t^T dpre_t`` as one product of inner dimension ``T B`` per weight.
    """

    def __init__(self) -> None:
        self._steps = 0
        self._parts: list[tuple[Sequence[Tensor], Sequence[Tensor]]] = []

    def register(self) -> int:
        """A new step's index in the sequence (0 for the first)."""
        self._steps += 1
        return self._steps - 1

    def add(self, index: int, inputs: Sequence[Tensor], dpre: Sequence[Tensor]) -> list[Tensor] | None:
        """Keep one step's factors; at step 0, return every weight's gradient summed over the kept steps."""
        self._parts.append((inputs, dpre))
        if index != 0:
            return None
        parts, self._parts = self._parts, []
        return [torch.cat([p[0][q] for p in parts]).t() @ torch.cat([p[1][q] for p in parts])
                for q in range(len(inputs))]


class DartsStep(torch.autograd.Function):
    """``h_t`` of a discrete DARTS cell; ``apply(plan, grads, x_proj, h, mask, W0h, *Wg)``.

    See :func:`darts_forward`. ``grads``: the sequence's :class:`SequenceGrads` (the C++ step then defers
    its weight gradients to it), or ``None`` (each step returns its own).
    """

    ARGS = "plan grads xp h mask W0h *Wg"

    @staticmethod
    def forward(ctx, plan: DartsPlan, grads: SequenceGrads | None, xp: Tensor, h: Tensor, mask: Tensor | None,
                W0h: Tensor, *Wg: Tensor) -> Tensor:
        impl = _choose(h)
        need = Needs.of(ctx, DartsStep.ARGS)
        grad = need.any()
        ctx.plan, ctx.impl = plan, impl
        ctx.seq = grads if impl == "cpp" and (need.W0h or any(need.Wg)) else None
        if ctx.seq is not None:
            ctx.index = ctx.seq.register()
        if impl == "cpp":
            ops, preds, src, where_g, where_p, concat = plan.codes()
            out, CH0, S, S_in, F, *CHg = cpu.load().darts_fwd(
                xp.contiguous(), h.contiguous(), None if mask is None else mask.contiguous(), W0h, list(Wg), ops,
                preds, src, where_g, where_p, concat, grad)
            ctx.counts = len(Wg)
            if grad:
                ctx.save_for_backward(h, mask, W0h, S_in, F, *Wg, *CHg)
            return out
        out, CH0, CHg, states, states_in = _darts_fwd(impl, xp, h, mask, W0h, list(Wg), plan)
        ctx.counts = (len(Wg), len(states))
        if grad:
            ctx.save_for_backward(h, mask, W0h, CH0, *Wg, *CHg, *states, *states_in)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor):
        need = Needs(DartsStep.ARGS, ctx.needs_input_grad)
        need_w = need.W0h or any(need.Wg)
        if ctx.impl == "cpp":
            n_g = ctx.counts
            h, mask, W0h, S_in, F, *rest = ctx.saved_tensors
            _, preds, src, where_g, where_p, concat = ctx.plan.codes()
            defer = ctx.seq is not None
            dxp, dh, dW0h, *dWg = cpu.load().darts_bwd(
                dout.contiguous(), h, mask, W0h, list(rest[:n_g]), list(rest[n_g:]), S_in, F, preds, src, where_g,
                where_p, concat, need_w and not defer, defer)
            if defer:
                h_in = h if mask is None else h * mask
                total = ctx.seq.add(ctx.index, [h_in, *S_in.unbind(0)], [dxp, *dWg[n_g:]])
                dW0h, *dWg = total if total is not None else [None] * (n_g + 1)
        else:
            n_g, n_s = ctx.counts
            h, mask, W0h, CH0, *rest = ctx.saved_tensors
            Wg, CHg = rest[:n_g], rest[n_g: 2 * n_g]
            states, states_in = rest[2 * n_g: 2 * n_g + n_s], rest[2 * n_g + n_s:]
            dxp, dh, dW0h, dWg = _darts_bwd(ctx.impl, dout.contiguous(), h, mask, W0h, list(Wg), CH0, list(CHg),
                                            list(states), list(states_in), ctx.plan, need_w)
        return need.only(xp=dxp, h=dh, W0h=dW0h, Wg=dWg)
