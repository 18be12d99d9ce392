"""A genotype's path through a supernet: the supernet restricted to the genotype's ops and predecessors.

Random search with weight sharing (Li & Talwalkar, UAI 2019) trains the supernet one sampled path per step,
and shared-weight ranking scores a genotype by its validation loss on that path. Both need the supernet's
forward pass with every mixed edge replaced by the genotype's one ``(op, predecessor)``: seed eq. 2 with a
one-hot ``theta``. Computed as such it would cost the whole supernet; here only the chosen ops run:

* intra node ``i`` with edge ``(f, j)``: ``[c, h] = (s_j ⊙ mask) W_i``, ``s_i = BN(s_j + sigmoid(c) ⊙ (f(h) - s_j))``
  (the search cell's ``W_i``, its affine-free batch norm, its variational mask; node 0 and the output mean as
  :class:`~ess.supernet.MixedIntraCell`);
* inter node ``k`` with branches ``(o_a, j_a)``, ``(o_b, j_b)``: ``a = N(o_a(s_{j_a} W^a_{j_a}))`` and likewise ``b``,
  combined by the genotype's product (seed eq. 4) or sum, ``N`` the supernet's search-only normalisations
  (``op`` on the activation, ``centre``/``layer`` on the branch); output the residual plus the mean of the
  genotype's nodes (seed eq. 3, :class:`~ess.models.cells.InterCell`'s count: a derived cell with fewer nodes
  than the supernet is averaged over its own nodes).

For a genotype with every node of the supernet this is exactly the supernet under one-hot weights in training
mode (``tests/supernet/test_path.py`` holds it to :meth:`SearchModel.overridden`, outputs and gradients, in
float64). One difference is chosen: batch norm always normalises by the batch's own statistics, also in
evaluation. The running statistics belong to the mixture (DARTS) or to random paths (RSWS), not to the path
being scored; per-genotype batch statistics stand in for the recalibration weight-sharing methods use.

Many genotypes run at once, stacked on a leading dimension ``G`` (``[G, B, d]`` states): every ``W_i`` is
shared by all genotypes (it belongs to node ``i``, not to an edge), so node ``i`` is one matmul for all of them
and each genotype picks its predecessor and op by indexing. With one genotype the ops are Python choices and
nothing else runs (the RSWS training step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ess.errors import GenotypeError
from ess.models.cells import InterCell, State, variational_mask
from ess.models.lm import LMOutput, RNNModel
from ess.space import tables
from ess.space.genotype import ESSGenotype, InterGenotype
from ess.space.ops import PRIMITIVES, ZERO
from ess.supernet.base import _NONZERO_ACTS, _NONZERO_COLS, INTER_NORMS, OP_NORMS, InterWeights
from ess.supernet.cells import MixedInterCell, MixedIntraCell
from ess.supernet.model import SearchModel

#: the non-zero ops in PRIMITIVES order, as the path indexes them
OP_NAMES: tuple[str, ...] = tuple(PRIMITIVES[k] for k in _NONZERO_COLS)
OP_INDEX: dict[str, int] = {name: i for i, name in enumerate(OP_NAMES)}


# --------------------------------------------------------------------------------------------------
# Plans: the genotypes as index tensors


Groups = list[tuple[int, Tensor]]   # (op index, the genotypes that take it)


def _groups(ops: Tensor) -> Groups:
    """The genotypes ``ops`` ``[G]`` sends to each op, as index tensors (only the ops some genotype takes)."""
    return [(int(k), (ops == k).nonzero().flatten()) for k in ops.unique()]


def _flat(preds: Tensor) -> Tensor:
    """Rows of a ``[sources * G, ...]`` buffer (source-major) holding source ``preds[g]`` of each genotype ``g``."""
    G = preds.numel()
    return preds * G + torch.arange(G, device=preds.device)


@dataclass(frozen=True)
class IntraPlan:
    """The intra edges of ``G`` genotypes: ``preds[g][i-1]``, ``ops[g][i-1]`` (an index into :data:`OP_NAMES`);
    for ``G > 1`` per node the buffer rows of each genotype's predecessor and the genotypes of each op."""

    preds: list[list[int]]
    ops: list[list[int]]
    flat: list[Tensor]
    groups: list[Groups]


