"""The differentiable ESS supernet: mixed (search) cells inside the search model.

Seed equations (seed-paper-summary.txt) and their use here:

* eq. 1  ``h_t = pi(h^_{t-1}, x^_t)``: :class:`ess.models.cells.ESSCell` runs it unchanged; the search model
  plugs mixed cells into it.
* eq. 2  node state ``s_i = sum_{j<i} sum_k theta^k_{ij} o^k_{ij}(s_j W_j)`` with
  ``theta = softmax(w)`` over the candidates: every edge of a search cell is a softmax-weighted sum of
  all ops (:data:`ess.space.ops.PRIMITIVES`; ``none`` is the zero op and contributes nothing).
* eq. 3  output ``s_n = mean(s_1..s_{n-1})``: the mean of the nodes (plus the residual in the inter cell).
* eq. 4  ``F(alpha; beta) = s_alpha ⊙ s_beta``: an inter node is the Hadamard product of its branches.

Two search cells:

* :class:`MixedIntraCell` is the DARTS recurrent search cell (reference.md section 3).
* :class:`MixedInterCell` is ESS's inter-cell DAG (reference.md section 2).

Both are *architecture-bound* (:class:`ArchBound`): they own only network weights; the architecture
logits are registered parameters of :class:`SearchModel` (``model.alphas``), kept apart from the network
weights, and are bound to the cells (softmaxed once) for the duration of each forward pass.
:mod:`ess.supernet.reference` holds an edge-by-edge reference implementation with the same parameters,
selected by ``implementation='reference'``.
"""

from ess.supernet.base import (
    COMBINE,
    INTER_COMBINATIONS,
    SCOPES,
    SOFTMAX_SCOPES,
    ArchBound,
    InterWeights,
    check_inter_args,
)
from ess.supernet.cells import MixedInterCell, MixedIntraCell
from ess.supernet.model import (
    IMPLEMENTATIONS,
    MODES,
    Implementation,
    SearchMode,
    SearchModel,
    SupernetConfig,
    build_search_model,
)

__all__ = [
    "COMBINE", "IMPLEMENTATIONS", "INTER_COMBINATIONS", "MODES", "SCOPES", "SOFTMAX_SCOPES", "ArchBound",
    "Implementation", "InterWeights", "MixedInterCell", "MixedIntraCell", "SearchMode", "SearchModel",
    "SupernetConfig", "build_search_model", "check_inter_args",
]
