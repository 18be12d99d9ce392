"""Reference implementation of the search cells: the equations written edge by edge, op by op.

Same parameters (names and shapes), same architecture-logit layout and same binding protocol as
:class:`ess.supernet.MixedIntraCell` and :class:`ess.supernet.MixedInterCell`, so either can load the
other's ``state_dict`` and a :class:`ess.supernet.SearchModel` can be built on these
(``build_search_model(..., implementation='reference')``) for tests and benchmarks. Written to be
obviously correct, not fast: Python loops over nodes, predecessors and ops, one matmul per edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ess.space import tables
from ess.space.genotype import COMBINATIONS
from ess.space.ops import OPS, PRIMITIVES, ZERO
from ess.supernet.base import INTER_NORMS, OP_NORMS, ArchBound, InterWeights, _uniform, check_inter_args


class ReferenceMixedIntraCell(ArchBound, nn.Module):
    """The DARTS search cell, loop form. For node ``i`` and every edge ``(i, j)`` and op ``k``:

    ``[c, h] = (s_j ⊙ h_mask) W_i``; ``o_k = s_j + sigmoid(c) ⊙ (f_k(h) - s_j)`` (``o_none = 0``);
    ``s_i = BN(sum_j sum_k softmax_k(alpha_ij) o_k)``; output ``mean(s_1..s_steps)``.
    """

    def __init__(self, ninp: int, nhid: int, steps: int = 8, batchnorm: bool = True):
        super().__init__()
        self.ninp, self.nhid, self.steps = ninp, nhid, steps
        self.W0 = _uniform(ninp + nhid, 2 * nhid)
        self.Ws = nn.ParameterList([_uniform(nhid, 2 * nhid) for _ in range(steps)])
        self.bn: nn.Module = nn.BatchNorm1d(nhid, affine=False) if batchnorm else nn.Identity()

    def arch_spec(self) -> dict[str, tuple[int, ...]]:
        return {"ops": (tables.intra_edge_count(self.steps), len(PRIMITIVES))}

    def arch_probabilities(self, alphas: Mapping[str, Tensor]) -> Tensor:
        logits = alphas["ops"]
        return torch.stack([torch.softmax(logits[row], dim=0) for row in range(logits.size(0))])

    def input_projection(self, x: Tensor) -> Tensor:
        return x @ self.W0[: self.ninp]

    def step(self, x_proj: Tensor, h_prev: Tensor, h_mask: Tensor | None = None) -> Tensor:
        theta = self._weights()
        h_in = h_prev if h_mask is None else h_prev * h_mask
        c0, h0 = (x_proj + h_in @ self.W0[self.ninp:]).split(self.nhid, dim=-1)
        states = [self.bn(h_prev + torch.sigmoid(c0) * (torch.tanh(h0) - h_prev))]
        for i in range(1, self.steps + 1):
            row_start = tables.intra_offset(i)  # edges (i, 0), ..., (i, i-1) follow
            s_i = torch.zeros_like(states[0])
            for j in range(i):
                s_j = states[j]
                s_in = s_j if h_mask is None else s_j * h_mask
                c, h = (s_in @ self.Ws[i - 1]).split(self.nhid, dim=-1)
                for k, name in enumerate(PRIMITIVES):
                    if name == ZERO:
                        out = torch.zeros_like(s_j)
                    else:
                        out = s_j + torch.sigmoid(c) * (OPS[name].activation(h) - s_j)
                    s_i = s_i + theta[row_start + j, k] * out
            states.append(self.bn(s_i))
        return torch.stack(states[1:]).mean(0)


class ReferenceMixedInterCell(ArchBound, nn.Module):
    """ESS's inter search DAG, loop form. For node ``k`` and branch ``b`` in (a, b):

    ``branch = sum_{j < m+k} sum_op theta[k][b][j, op] * op(s_j @ W[b, j])``;
    ``a, b`` normalised by ``norm``;
    node = ``a * b`` / ``a + b`` / ``w_p * a * b + w_s * (a + b)``; output ``s_0 + mean(nodes)`` (residual).
    """

    def __init__(self, dim: int, m: int = 3, n_nodes: int = 3, combination: str = "product",
                 residual: bool = True, softmax_scope: str = "node", norm: str = "none"):
        super().__init__()
        check_inter_args(dim, m, n_nodes, combination, residual, softmax_scope, norm)
        self.norm = norm
        self.dim, self.m, self.n_nodes = dim, m, n_nodes
        self.combination, self.residual, self.softmax_scope = combination, residual, softmax_scope
        self.W = _uniform(2, m + n_nodes - 1, dim, dim)  # [branch side, source j]

    def arch_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"ops": (tables.inter_row_count(self.m, self.n_nodes), len(PRIMITIVES))}
        if self.combination == "search":
            spec["combination"] = (len(COMBINATIONS),)
        return spec

    def arch_probabilities(self, alphas: Mapping[str, Tensor]) -> InterWeights:
        logits = alphas["ops"]
        row = 0
        branches = []
        for k in range(self.n_nodes):
            per_branch = []
            for _ in tables.BRANCHES:
                block = logits[row: row + self.m + k]  # [m + k, 5]: this branch's (j, op) logits
                row += self.m + k
                if self.softmax_scope == "node":
                    theta = torch.softmax(block.flatten(), dim=0).view_as(block)
                else:
                    theta = torch.stack([torch.softmax(block[j], dim=0) for j in range(block.size(0))])
                per_branch.append(theta)
            branches.append(torch.stack(per_branch))
        comb = torch.softmax(alphas["combination"], dim=0) if self.combination == "search" else None
        return InterWeights(branches, comb)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        weights: InterWeights = self._weights()
        states = list(inputs[: self.m])
        nodes = []
        for k in range(self.n_nodes):
            theta = weights.branches[k]
            branch_values = []
            for b in range(len(tables.BRANCHES)):
                acc = torch.zeros_like(states[0])
                for j in range(self.m + k):
                    proj = states[j] @ self.W[b, j]
                    for o, name in enumerate(PRIMITIVES):
                        act = OPS[name].activation(proj)
                        if name != ZERO:
                            act = OP_NORMS.get(self.norm, INTER_NORMS["none"])(act)
                        acc = acc + theta[b, j, o] * act
                branch_values.append(acc)
            a, b = (INTER_NORMS[self.norm](v) for v in branch_values)
            if self.combination == "product":
                node = a * b
            elif self.combination == "sum":
                node = a + b
            else:
                w = weights.combination
                node = w[COMBINATIONS.index("product")] * (a * b) + w[COMBINATIONS.index("sum")] * (a + b)
            states.append(node)
            nodes.append(node)
        out = torch.stack(nodes).mean(0)
        return states[0] + out if self.residual else out


__all__ = ["ReferenceMixedInterCell", "ReferenceMixedIntraCell"]
