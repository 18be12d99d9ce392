"""The differentiable ESS supernet: mixed (search) cells and the search model.

Seed equations (seed-paper-summary.txt) and their use here:

* eq. 1  ``h_t = pi(h^_{t-1}, x^_t)``: :class:`ess.cells.ESSCell` runs it unchanged; the search model
  plugs mixed cells into it.
* eq. 2  node state ``s_i = sum_{j<i} sum_k theta^k_{ij} o^k_{ij}(s_j W_j)`` with
  ``theta = softmax(w)`` over the candidates: every edge of a search cell is a softmax-weighted sum of
  all ops (:data:`ess.ops.PRIMITIVES`; ``none`` is the zero op and contributes nothing).
* eq. 3  output ``s_n = mean(s_1..s_{n-1})``: the mean of the nodes (plus the residual in the inter cell).
* eq. 4  ``F(alpha; beta) = s_alpha ⊙ s_beta``: an inter node is the Hadamard product of its branches.

Two search cells:

* :class:`MixedIntraCell` is the DARTS recurrent search cell (reference.md section 3).
* :class:`MixedInterCell` is ESS's inter-cell DAG (reference.md section 2).

Both are *architecture-bound* (:class:`ArchBound`): they own only network weights; the architecture
logits are registered parameters of :class:`SearchModel` (``model.alphas``), kept apart from the network
weights, and are bound to the cells (softmaxed once) for the duration of each forward pass.
:mod:`ess.supernet_reference` holds an edge-by-edge reference implementation with the same parameters,
selected by ``implementation='reference'``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ess import derive, kernels
from ess.cells import INIT_RANGE, DARTSCell, ESSCell, InterCell, State
from ess.config import check
from ess.genotype import COMBINATIONS, DARTS_V2, IDENTITY_INTER, ESSGenotype, InterGenotype, IntraGenotype
from ess.model import LMOutput, RNNModel
from ess.ops import OPS, PRIMITIVES, ZERO

SCOPES: tuple[str, ...] = derive.SCOPES
INTER_COMBINATIONS: tuple[str, ...] = (*COMBINATIONS, "search")

# The non-zero ops in PRIMITIVES order: their column in the weight tables and their activation.
_NONZERO_COLS: tuple[int, ...] = tuple(k for k, name in enumerate(PRIMITIVES) if name != ZERO)
_NONZERO_ACTS: tuple[Callable[[Tensor], Tensor], ...] = tuple(OPS[PRIMITIVES[k]].activation for k in _NONZERO_COLS)


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-INIT_RANGE, INIT_RANGE))


# --------------------------------------------------------------------------------------------------
# Binding architecture weights to search cells


class ArchBound(abc.ABC):
    """Mixin of search cells whose architecture logits live outside them (in the search model).

    A cell declares the shapes of its logits (:meth:`arch_spec`), turns logits into its softmax weights
    (:meth:`arch_probabilities`, canonical form shared by every implementation) and, while bound
    (:meth:`bind` / :meth:`bound`), reads those weights in ``forward``/``step``. Softmaxes are computed
    once per bind (one forward pass of the model), not once per time step.
    """

    _bound_weights: Any = None

    @abc.abstractmethod
    def arch_spec(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of each architecture-logit tensor the cell needs."""

    @abc.abstractmethod
    def arch_probabilities(self, alphas: Mapping[str, Tensor]) -> Any:
        """The cell's softmax weights (canonical form) from its logits."""

    def _prepare(self, probs: Any) -> Any:
        """Turn canonical softmax weights into whatever the forward pass reads (default: as is)."""
        return probs

    def bind(self, alphas: Mapping[str, Tensor] | None = None, *, probs: Any = None) -> None:
        """Bind logits (softmaxed here) or, as a test hook, softmax weights directly; ``bind()`` unbinds."""
        if alphas is not None:
            probs = self.arch_probabilities(alphas)
        self._bound_weights = None if probs is None else self._prepare(probs)

    @contextlib.contextmanager
    def bound(self, alphas: Mapping[str, Tensor] | None = None, *, probs: Any = None) -> Iterator[Any]:
        """Context manager: bound for the block, unbound after (no stale graph is kept alive)."""
        self.bind(alphas, probs=probs)
        try:
            yield self
        finally:
            self.bind(None)

    def _weights(self) -> Any:
        if self._bound_weights is None:
            raise RuntimeError(f"{type(self).__name__}: architecture weights are not bound; run it through "
                               "SearchModel.forward or inside `with cell.bound(alphas):`")
        return self._bound_weights


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
    Parameters (``W0``, ``Ws.i``) are named as in :class:`ess.cells.DARTSCell`.
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
        return {"ops": (derive.intra_edge_count(self.steps), len(PRIMITIVES))}

    def arch_probabilities(self, alphas: Mapping[str, Tensor]) -> Tensor:
        """``[steps (steps+1)/2, 5]``: softmax over ops per edge (rows :func:`ess.derive.intra_rows`)."""
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
            th = theta[derive.intra_offset(i): derive.intra_offset(i) + i]  # [i, n_ops]
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


