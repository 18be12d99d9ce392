"""What every search cell shares: architecture binding, softmax scopes, inter combinations, argument checks."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ess.config import check
from ess.models.cells import INIT_RANGE
from ess.space import tables
from ess.space.genotype import COMBINATIONS
from ess.space.ops import OPS, PRIMITIVES, ZERO

SCOPES: tuple[str, ...] = tables.SCOPES
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


def _no_norm(branch: Tensor) -> Tensor:
    return branch


def _centre(branch: Tensor) -> Tensor:
    return branch - branch.mean(-1, keepdim=True)


def _layer(branch: Tensor) -> Tensor:
    return F.layer_norm(branch, branch.shape[-1:])


#: Search-only normalisation in the inter cells (the discrete cells have none, as DARTS's intra cell keeps its
#: search batch norm out of the discrete cell). On a branch, before the combination: ``centre`` subtracts each
#: row's feature mean (``sigmoid``'s 0.5 at small projections no longer dominates the architecture gradient),
#: ``layer`` also divides by the row's standard deviation (affine-free layer norm). On every candidate op, before
#: the weighted sum: ``op`` layer-normalises each op's activation, so that no op wins the gradient by its
#: offset or its slope (``sigmoid``'s is 1/4, ``identity``'s 1). ``bench/inter_balance.py`` measures each.
INTER_NORMS: dict[str, Callable[[Tensor], Tensor]] = {"none": _no_norm, "centre": _centre, "layer": _layer,
                                                      "op": _no_norm}
OP_NORMS: dict[str, Callable[[Tensor], Tensor]] = {"op": _layer}   # norms applied to each op, not the branch


def check_inter_args(dim: int, m: int, n_nodes: int, combination: str, residual: bool, softmax_scope: str,
                     norm: str = "none") -> None:
    """Validate the arguments of an inter search cell (ConfigError naming the argument)."""
    for name, value in (("dim", dim), ("m", m), ("n_inter", n_nodes)):
        check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
              f"expected an integer >= 1, got {value!r}")
    check(combination in INTER_COMBINATIONS, "combination",
          f"unknown {combination!r} (known: {', '.join(INTER_COMBINATIONS)})")
    check(isinstance(residual, bool), "residual", f"expected true or false, got {residual!r}")
    check(softmax_scope in SOFTMAX_SCOPES, "softmax_scope",
          f"unknown {softmax_scope!r} (known: {', '.join(SOFTMAX_SCOPES)})")
    check(norm in INTER_NORMS, "inter_norm", f"unknown {norm!r} (known: {', '.join(INTER_NORMS)})")
