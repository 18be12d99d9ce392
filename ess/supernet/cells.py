"""The mixed (search) cells: DARTS's intra search cell, ESS's inter search DAG (seed eqs. 2-4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ess import kernels
from ess.config import check
from ess.models.cells import DARTSCell, InterCell
from ess.space import tables
from ess.space.genotype import COMBINATIONS, InterGenotype, IntraGenotype
from ess.space.ops import PRIMITIVES
from ess.supernet.base import (
    _NONZERO_ACTS,
    _NONZERO_COLS,
    COMBINE,
    INTER_NORMS,
    OP_NORMS,
    SOFTMAX_SCOPES,
    ArchBound,
    InterWeights,
    _uniform,
    check_inter_args,
)

# --------------------------------------------------------------------------------------------------
# The mixed intra cell (DARTS search cell)


class MixedIntraCell(ArchBound, nn.Module):
    """DARTS's recurrent search cell pi (reference.md section 3), fed ``(x^_t, h^_{t-1})``.

    Node 0: ``[c0, h0] = [x^_t, h^_{t-1}] W_0``, ``s_0 = BN(h^ + sigmoid(c0) ⊙ (tanh(h0) - h^))``.
    Node ``i = 1..steps`` (seed eq. 2 with DARTS's highway edge): with ``[c_j, h_j] = s_j W_i`` (one
    ``W_i`` per node, shared by all its incoming edges; ``s_j`` variationally masked in the product)

        s_i = BN( sum_{j<i} sum_{k != none} theta^k_{ij} (s_j + sigmoid(c_j) ⊙ (f_k(h_j) - s_j)) ),

    ``theta_{ij} = softmax`` over the 5 ops of edge ``(i, j)``; ``none`` contributes nothing. Output
    (seed eq. 3): the mean of nodes ``1..steps``. BN is one ``BatchNorm1d(nhid, affine=False)`` shared
    by node 0 and every node, as in DARTS (``batchnorm=False`` drops it).

    Efficient form: per node, the stacked predecessor states go through ``W_i`` in one matmul and the
    edge sum is vectorised over predecessors, using
    ``sum_k theta^k (s + c(f_k(h) - s)) = P s + c ⊙ (sum_k theta^k f_k(h) - P s)``, ``P = sum_{k!=none} theta^k``.
    Parameters (``W0``, ``Ws.i``) are named as in :class:`ess.models.cells.DARTSCell`.
    """

    def __init__(self, ninp: int, nhid: int, steps: int = 8, batchnorm: bool = True):
        super().__init__()
        check(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "steps",
              f"expected an integer >= 1, got {steps!r}")
        self.ninp, self.nhid, self.steps = ninp, nhid, steps
        self.W0 = _uniform(ninp + nhid, 2 * nhid)
        self.Ws = nn.ParameterList([_uniform(nhid, 2 * nhid) for _ in range(steps)])
        self.bn: nn.Module = nn.BatchNorm1d(nhid, affine=False) if batchnorm else nn.Identity()

    def arch_spec(self) -> dict[str, tuple[int, ...]]:
        return {"ops": (tables.intra_edge_count(self.steps), len(PRIMITIVES))}

    def arch_probabilities(self, alphas: Mapping[str, Tensor]) -> Tensor:
        """``[steps (steps+1)/2, 5]``: softmax over ops per edge (rows :func:`ess.space.tables.intra_rows`)."""
        return F.softmax(alphas["ops"], dim=-1)

    def _prepare(self, probs: Tensor) -> Tensor:
        """The non-zero op weights of every edge, ``[steps (steps+1)/2, 4]`` (columns tanh, relu, sigmoid, identity)."""
        return probs[:, list(_NONZERO_COLS)]

    # Node 0 is the discrete cell's (same W0, same formula): reuse it rather than restate it.
    input_projection = DARTSCell.input_projection
    initial_node = DARTSCell.initial_node

    def step(self, x_proj: Tensor, h_prev: Tensor, h_mask: Tensor | None = None) -> Tensor:
        """One time step: ``x_proj`` ``[B, 2 nhid]`` (masked x^ times ``W_0[:ninp]``), ``h_prev`` ``[B, nhid]``.

        Runs the fused step (:class:`ess.kernels.IntraSearchStep`) unless the kernel backend is ``autograd``
        (or the norm module is one it does not cover), else :meth:`step_autograd`.
        """
        theta = self._weights()
        spec = kernels.norm_spec(self.bn) if kernels.fused_enabled() else None
        if spec is None or (spec.mode == "batch" and h_prev.size(0) < 2):  # BatchNorm1d raises on one row
            return self.step_autograd(x_proj, h_prev, h_mask)
        return kernels.apply_step(kernels.IntraSearchStep, self.bn, spec, x_proj, h_prev, h_mask,
                                  self.W0[self.ninp:], theta, *self.Ws)

    def step_autograd(self, x_proj: Tensor, h_prev: Tensor, h_mask: Tensor | None = None) -> Tensor:
        """The step in plain autograd ops, vectorised over each node's predecessors (differentiable twice)."""
        theta = self._weights()
        states = [self.bn(self.initial_node(x_proj, h_prev, h_mask))]
        for i in range(1, self.steps + 1):
            th = theta[tables.intra_offset(i): tables.intra_offset(i) + i]  # [i, n_ops]
            op_w, total = th.t()[:, :, None, None], th.sum(1)[:, None, None]
            s = torch.stack(states)  # [i, B, nhid]: all predecessors of node i
            s_in = s if h_mask is None else s * h_mask
            c, h = (s_in @ self.Ws[i - 1]).split(self.nhid, dim=-1)
            c = torch.sigmoid(c)
            mixed = op_w[0] * _NONZERO_ACTS[0](h)
            for w, act in zip(op_w[1:], _NONZERO_ACTS[1:]):
                mixed = mixed + w * act(h)
            ps = total * s
            states.append(self.bn((ps + c * (mixed - ps)).sum(0)))
        return torch.stack(states[1:]).mean(0)

    def to_discrete(self, genotype: IntraGenotype) -> DARTSCell:
        """A :class:`DARTSCell` of ``genotype`` holding copies of this cell's ``W_0`` and ``W_i``."""
        if genotype.steps != self.steps:
            raise ValueError(f"genotype has {genotype.steps} nodes, this cell {self.steps}")
        cell = DARTSCell(self.ninp, self.nhid, genotype).to(self.W0)
        with torch.no_grad():
            cell.W0.copy_(self.W0)
            for dst, src in zip(cell.Ws, self.Ws):
                dst.copy_(src)
        return cell