@dataclass(frozen=True)
class InterPlan:
    """One inter part of ``G`` genotypes, padded to the most nodes any has (``alive`` marks the real ones)."""

    preds: list[list[tuple[int, int]]]   # per genotype, per node: (source of a, source of b)
    ops: list[list[tuple[int, int]]]
    flat: list[list[Tensor]]             # per node and side: the buffer rows of each genotype's source
    groups: list[list[Groups]]           # per node and side: the genotypes of each op
    alive: Tensor       # [nodes, G] 1.0 for a real node
    count: Tensor       # [G] nodes of each genotype (0: the identity)
    product: Tensor     # [G] 1.0 where the node combination is the product
    residual: Tensor    # [G] 1.0 where the output keeps the residual
    products: list[bool]
    residuals: list[bool]

    @property
    def nodes(self) -> int:
        return self.alive.size(0)


@dataclass(frozen=True)
class PathPlan:
    """``G`` genotypes laid out for one supernet: the plan of each searched part (``None``: not searched)."""

    genotypes: tuple[ESSGenotype, ...]
    intra: IntraPlan | None
    history: InterPlan | None
    input: InterPlan | None

    @property
    def size(self) -> int:
        return len(self.genotypes)

    @classmethod
    def of(cls, model: SearchModel, genotypes: Sequence[ESSGenotype]) -> PathPlan:
        """Plans of ``genotypes`` in ``model``'s space (a genotype that does not fit it is a GenotypeError)."""
        if not genotypes:
            raise ValueError("a path plan needs at least one genotype")
        device = model.encoder.weight.device
        searched = model.searched_parts()
        intra = _intra_plan(searched["intra"], genotypes, device) if "intra" in searched else None
        inter = {part: _inter_plan(searched[part], part, genotypes, device) if part in searched else None
                 for part in ("history", "input")}
        return cls(tuple(genotypes), intra, inter["history"], inter["input"])


def _op_index(op: str, where: str) -> int:
    if op == ZERO or op not in OP_INDEX:
        raise GenotypeError(f"{where}: op {op!r} has no path (known: {', '.join(OP_NAMES)})")
    return OP_INDEX[op]


def _intra_plan(cell: MixedIntraCell, genotypes: Sequence[ESSGenotype], device: torch.device) -> IntraPlan:
    preds, ops = [], []
    for g in genotypes:
        if g.intra.steps != cell.steps or tuple(g.intra.concat) != tuple(range(1, cell.steps + 1)):
            raise GenotypeError(f"intra: the supernet has {cell.steps} nodes averaged over all; the genotype has "
                                f"{g.intra.steps} nodes, concat {list(g.intra.concat)}")
        preds.append([e.pred for e in g.intra.recurrent])
        ops.append([_op_index(e.op, f"intra.recurrent[{i}]") for i, e in enumerate(g.intra.recurrent)])
    pred_t, op_t = torch.tensor(preds, device=device).t(), torch.tensor(ops, device=device).t()   # [steps, G]
    return IntraPlan(preds, ops, [_flat(p) for p in pred_t], [_groups(o) for o in op_t])


