"""Fused forward/backward steps of the recurrent cells: the fast path's arithmetic, written out by hand.

One time step of the DARTS search cell (:class:`ess.supernet.MixedIntraCell`), of the discrete DARTS
cell (:class:`ess.models.cells.DARTSCell`) and the whole inter search DAG (:class:`ess.supernet.MixedInterCell`,
without normalisation or with the op norm, ``--inter-norm op``: :data:`FUSED_INTER_NORMS`; the branch norms
``centre`` and ``layer`` run the cell's plain code) are each one :class:`torch.autograd.Function`: the forward
runs with no autograd graph (one matmul per node over all its predecessors stacked, all ops of a node's edges
in one elementwise pass, batch norm fused in), the backward is written by hand:

* only the gradients autograd asks for are computed (``ctx.needs_input_grad``, by argument name:
  :class:`~ess.kernels.policy.Needs`): the architecture step of the search (weights frozen) does no
  weight-gradient matmul, the weight step no architecture reduction;
* the elementwise work between two matmuls is one pure function per step direction, run eagerly or
  compiled by ``torch.compile`` (inductor), which fuses it into a few vectorised loops, or, on CPU in
  float32, one C++ pass (:mod:`ess.kernels.cpu`);
* under ``torch.no_grad`` (evaluation) nothing is kept for a backward: steps are applied through
  :func:`apply_step`, and :func:`linear_cross_entropy` computes the loss alone;
* the DARTS step's weight gradients are multiplied out once per sequence (:class:`SequenceGrads`): one
  product of inner dimension ``T B`` per weight instead of ``T`` thin ones added up by autograd.

The cells keep their plain autograd formulation (``step_autograd``) and :mod:`ess.supernet.reference`
keeps the edge-by-edge oracle; ``tests/kernels`` holds every backend to the same outputs and gradients.

Modules: :mod:`~ess.kernels.policy` (backend, thresholds, :class:`Kernel`, :func:`apply_step`),
:mod:`~ess.kernels.activations` (:data:`KERNEL_OPS`), :mod:`~ess.kernels.norm`,
:mod:`~ess.kernels.intra` (:class:`IntraSearchStep`), :mod:`~ess.kernels.darts` (:class:`DartsStep`),
:mod:`~ess.kernels.inter` (:class:`InterSearchFunction`), :mod:`~ess.kernels.loss`
(:func:`linear_cross_entropy`), :mod:`~ess.kernels.cpu` (builds ``csrc/ess_cpu.cpp``).

Decision table
--------------

The backend is ``$ESS_KERNELS`` at import (default ``auto``), then :func:`set_backend` or the
:func:`backend` context manager. For one step of a cell on a state ``[B, nhid]``, with
``elements = B * nhid`` (:func:`~ess.kernels.policy.select`; ``python -m ess.kernels info`` prints this
table for the machine it runs on)::

    backend   | CPU float32                  | CPU float64               | CUDA (any dtype)
    ----------+------------------------------+---------------------------+---------------------------
    auto      | eager    below CPP_MIN       | eager   below COMPILE_MIN | eager   below COMPILE_MIN
              | cpp      from  CPP_MIN       | compile from  COMPILE_MIN | compile from  COMPILE_MIN
    cpp       | cpp      at every size       | as auto                   | as auto
    compile   | compile  at every size       | compile                   | compile
    eager     | eager                        | eager                     | eager
    autograd  | the cells' plain autograd code, no fused step, no fused loss (differentiable twice)

    CPP_MIN = CPP_MIN_ELEMENTS = 2,048          (the C++ module's one-off build pays from here)
    COMPILE_MIN = COMPILE_MIN_ELEMENTS = 16,384 (compiled kernels pay from here: 64 x 256)

* Where the C++ module is off (``ESS_CPU_KERNELS=0``) or cannot be built, ``auto`` and ``cpp`` run CPU
  float32 as CPU float64: ``compile`` from ``COMPILE_MIN``, else ``eager``; so does the inter cell beyond
  ``CPP_MAX_INTER_NODES = 16`` nodes. ``compile`` turns into ``eager`` for the rest of the process, with
  one warning, the first time ``torch.compile`` fails.
* The fused loss (:func:`linear_cross_entropy`: the decoder inside the cross-entropy, no ``[T, B, V]``
  logits) runs under every backend but ``autograd``; it is plain torch, the same on every device.
* The reference (``SearchConfig.implementation = "reference"``, ``build_search_model(...,
  implementation="reference")``) is not a backend: it swaps the supernet's cells for the edge-by-edge
  ones of :mod:`ess.supernet.reference`, which call none of these steps (on any device or dtype); the
  loss is still fused unless the backend is ``autograd``, as the tests and benchmarks set it.
* ``autograd`` is needed for double backward (``create_graph=True`` through the model): the fused
  backward is not itself differentiable. The second-order search's finite differences do not need it.

Thresholds are attributes of the module that reads them at each call; set one there
(``ess.kernels.policy.CPP_MIN_ELEMENTS = 0``; this package shows their values at import).

Environment (read once, at import or at first use):

* ``ESS_KERNELS``: the initial backend, one of :data:`BACKENDS`.
* ``ESS_CPU_KERNELS=0``: never build or use the C++ module.
* ``ESS_FAST_TANH=0``: compiled float32 kernels keep ``torch.tanh`` instead of the rational approximation
  (3e-7 relative error at most; the C++ kernels always use it).
* ``ESS_MALLOC_TRIM=0``: leave glibc's allocator alone (by default the first fused CPU step stops it from
  returning freed memory to the kernel: :func:`tune_cpu_allocator`).
"""