class MixedInterCell(ArchBound, nn.Module):
    """ESS's inter-cell search DAG over the last ``m`` vectors (reference.md section 2).

    Index ``j < m`` is input ``j`` (0 = newest); node ``k`` sits at index ``m + k``. Its branches are
    mixed sums over all predecessors and ops (seed eq. 2)

        a_k = sum_{j < m+k} sum_op theta^{a,op}_{k,j} op(s_j W^a_j)     (likewise b_k with W^b_j),

    with one linear map per source index ``j`` (the seed's ``o(s_j · W_j)``) and per branch side, shared
    by every node (as :class:`ess.models.cells.InterCell`, so the maps can be copied). ``theta`` is
    the softmax over all ``(j, op)`` of the branch (``softmax_scope='node'``) or over ops per ``(branch, j)``
    (``'edge'``). Node: ``s_{m+k} = a_k ⊙ b_k`` (seed eq. 4, ``'product'``), ``a_k + b_k`` (``'sum'``) or
    ``w_p (a ⊙ b) + w_s (a + b)`` with ``(w_p, w_s)`` a softmax over 2 per-cell logits (``'search'``).
    Output (seed eq. 3 + residual): ``s_0 + mean_k s_{m+k}``, or the mean alone without the residual.
    ``norm`` (:data:`ess.supernet.base.INTER_NORMS`) normalises each branch before the combination, or (``op``,
    :data:`~ess.supernet.base.OP_NORMS`) every op's activation before the weighted sums.

    Efficient form: leading dims are flattened; the ``m`` inputs go through their ``W^a_j`` and ``W^b_j``
    in one batched matmul and the input part of every branch of every node is one matrix product per side
    of the stacked activations with the stacked ``theta``; each node then adds its node-predecessor part.
    """

    def __init__(self, dim: int, m: int = 3, n_nodes: int = 3, combination: str = "product",
                 residual: bool = True, softmax_scope: str = "node", norm: str = "none"):
        super().__init__()
        check_inter_args(dim, m, n_nodes, combination, residual, softmax_scope, norm)
        self.dim, self.m, self.n_nodes = dim, m, n_nodes
        self.combination, self.residual, self.softmax_scope = combination, residual, softmax_scope
        self.norm = norm
        # W[side, j] for branch side a/b and every source j = 0 .. m + n_nodes - 2 (the last node
        # feeds only the output).
        self.W = _uniform(2, m + n_nodes - 1, dim, dim)

    def arch_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"ops": (tables.inter_row_count(self.m, self.n_nodes), len(PRIMITIVES))}
        if self.combination == "search":
            spec["combination"] = (len(COMBINATIONS),)
        return spec

    def arch_probabilities(self, alphas: Mapping[str, Tensor]) -> InterWeights:
        logits, softmax = alphas["ops"], SOFTMAX_SCOPES[self.softmax_scope]
        branches = []
        for k in range(self.n_nodes):
            start, n = tables.inter_offset(self.m, k), self.m + k
            branches.append(softmax(logits[start: start + 2 * n].view(2, n, -1)))
        comb = F.softmax(alphas["combination"], dim=-1) if self.combination == "search" else None
        return InterWeights(branches, comb)

    def _prepare(self, probs: InterWeights) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """``(theta_in, theta_nodes, combination)`` as :func:`ess.kernels.inter_search_forward` reads them.

        ``theta_in`` ``[2, n, m, 4]``: the non-zero op weights of the inputs, per side and node;
        ``theta_nodes[k-1]`` ``[2, k, 4]``: those of node ``k``'s node predecessors.
        """
        cols, m = list(_NONZERO_COLS), self.m
        theta_in = torch.stack([t[:, :m][:, :, cols] for t in probs.branches], 1)
        theta_nodes = [t[:, m:][:, :, cols] for t in probs.branches[1:]]
        return theta_in, theta_nodes, probs.combination

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """``inputs[j]`` is the j-th most recent vector (any leading shape, last dim ``dim``).

        Leading dims are flattened and the fused :class:`ess.kernels.InterSearchFunction` runs the DAG
        (the same arithmetic under plain autograd with the ``autograd`` kernel backend), with the op norm
        (``norm = "op"``) or none; the branch norms (``centre``, ``layer``) run :meth:`forward_plain`.
        """
        theta_in, theta_nodes, comb = self._weights()
        lead = inputs[0].shape[:-1]
        X = torch.stack([v.reshape(-1, self.dim) for v in inputs[: self.m]])  # [m, N, d]
        if self.norm not in kernels.FUSED_INTER_NORMS:
            out = self.forward_plain(X, theta_in, theta_nodes, comb)
        elif kernels.fused_enabled():
            out = kernels.InterSearchFunction.apply((self.combination, self.residual, self.norm), X, self.W, theta_in,
                                                    comb, *theta_nodes)
        else:
            out = kernels.inter_search_forward(X, self.W, theta_in, theta_nodes, comb, self.combination,
                                               self.residual, self.norm)[0]
        return out.view(*lead, self.dim)

    def forward_plain(self, X: Tensor, theta_in: Tensor, theta_nodes: Sequence[Tensor], comb: Tensor | None) -> Tensor:
        """The DAG in plain autograd ops on stacked inputs ``X`` ``[m, N, d]``, normalised by ``norm``: the code every
        norm runs on, and the one the fused kernels are held to (``tests/supernet/test_knobs.py``)."""
        m = self.m
        norm, combine = INTER_NORMS[self.norm], COMBINE[self.combination]
        op_norm = OP_NORMS.get(self.norm, INTER_NORMS["none"])
        acts = torch.stack([op_norm(f(X.unsqueeze(0) @ self.W[:, :m])) for f in _NONZERO_ACTS], 2)  # [2, m, 4, N, d]
        node_acts: list[Tensor] = []   # [2, 4, N, d] per node that feeds later nodes
        nodes: list[Tensor] = []
        for k in range(self.n_nodes):
            branches = torch.einsum("sjo,sjond->snd", theta_in[:, k], acts)
            if k:
                branches = branches + torch.einsum("sqo,sqond->snd", theta_nodes[k - 1], torch.stack(node_acts, 1))
            node = combine(norm(branches[0]), norm(branches[1]), comb)
            nodes.append(node)
            if k < self.n_nodes - 1:
                p = node.unsqueeze(0) @ self.W[:, m + k]
                node_acts.append(torch.stack([op_norm(f(p)) for f in _NONZERO_ACTS], 1))
        out = torch.stack(nodes).mean(0)
        return out + X[0] if self.residual else out

    def to_discrete(self, genotype: InterGenotype) -> InterCell:
        """An :class:`ess.models.cells.InterCell` of ``genotype`` holding copies of the ``W^side_j`` it uses."""
        if genotype.m != self.m:
            raise ValueError(f"genotype has m={genotype.m}, this cell m={self.m}")
        cell = InterCell(self.dim, genotype).to(self.W)
        with torch.no_grad():
            for key, w in cell.W.items():
                w.copy_(self.W["ab".index(key[0]), int(key[1:])])
        return cell