def _inter_plan(cell: MixedInterCell, part: str, genotypes: Sequence[ESSGenotype],
                device: torch.device) -> InterPlan:
    cells: list[InterGenotype] = [getattr(g, part) for g in genotypes]
    for c in cells:
        if c.nodes and c.m != cell.m:
            raise GenotypeError(f"{part}.m: the supernet's window is {cell.m}, the genotype's {c.m}")
        if len(c.nodes) > cell.n_nodes:
            raise GenotypeError(f"{part}.nodes: the supernet has {cell.n_nodes} nodes, the genotype {len(c.nodes)}")
    width = max(1, max(len(c.nodes) for c in cells))
    preds = [[(n.a.pred, n.b.pred) for n in c.nodes] for c in cells]
    ops = [[(_op_index(n.a.op, f"{part}.nodes[{k}].a"), _op_index(n.b.op, f"{part}.nodes[{k}].b"))
            for k, n in enumerate(c.nodes)] for c in cells]
    pad = [(0, 0)] * width

    def stacked(rows: list[list[tuple[int, int]]]) -> Tensor:
        return torch.tensor([(r + pad)[:width] for r in rows], device=device).permute(1, 2, 0)  # [nodes, 2, G]

    pred_t, op_t = stacked(preds), stacked(ops)

    alive = torch.tensor([[1.0 if k < len(c.nodes) else 0.0 for k in range(width)] for c in cells], device=device)
    products, residuals = [c.combination == "product" for c in cells], [c.residual for c in cells]
    as_float = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
    return InterPlan(preds, ops, [[_flat(p) for p in node] for node in pred_t],
                     [[_groups(o) for o in node] for node in op_t], alive.t().contiguous(),
                     as_float([len(c.nodes) for c in cells]), as_float(products), as_float(residuals), products,
                     residuals)


# --------------------------------------------------------------------------------------------------
# The restricted cells


def _batch_norm(v: Tensor, eps: float) -> Tensor:
    """Affine-free batch norm by the batch's own statistics, per genotype: ``v`` is ``[G, B, d]``."""
    centred = v - v.mean(1, keepdim=True)   # two passes of plain means: var_mean over the middle dim is ~10x slower
    return centred * torch.rsqrt((centred * centred).mean(1, keepdim=True) + eps)


def _activate(h: Tensor, groups: Groups) -> Tensor:
    """Each genotype's op on its rows of ``h`` ``[G, ...]``: one pass per op some genotype takes."""
    if len(groups) == 1:
        return _NONZERO_ACTS[groups[0][0]](h)
    out = torch.empty_like(h)
    for k, idx in groups:
        out.index_copy_(0, idx, _NONZERO_ACTS[k](h.index_select(0, idx)))
    return out


def intra_path(cell: MixedIntraCell, plan: IntraPlan, x_proj: Tensor, h_prev: Tensor, h_mask: Tensor | None) -> Tensor:
    """One step of the intra cell on each genotype's path: ``x_proj`` ``[G, B, 2 nhid]``, ``h_prev``
    ``[G, B, nhid]``. One genotype runs in plain autograd ops; several (evaluation) share one buffer of node
    states from which each takes its predecessor."""
    bn = cell.bn
    norm = (lambda v: v) if isinstance(bn, nn.Identity) else (lambda v: _batch_norm(v, bn.eps))  # noqa: E731
    G = h_prev.size(0)
    first = norm(cell.initial_node(x_proj, h_prev, h_mask))
    if G == 1:
        states = [first]
        for i, W in enumerate(cell.Ws, 1):
            s = states[plan.preds[0][i - 1]]
            s_in = s if h_mask is None else s * h_mask
            c, h = (s_in @ W).split(cell.nhid, dim=-1)
            states.append(norm(s + torch.sigmoid(c) * (_NONZERO_ACTS[plan.ops[0][i - 1]](h) - s)))
        return torch.stack(states[1:]).mean(0)
    S = first.new_empty((cell.steps + 1) * G, *first.shape[1:])   # node-major: node i in rows i*G .. (i+1)*G
    S[:G] = first
    for i, W in enumerate(cell.Ws, 1):
        s = S.index_select(0, plan.flat[i - 1])
        s_in = s if h_mask is None else s * h_mask
        c, h = (s_in @ W).split(cell.nhid, dim=-1)
        S[i * G:(i + 1) * G] = norm(s + torch.sigmoid(c) * (_activate(h, plan.groups[i - 1]) - s))
    return S[G:].view(cell.steps, *first.shape).mean(0)