# --------------------------------------------------------------------------------------------------
# The mixed inter cell (ESS)


@dataclass
class InterWeights:
    """Canonical softmax weights of an inter cell.

    ``branches[k]``: ``[2, m + k, 5]`` theta of node ``k``'s branches a and b over ``(j, op)``;
    ``combination``: ``[2]`` weights of (product, sum) when the combination is searched, else ``None``.
    """

    branches: list[Tensor]
    combination: Tensor | None = None


def _softmax_node(logits: Tensor) -> Tensor:
    """Scope ``node`` (I-DARTS): one softmax per branch over all its ``(j, op)``: ``[2, J, 5]``."""
    return F.softmax(logits.reshape(logits.size(0), -1), dim=-1).view_as(logits)


def _softmax_edge(logits: Tensor) -> Tensor:
    """Scope ``edge`` (DARTS): one softmax over ops per ``(branch, j)``, summed over ``j`` in the branch."""
    return F.softmax(logits, dim=-1)


SOFTMAX_SCOPES: dict[str, Callable[[Tensor], Tensor]] = {"node": _softmax_node, "edge": _softmax_edge}


def _product(a: Tensor, b: Tensor, w: Tensor | None) -> Tensor:
    return a * b  # seed eq. 4


def _sum(a: Tensor, b: Tensor, w: Tensor | None) -> Tensor:
    return a + b


def _searched(a: Tensor, b: Tensor, w: Tensor | None) -> Tensor:
    assert w is not None
    return w[0] * (a * b) + w[1] * (a + b)  # w in COMBINATIONS order: (product, sum)


COMBINE: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]] = {
    "product": _product, "sum": _sum, "search": _searched}


def check_inter_args(dim: int, m: int, n_nodes: int, combination: str, residual: bool, softmax_scope: str) -> None:
    """Validate the arguments of an inter search cell (ConfigError naming the argument)."""
    for name, value in (("dim", dim), ("m", m), ("n_inter", n_nodes)):
        check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
              f"expected an integer >= 1, got {value!r}")
    check(combination in INTER_COMBINATIONS, "combination",
          f"unknown {combination!r} (known: {', '.join(INTER_COMBINATIONS)})")
    check(isinstance(residual, bool), "residual", f"expected true or false, got {residual!r}")
    check(softmax_scope in SOFTMAX_SCOPES, "softmax_scope",
          f"unknown {softmax_scope!r} (known: {', '.join(SOFTMAX_SCOPES)})")


