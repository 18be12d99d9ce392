"""Registry of the candidate operations on every edge of the intra- and inter-cell DAGs.

The candidate set is DARTS's recurrent one (reference.md section 3): ``none`` (the zero op),
``tanh``, ``relu``, ``sigmoid`` and ``identity``. Every op is applied to the linear map of its
predecessor (``o(s_j W)``); ``none`` and ``identity`` skip the activation. The order of
:data:`PRIMITIVES` is the column order of every architecture-weight table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Op:
    name: str
    activation: Callable[[torch.Tensor], torch.Tensor]
    weightless: bool  # no weight matrix of its own: only the zero op (identity still maps s_j W)


def _zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


OPS: dict[str, Op] = {
    "none": Op("none", _zero, weightless=True),
    "tanh": Op("tanh", torch.tanh, weightless=False),
    "relu": Op("relu", torch.relu, weightless=False),
    "sigmoid": Op("sigmoid", torch.sigmoid, weightless=False),
    "identity": Op("identity", _identity, weightless=False),
}

PRIMITIVES: tuple[str, ...] = ("none", "tanh", "relu", "sigmoid", "identity")
ZERO = "none"


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function of op ``name`` (KeyError-free: unknown names raise ValueError)."""
    try:
        return OPS[name].activation
    except KeyError:
        raise ValueError(f"unknown op {name!r} (known: {', '.join(PRIMITIVES)})") from None