def inter_path(cell: MixedInterCell, plan: InterPlan, inputs: Sequence[Tensor]) -> Tensor:
    """The inter DAG on each genotype's path: ``inputs[j]`` ``[G, R, d]`` is the j-th most recent vector."""
    G, m = inputs[0].size(0), cell.m
    branch_norm = INTER_NORMS[cell.norm]
    op_norm = OP_NORMS.get(cell.norm, INTER_NORMS["none"])
    if G == 1:
        return _inter_one(cell, plan, inputs, lambda f: branch_norm(op_norm(f)))
    sources = cell.W.size(1)   # m inputs and every node but the last can be read
    P = [inputs[0].new_empty(sources * G, *inputs[0].shape[1:]) for _ in (0, 1)]   # source-major projections

    def project(j: int, state: Tensor) -> None:
        for side in (0, 1):
            P[side][j * G:(j + 1) * G] = state @ cell.W[side, j]

    for j in range(m):
        project(j, inputs[j])
    total = torch.zeros_like(inputs[0])
    w = plan.product.view(G, 1, 1).to(total.dtype)
    for k in range(plan.nodes):
        a, b = (branch_norm(op_norm(_activate(P[side].index_select(0, plan.flat[k][side]), plan.groups[k][side])))
                for side in (0, 1))
        node = (w * (a * b) + (1 - w) * (a + b)) * plan.alive[k].view(G, 1, 1)
        total = total + node
        if m + k < sources:
            project(m + k, node)
    out = total / plan.count.clamp(min=1).view(G, 1, 1)
    return out + plan.residual.view(G, 1, 1) * inputs[0]


def _inter_one(cell: MixedInterCell, plan: InterPlan, inputs: Sequence[Tensor], normed) -> Tensor:
    """One genotype's inter DAG in plain autograd ops: only the maps and ops it reads run."""
    if not plan.preds[0]:
        return inputs[0]
    states: list[Tensor] = list(inputs[: cell.m])
    for (ja, jb), (oa, ob) in zip(plan.preds[0], plan.ops[0]):
        a = normed(_NONZERO_ACTS[oa](states[ja] @ cell.W[0, ja]))
        b = normed(_NONZERO_ACTS[ob](states[jb] @ cell.W[1, jb]))
        states.append(a * b if plan.products[0] else a + b)
    out = torch.stack(states[cell.m:]).mean(0)
    return inputs[0] + out if plan.residuals[0] else out


class PathCell(nn.Module):
    """The supernet's :class:`~ess.models.cells.ESSCell` restricted to the genotypes of a :class:`PathPlan`.

    Same interface and state as the cell it restricts (the queue of the last ``m`` hidden states and ``m - 1``
    inputs), with the ``G`` genotypes side by side in the batch dimension: a ``[T, G*B, ninp]`` input gives
    ``[T, G*B, nhid]`` outputs, genotype ``g`` in rows ``g*B .. (g+1)*B``. Masks are drawn as the cell draws
    them (``x`` then ``h``, one row per sequence), shared by the genotypes.
    """

    def __init__(self, model: SearchModel, plan: PathPlan):
        super().__init__()
        self.cell, self.plan, self.G = model.cell, plan, plan.size
        self.searched = model.searched_parts()

    def init_state(self, batch: int, device: torch.device | str | None = None) -> State:
        return self.cell.init_state(batch, device)

    def _inter(self, part: str, vectors: Sequence[Tensor]) -> Tensor:
        module = self.searched.get(part)
        if module is None:
            return vectors[0]
        return inter_path(module, getattr(self.plan, part), vectors)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        cell, G = self.cell, self.G
        h_queue, x_prev = state
        T, N = x.shape[:2]
        if N % G:
            raise ValueError(f"{N} rows do not split into {G} genotypes")
        B = N // G
        x_mask = h_mask = None
        if cell.training and cell.dropoutx > 0:
            x_mask = variational_mask(B, cell.ninp, cell.dropoutx, x)
        if cell.training and cell.dropouth > 0:
            h_mask = variational_mask(B, cell.nhid, cell.dropouth, x)
        m = cell.m_x
        chrono = torch.cat([x_prev.flip(0), x], 0) if m > 1 else x
        # the input DAG of every step at once, genotype first: [G, T*B, ninp]
        lagged = [chrono[m - 1 - k: m - 1 - k + T].reshape(T, G, B, -1).transpose(0, 1).reshape(G, T * B, -1)
                  for k in range(m)]
        x_hat = self._inter("input", lagged).view(G, T, B, -1).transpose(0, 1)
        if x_mask is not None:
            x_hat = x_hat * x_mask
        x_steps = cell.intra.input_projection(x_hat).unbind(0)
        new_x_prev = chrono[-(m - 1):].flip(0) if m > 1 else x_prev
        hs = [h.view(G, B, -1) for h in h_queue.unbind(0)]
        intra = self.searched.get("intra")
        fixed_mask = h_mask.repeat(G, 1) if h_mask is not None and intra is None else None
        outputs = []
        with (contextlib.nullcontext() if intra is not None else cell.intra.sequence()):
            for x_t in x_steps:
                h_hat = self._inter("history", hs)
                if intra is None:   # a fixed intra cell (inter mode): the same for every genotype
                    h = cell.intra.step(x_t.reshape(N, -1), h_hat.reshape(N, -1), fixed_mask).view(G, B, -1)
                else:
                    h = intra_path(intra, self.plan.intra, x_t, h_hat, h_mask)
                outputs.append(h)
                hs = [h] + hs[:-1]
        out = torch.stack(outputs).reshape(T, N, -1)
        return out, (torch.stack(hs).reshape(len(hs), N, -1), new_x_prev)