class MixedInterCell(ArchBound, nn.Module):
    """ESS's inter-cell search DAG over the last ``m`` vectors (reference.md section 2).

    Index ``j < m`` is input ``j`` (0 = newest); node ``k`` sits at index ``m + k``. Its branches are
    mixed sums over all predecessors and ops (seed eq. 2)

        a_k = sum_{j < m+k} sum_op theta^{a,op}_{k,j} op(s_j W^a_j)     (likewise b_k with W^b_j),

    with one linear map per source index ``j`` (the seed's ``o(s_j · W_j)``) and per branch side, shared
    by every node (as :class:`ess.cells.InterCell`, so the maps can be copied). ``theta`` is
    the softmax over all ``(j, op)`` of the branch (``softmax_scope='node'``) or over ops per ``(branch, j)``
    (``'edge'``). Node: ``s_{m+k} = a_k ⊙ b_k`` (seed eq. 4, ``'product'``), ``a_k + b_k`` (``'sum'``) or
    ``w_p (a ⊙ b) + w_s (a + b)`` with ``(w_p, w_s)`` a softmax over 2 per-cell logits (``'search'``).
    Output (seed eq. 3 + residual): ``s_0 + mean_k s_{m+k}``, or the mean alone without the residual.

    Efficient form: leading dims are flattened; the ``m`` inputs go through their ``W^a_j`` and ``W^b_j``
    in one batched matmul and the input part of every branch of every node is one matrix product per side
    of the stacked activations with the stacked ``theta``; each node then adds its node-predecessor part.
    """

    def __init__(self, dim: int, m: int = 3, n_nodes: int = 3, combination: str = "product",
                 residual: bool = True, softmax_scope: str = "node"):
        super().__init__()
        check_inter_args(dim, m, n_nodes, combination, residual, softmax_scope)
        self.dim, self.m, self.n_nodes = dim, m, n_nodes
        self.combination, self.residual, self.softmax_scope = combination, residual, softmax_scope
        # W[side, j] for branch side a/b and every source j = 0 .. m + n_nodes - 2 (the last node
        # feeds only the output).
        self.W = _uniform(2, m + n_nodes - 1, dim, dim)

    def arch_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"ops": (derive.inter_row_count(self.m, self.n_nodes), len(PRIMITIVES))}
        if self.combination == "search":
            spec["combination"] = (len(COMBINATIONS),)
        return spec

    def arch_probabilities(self, alphas: Mapping[str, Tensor]) -> InterWeights:
        logits, softmax = alphas["ops"], SOFTMAX_SCOPES[self.softmax_scope]
        branches = []
        for k in range(self.n_nodes):
            start, n = derive.inter_offset(self.m, k), self.m + k
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
        (the same arithmetic under plain autograd with the ``autograd`` kernel backend).
        """
        theta_in, theta_nodes, comb = self._weights()
        lead = inputs[0].shape[:-1]
        X = torch.stack([v.reshape(-1, self.dim) for v in inputs[: self.m]])  # [m, N, d]
        if kernels.fused_enabled():
            out = kernels.InterSearchFunction.apply((self.combination, self.residual), X, self.W, theta_in, comb,
                                                    *theta_nodes)
        else:
            out = kernels.inter_search_forward(X, self.W, theta_in, theta_nodes, comb, self.combination,
                                               self.residual)[0]
        return out.view(*lead, self.dim)

    def to_discrete(self, genotype: InterGenotype) -> InterCell:
        """An :class:`ess.cells.InterCell` of ``genotype`` holding copies of the ``W^side_j`` it uses."""
        if genotype.m != self.m:
            raise ValueError(f"genotype has m={genotype.m}, this cell m={self.m}")
        cell = InterCell(self.dim, genotype).to(self.W)
        with torch.no_grad():
            for key, w in cell.W.items():
                w.copy_(self.W["ab".index(key[0]), int(key[1:])])
        return cell


# --------------------------------------------------------------------------------------------------
# Modes and implementations (registries)


@dataclass(frozen=True)
class Implementation:
    """A pair of search-cell classes with the same parameters and arch-weight layout."""

    intra: type[nn.Module]
    inter: type[nn.Module]


def _fast() -> Implementation:
    return Implementation(MixedIntraCell, MixedInterCell)


def _reference() -> Implementation:
    from ess.supernet_reference import ReferenceMixedInterCell, ReferenceMixedIntraCell

    return Implementation(ReferenceMixedIntraCell, ReferenceMixedInterCell)


IMPLEMENTATIONS: dict[str, Callable[[], Implementation]] = {"fast": _fast, "reference": _reference}


def _searched_intra(cfg: SupernetConfig, impl: Implementation) -> nn.Module:
    return impl.intra(cfg.ninp, cfg.nhid, cfg.steps, cfg.batchnorm)


def _fixed_intra(cfg: SupernetConfig, impl: Implementation) -> nn.Module:
    return DARTSCell(cfg.ninp, cfg.nhid, cfg.intra_genotype)


def _searched_inter(cfg: SupernetConfig, impl: Implementation, dim: int) -> nn.Module:
    return impl.inter(dim, cfg.m, cfg.n_inter, cfg.combination, cfg.residual, cfg.softmax_scope)


def _identity_inter(cfg: SupernetConfig, impl: Implementation, dim: int) -> nn.Module:
    return InterCell(dim, IDENTITY_INTER)


# Builders by "is this part searched?"
_INTRA_BUILDERS: dict[bool, Callable[[SupernetConfig, Implementation], nn.Module]] = {
    True: _searched_intra, False: _fixed_intra}
_INTER_BUILDERS: dict[bool, Callable[[SupernetConfig, Implementation, int], nn.Module]] = {
    True: _searched_inter, False: _identity_inter}


@dataclass(frozen=True)
class SearchMode:
    """What is searched. A part that is not searched is fixed: the intra cell to the given genotype,
    the inter cells to the identity (``InterCell(dim, IDENTITY_INTER)``)."""

    name: str
    searches_intra: bool
    searches_inter: bool
    description: str

    def build_intra(self, cfg: SupernetConfig, impl: Implementation) -> nn.Module:
        return _INTRA_BUILDERS[self.searches_intra](cfg, impl)

    def build_inter(self, cfg: SupernetConfig, impl: Implementation, dim: int) -> nn.Module:
        return _INTER_BUILDERS[self.searches_inter](cfg, impl, dim)


MODES: dict[str, SearchMode] = {mode.name: mode for mode in (
    SearchMode("intra", True, False, "intra cell searched, inter cells fixed to identity: exactly the DARTS search"),
    SearchMode("inter", False, True, "intra cell fixed to a given genotype (default DARTS_V2), inter cells searched"),
    SearchMode("joint", True, True, "intra and inter cells searched at once (ESS joint learning)"),
)}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _fraction(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0


@dataclass(frozen=True)
class SupernetConfig:
    """Everything that defines a search model; validated on construction (ConfigError naming the field).

    ``steps`` is used when the intra cell is searched, ``n_inter``/``m``/``combination``/``residual``/
    ``softmax_scope`` when the inter cells are, ``intra_genotype`` when the intra cell is fixed.
    """

    ntoken: int
    mode: str = "joint"
    ninp: int = 300
    nhid: int = 300
    steps: int = 8
    n_inter: int = 3
    m: int = 3
    combination: str = "product"
    residual: bool = True
    softmax_scope: str = "node"
    intra_genotype: IntraGenotype = field(default=DARTS_V2.intra)
    dropout: float = 0.75
    dropouth: float = 0.25
    dropoutx: float = 0.75
    dropouti: float = 0.2
    dropoute: float = 0.0
    batchnorm: bool = True
    implementation: str = "fast"

    def __post_init__(self) -> None:
        if isinstance(self.intra_genotype, ESSGenotype):
            object.__setattr__(self, "intra_genotype", self.intra_genotype.intra)
        check(self.mode in MODES, "mode", f"unknown {self.mode!r} (known: {', '.join(MODES)})")
        check(self.implementation in IMPLEMENTATIONS, "implementation",
              f"unknown {self.implementation!r} (known: {', '.join(IMPLEMENTATIONS)})")
        mode = MODES[self.mode]
        counts = ("ntoken", "ninp", "nhid", "m", *(("steps",) if mode.searches_intra else ()),
                  *(("n_inter",) if mode.searches_inter else ()))
        for name in counts:
            value = getattr(self, name)
            check(_count(value), name, f"expected an integer >= 1, got {value!r}")
        check(self.ninp == self.nhid, "nhid", f"tied weights need ninp == nhid (got {self.ninp} and {self.nhid})")
        check(self.combination in INTER_COMBINATIONS, "combination",
              f"unknown {self.combination!r} (known: {', '.join(INTER_COMBINATIONS)})")
        check(self.softmax_scope in SOFTMAX_SCOPES, "softmax_scope",
              f"unknown {self.softmax_scope!r} (known: {', '.join(SOFTMAX_SCOPES)})")
        check(isinstance(self.residual, bool), "residual", f"expected true or false, got {self.residual!r}")
        check(isinstance(self.intra_genotype, IntraGenotype), "intra_genotype",
              f"expected an IntraGenotype or ESSGenotype, got {type(self.intra_genotype).__name__}")
        for name in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
            check(_fraction(getattr(self, name)), name, f"expected a number in [0, 1), got {getattr(self, name)!r}")
        check(isinstance(self.batchnorm, bool), "batchnorm", f"expected true or false, got {self.batchnorm!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["intra_genotype"] = derive.intra_to_dict(self.intra_genotype)
        return out


# --------------------------------------------------------------------------------------------------
# The search model


_PART_OF_CELL = {"intra": "intra", "history": "history", "input": "inputs"}  # arch part -> ESSCell attribute


class SearchModel(RNNModel):
    """The ESS search model: :class:`ess.model.RNNModel` around an :class:`ess.cells.ESSCell` of search cells.

    Architecture logits are registered parameters in ``self.alphas`` (``intra``, ``history``,
    ``history_combination``, ``input``, ``input_combination``; only the searched parts of the mode),
    initialised ``1e-3 * randn`` as DARTS (which also breaks the symmetry of a node's two branches).
    Every forward pass binds their softmaxes to the search cells.
    """

    def __init__(self, config: SupernetConfig):
        impl = IMPLEMENTATIONS[config.implementation]()
        mode = MODES[config.mode]
        cell = ESSCell(config.ninp, config.nhid, mode.build_intra(config, impl),
                       mode.build_inter(config, impl, config.nhid), mode.build_inter(config, impl, config.ninp),
                       dropoutx=config.dropoutx, dropouth=config.dropouth)
        super().__init__(config.ntoken, config.ninp, config.nhid, cell, dropout=config.dropout,
                         dropouti=config.dropouti, dropoute=config.dropoute)
        self.config, self.mode = config, mode
        self.alphas = nn.ParameterDict()
        for part, module in self.searched_parts().items():
            for key, shape in module.arch_spec().items():
                self.alphas[self._alpha_name(part, key)] = nn.Parameter(1e-3 * torch.randn(*shape))

    # ---- structure

    @staticmethod
    def _alpha_name(part: str, key: str) -> str:
        return part if key == "ops" else f"{part}_{key}"

    def parts(self) -> dict[str, nn.Module]:
        """The three parts of the cell: ``intra`` (pi), ``history`` (f over h), ``input`` (g over x)."""
        return {part: getattr(self.cell, attr) for part, attr in _PART_OF_CELL.items()}

    def searched_parts(self) -> dict[str, nn.Module]:
        return {part: module for part, module in self.parts().items() if isinstance(module, ArchBound)}

    def part_logits(self, part: str) -> dict[str, Tensor]:
        module = self.searched_parts()[part]
        return {key: self.alphas[self._alpha_name(part, key)] for key in module.arch_spec()}

    # ---- parameters

    def named_arch_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"alphas.{name}", p) for name, p in self.alphas.items()]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits of the searched parts (one Adam optimises them all)."""
        return list(self.alphas.values())

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every other parameter (the tied embedding/decoder once), in ``named_parameters`` order."""
        arch = {id(p) for p in self.alphas.values()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in arch]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weight_parameters()]

    # ---- forward

    @contextlib.contextmanager
    def bound_architecture(self) -> Iterator[None]:
        """Bind the softmaxed architecture weights to the search cells for the block."""
        parts = self.searched_parts()
        try:
            for part, module in parts.items():
                module.bind(self.part_logits(part))
            yield
        finally:
            for module in parts.values():
                module.bind(None)

    def forward(self, tokens: Tensor, state: State) -> LMOutput:
        with self.bound_architecture():
            return super().forward(tokens, state)

    # ---- architecture read-outs

    @torch.no_grad()
    def arch_weights(self) -> dict[str, Any]:
        """JSON-serialisable softmax tables of every searched part, with row/column labels.

        ``intra``: edges ``"i<-j"`` x ops; ``history``/``input``: each branch's ``(j, op)`` table and the
        combination weights; parts fixed in this mode carry their genotype. See :mod:`ess.derive`.
        """
        out: dict[str, Any] = {"format": derive.FORMAT, "mode": self.mode.name, "columns": list(PRIMITIVES)}
        searched = self.searched_parts()
        for part, module in self.parts().items():
            if part not in searched:
                out[part] = derive.fixed_part(module.genotype)
            elif part == "intra":
                out[part] = derive.intra_table(module.arch_probabilities(self.part_logits(part)), module.steps)
            else:
                w = module.arch_probabilities(self.part_logits(part))
                out[part] = derive.inter_table(w.branches, module.m, module.softmax_scope, module.combination,
                                               module.residual, w.combination)
        return out

    def genotype(self) -> ESSGenotype:
        """The discrete architecture (rules in :mod:`ess.derive`)."""
        return derive.derive_genotype(self.arch_weights())

    def arch_entropy(self) -> float:
        """Mean entropy (nats) of the softmax distributions of the searched parts."""
        return derive.arch_entropy(self.arch_weights())

    # ---- copies

    def new(self, copy_weights: bool = False) -> SearchModel:
        """A model of the same config and architecture logits (DARTS's ``new``), same device and dtype.

        Network weights are freshly initialised unless ``copy_weights``. (:class:`ess.architect.Architect`
        does its unrolled step functionally, with ``torch.func.functional_call``, and needs no copy.)
        """
        ref = self.encoder.weight
        fresh = type(self)(self.config).to(device=ref.device, dtype=ref.dtype)
        if copy_weights:
            fresh.load_state_dict(self.state_dict())
        else:
            with torch.no_grad():
                for dst, src in zip(fresh.arch_parameters(), self.arch_parameters()):
                    dst.copy_(src)
        return fresh


def build_search_model(ntoken: int, *, mode: str, ninp: int = 300, nhid: int = 300, steps: int = 8, n_inter: int = 3,
                       m: int = 3, combination: str = "product", residual: bool = True, softmax_scope: str = "node",
                       intra_genotype: ESSGenotype | IntraGenotype = DARTS_V2, dropout: float = 0.75,
                       dropouth: float = 0.25, dropoutx: float = 0.75, dropouti: float = 0.2, dropoute: float = 0.0,
                       batchnorm: bool = True, implementation: str = "fast") -> SearchModel:
    """Build and validate a :class:`SearchModel` (``ConfigError`` naming the first bad argument).

    ``mode``: ``intra`` (DARTS), ``inter`` (intra fixed to ``intra_genotype``) or ``joint``;
    ``implementation``: ``fast`` (vectorised) or ``reference`` (edge by edge, :mod:`ess.supernet_reference`).
    """
    return SearchModel(SupernetConfig(
        ntoken=ntoken, mode=mode, ninp=ninp, nhid=nhid, steps=steps, n_inter=n_inter, m=m, combination=combination,
        residual=residual, softmax_scope=softmax_scope, intra_genotype=intra_genotype, dropout=dropout,
        dropouth=dropouth, dropoutx=dropoutx, dropouti=dropouti, dropoute=dropoute, batchnorm=batchnorm,
        implementation=implementation))


__all__ = [
    "COMBINE", "IMPLEMENTATIONS", "INTER_COMBINATIONS", "MODES", "SCOPES", "SOFTMAX_SCOPES", "ArchBound",
    "Implementation", "InterWeights", "MixedInterCell", "MixedIntraCell", "SearchMode", "SearchModel",
    "SupernetConfig", "build_search_model", "check_inter_args",
]