from __future__ import annotations

from ess.kernels import cpu, policy
from ess.kernels.activations import KERNEL_OPS, supports
from ess.kernels.darts import (
    DARTS_GROUP_COLUMNS,
    DartsPlan,
    DartsStep,
    SequenceGrads,
    darts_backward,
    darts_forward,
    darts_group_size,
)
from ess.kernels.inter import (
    CPP_MAX_INTER_NODES,
    FUSED_INTER_NORMS,
    OP_NORM_EPS,
    InterSearchFunction,
    inter_search_backward,
    inter_search_forward,
)
from ess.kernels.intra import IntraSearchStep, intra_search_backward, intra_search_forward
from ess.kernels.loss import CE_CHUNK_BYTES, LinearCrossEntropy, linear_cross_entropy
from ess.kernels.norm import NormSpec, norm_spec, update_running_stats
from ess.kernels.policy import (
    BACKENDS,
    COMPILE_MIN_ELEMENTS,
    CPP_MIN_ELEMENTS,
    Kernel,
    Needs,
    apply_step,
    backend,
    fused_enabled,
    get_backend,
    select,
    set_backend,
    tune_cpu_allocator,
)

_state = policy._state  # the policy's state (tests read whether torch.compile failed in this process)

__all__ = [
    "BACKENDS",
    "CE_CHUNK_BYTES",
    "COMPILE_MIN_ELEMENTS",
    "CPP_MAX_INTER_NODES",
    "CPP_MIN_ELEMENTS",
    "DARTS_GROUP_COLUMNS",
    "KERNEL_OPS",
    "DartsPlan",
    "DartsStep",
    "FUSED_INTER_NORMS",
    "InterSearchFunction",
    "IntraSearchStep",
    "Kernel",
    "LinearCrossEntropy",
    "Needs",
    "NormSpec",
    "OP_NORM_EPS",
    "SequenceGrads",
    "apply_step",
    "backend",
    "cpu",
    "darts_backward",
    "darts_forward",
    "darts_group_size",
    "fused_enabled",
    "get_backend",
    "inter_search_backward",
    "inter_search_forward",
    "intra_search_backward",
    "intra_search_forward",
    "linear_cross_entropy",
    "norm_spec",
    "select",
    "set_backend",
    "supports",
    "tune_cpu_allocator",
    "update_running_stats",
]