def path_forward(model: SearchModel, plan: PathPlan, tokens: Tensor, state: State) -> LMOutput:
    """The language model on each genotype's path: ``tokens`` ``[T, G*B]`` (genotype-major rows), the
    supernet's embedding, dropouts and tied decoder around :class:`PathCell`."""
    return RNNModel.forward(model, tokens, state, cell=PathCell(model, plan))


# --------------------------------------------------------------------------------------------------
# The same path as one-hot weights of the whole supernet (the oracle, and a genotype's weight tables)


def one_hot_probs(model: SearchModel, genotype: ESSGenotype) -> dict[str, object]:
    """The canonical softmax weights (by part, as :meth:`SearchModel.overridden` takes them) that put all the
    weight of every searched edge on ``genotype``'s choice; an inter node the genotype lacks gets none."""
    ref = model.encoder.weight
    out: dict[str, object] = {}
    for part, module in model.searched_parts().items():
        if part == "intra":
            w = torch.zeros(tables.intra_edge_count(module.steps), len(PRIMITIVES), dtype=ref.dtype, device=ref.device)
            for i, edge in enumerate(genotype.intra.recurrent, 1):
                w[tables.intra_offset(i) + edge.pred, PRIMITIVES.index(edge.op)] = 1.0
            out[part] = w
            continue
        g: InterGenotype = getattr(genotype, part)
        branches = []
        for k in range(module.n_nodes):
            w = torch.zeros(2, module.m + k, len(PRIMITIVES), dtype=ref.dtype, device=ref.device)
            if k < len(g.nodes):
                for side, edge in enumerate((g.nodes[k].a, g.nodes[k].b)):
                    w[side, edge.pred, PRIMITIVES.index(edge.op)] = 1.0
            branches.append(w)
        comb = None
        if module.combination == "search":
            comb = torch.tensor([1.0, 0.0] if g.combination == "product" else [0.0, 1.0], dtype=ref.dtype,
                                device=ref.device)
        out[part] = InterWeights(branches, comb)
    return out


def discrete_inter(cell: MixedInterCell, genotype: InterGenotype) -> InterCell:
    """The discrete cell of ``genotype`` with the supernet's maps (what a path without normalisation computes)."""
    return cell.to_discrete(genotype)


__all__ = ["OP_NAMES", "InterPlan", "IntraPlan", "PathCell", "PathPlan", "discrete_inter", "inter_path",
           "intra_path", "one_hot_probs", "path_forward"]
