"""The search model around :class:`ess.models.cells.ESSCell`: its modes, implementations, supernet config."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from ess.config import check, check_genotype
from ess.models.cells import DARTSCell, ESSCell, InterCell, State
from ess.models.lm import LMOutput, RNNModel
from ess.space import derive, tables
from ess.space.diagnostics import epoch_metrics
from ess.space.genotype import IDENTITY_INTER, ESSGenotype, IntraGenotype
from ess.space.ops import OPS, PRIMITIVES, ZERO
from ess.supernet.base import INTER_COMBINATIONS, INTER_NORMS, SOFTMAX_SCOPES, ArchBound
from ess.supernet.cells import MixedInterCell, MixedIntraCell

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
    from ess.supernet.reference import ReferenceMixedInterCell, ReferenceMixedIntraCell

    return Implementation(ReferenceMixedIntraCell, ReferenceMixedInterCell)


IMPLEMENTATIONS: dict[str, Callable[[], Implementation]] = {"fast": _fast, "reference": _reference}


def _searched_intra(cfg: SupernetConfig, impl: Implementation) -> nn.Module:
    return impl.intra(cfg.ninp, cfg.nhid, cfg.steps, cfg.batchnorm)


def _fixed_intra(cfg: SupernetConfig, impl: Implementation) -> nn.Module:
    return DARTSCell(cfg.ninp, cfg.nhid, cfg.intra_cell)


def _searched_inter(cfg: SupernetConfig, impl: Implementation, dim: int) -> nn.Module:
    return impl.inter(dim, cfg.m, cfg.n_inter, cfg.combination, cfg.residual, cfg.softmax_scope, cfg.inter_norm)


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

    @property
    def parts(self) -> tuple[str, ...]:
        """The genotype parts this mode searches (``intra``, ``history``, ``input``)."""
        return ("intra",) * self.searches_intra + ("history", "input") * self.searches_inter

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


def check_ops(ops: Any, name: str) -> tuple[str, ...]:
    """A part's candidate ops, validated, in :data:`PRIMITIVES` order (``ConfigError`` naming ``name``)."""
    check(isinstance(ops, (tuple, list)) and all(isinstance(op, str) for op in ops), name,
          f"expected a list of op names, got {ops!r}")
    unknown = [op for op in ops if op not in OPS]
    check(not unknown, name, f"unknown op {unknown[0] if unknown else ''!r} (known: {', '.join(PRIMITIVES)})")
    check(len(set(ops)) == len(ops), name, f"an op is listed twice: {list(ops)}")
    check(any(op != ZERO for op in ops), name, f"needs at least one op besides {ZERO!r}, got {list(ops)}")
    return tuple(op for op in PRIMITIVES if op in ops)


def _ref_or_cell(value: Any) -> bool:
    return isinstance(value, (str, IntraGenotype, ESSGenotype))


#: metadata of a field that defines the supernet's parameters or its data: it must match when a run resumes
FIXED = {"resume": "fixed"}


@dataclass(frozen=True)
class SupernetFields:
    """The fields that define a search model, declared once: :class:`SupernetConfig` (the model) and
    :class:`ess.search.SearchConfig` (a search run) both inherit them, with their defaults and checks.

    ``steps`` is used when the intra cell is searched, ``n_inter``/``m``/``combination``/``residual``/
    ``softmax_scope``/``inter_norm`` when the inter cells are, ``intra_genotype`` (a built-in name, a genotype
    file or a genotype) when the intra cell is fixed. ``intra_ops``/``inter_ops`` are each part's candidate ops
    (an op left out gets weight 0: its logit is masked before the softmax). Fields with :data:`FIXED` metadata
    must match when a run resumes.
    """

    mode: str = field(default="joint", metadata={**FIXED, "help": f"what is searched: {', '.join(MODES)}"})
    emsize: int = field(default=300, metadata={**FIXED, "help": "embedding size (tied: equals nhid)"})
    nhid: int = field(default=300, metadata={**FIXED, "help": "hidden size"})
    steps: int = field(default=8, metadata={**FIXED, "help": "intra-cell nodes"})
    n_inter: int = field(default=3, metadata={**FIXED, "help": "nodes of each inter cell"})
    m: int = field(default=3, metadata={**FIXED, "help": "inter-cell window: h_{t-1..t-m}, x_{t..t-m+1}"})
    combination: str = field(default="product", metadata={**FIXED, "help": "inter node: product, sum or search"})
    residual: bool = field(default=True, metadata={**FIXED, "help": "inter output = newest input + mean(nodes)"})
    softmax_scope: str = field(default="node", metadata={
        **FIXED, "help": "inter softmax: node (I-DARTS) or edge (DARTS)"})
    intra_genotype: str | IntraGenotype | ESSGenotype = field(default="DARTS_V2", metadata={
        **FIXED, "help": "fixed intra cell in inter mode (a built-in name or a genotype file)"})
    batchnorm: bool = field(default=True, metadata={**FIXED, "help": "affine-free batch norm on intra nodes"})
    implementation: str = field(default="fast", metadata={"help": f"{' or '.join(IMPLEMENTATIONS)}"})
    intra_ops: tuple[str, ...] = field(default=PRIMITIVES, metadata={
        **FIXED, "help": "candidate ops of the intra cell, e.g. none,tanh,relu,sigmoid (a no-identity ablation)"})
    inter_ops: tuple[str, ...] = field(default=PRIMITIVES, metadata={
        **FIXED, "help": "candidate ops of the inter cells"})
    inter_norm: str = field(default="op", metadata={
        **FIXED, "help": f"search-only normalisation in the inter cells: {', '.join(INTER_NORMS)} (docs/method.md 10)"})
    emb_init: float = field(default=0.1, metadata={
        **FIXED, "help": "embedding initialised U(-r, r): AWD-LSTM 0.1, DARTS's search 0.04"})
    dropout: float = field(default=0.75, metadata={"help": "locked dropout on the cell output"})
    dropouth: float = field(default=0.25, metadata={"help": "variational dropout on h and node inputs"})
    dropoutx: float = field(default=0.75, metadata={"help": "variational dropout on x"})
    dropouti: float = field(default=0.2, metadata={"help": "locked dropout on the embeddings"})
    dropoute: float = field(default=0.0, metadata={"help": "word dropout"})

    def __post_init__(self) -> None:
        check(self.mode in MODES, "mode", f"unknown mode {self.mode!r} (known: {', '.join(MODES)})")
        check(self.implementation in IMPLEMENTATIONS, "implementation",
              f"unknown implementation {self.implementation!r} (known: {', '.join(IMPLEMENTATIONS)})")
        mode = MODES[self.mode]
        counts = ("emsize", "nhid", "m", *(("steps",) if mode.searches_intra else ()),
                  *(("n_inter",) if mode.searches_inter else ()))
        for name in counts:
            value = getattr(self, name)
            check(_count(value), name, f"must be positive, got {value}" if isinstance(value, int) else
                  f"expected an integer >= 1, got {value!r}")
        check(self.emsize == self.nhid, "nhid", f"tied weights need emsize == nhid ({self.emsize} != {self.nhid})")
        check(self.combination in INTER_COMBINATIONS, "combination",
              f"unknown combination {self.combination!r} (known: {', '.join(INTER_COMBINATIONS)})")
        check(self.combination != "search" or mode.searches_inter, "combination",
              f"'search' searches the inter-cell combination weights, but mode {self.mode!r} fixes the inter "
              "cells to the identity (use product or sum, or mode inter or joint)")
        check(self.softmax_scope in SOFTMAX_SCOPES, "softmax_scope",
              f"unknown softmax_scope {self.softmax_scope!r} (known: {', '.join(SOFTMAX_SCOPES)})")
        check(self.inter_norm in INTER_NORMS, "inter_norm",
              f"unknown {self.inter_norm!r} (known: {', '.join(INTER_NORMS)})")
        for name in ("residual", "batchnorm"):
            check(isinstance(getattr(self, name), bool), name, f"expected true or false, got {getattr(self, name)!r}")
        check(_ref_or_cell(self.intra_genotype), "intra_genotype",
              f"expected a genotype name, file or genotype, got {type(self.intra_genotype).__name__}")
        if not mode.searches_intra and isinstance(self.intra_genotype, str):
            check_genotype(self.intra_genotype, "intra_genotype")
        object.__setattr__(self, "intra_ops", check_ops(self.intra_ops, "intra_ops"))
        object.__setattr__(self, "inter_ops", check_ops(self.inter_ops, "inter_ops"))
        check(isinstance(self.emb_init, (int, float)) and not isinstance(self.emb_init, bool)
              and 0 < self.emb_init < 10, "emb_init", f"must be in (0, 10), got {self.emb_init!r}")
        for name in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
            check(_fraction(getattr(self, name)), name, f"must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def ninp(self) -> int:
        """The input size of the cell: the embedding size."""
        return self.emsize

    @property
    def intra_cell(self) -> IntraGenotype:
        """The fixed intra cell, resolved (the one place its reference becomes a genotype)."""
        from ess.space.refs import load_genotype

        g = self.intra_genotype
        return g if isinstance(g, IntraGenotype) else (g if isinstance(g, ESSGenotype) else load_genotype(g)).intra


def supernet_fields(config: Any) -> dict[str, Any]:
    """The :class:`SupernetFields` values of any config that has them (a SearchConfig, a SupernetConfig)."""
    return {f.name: getattr(config, f.name) for f in fields(SupernetFields)}


#: the fields that must match when a run resumes, as declared by :data:`FIXED`
SUPERNET_FIXED: tuple[str, ...] = tuple(f.name for f in fields(SupernetFields) if f.metadata.get("resume") == "fixed")


@dataclass(frozen=True)
class SupernetConfig(SupernetFields):
    """Everything that defines a search model (:class:`SupernetFields`) and its vocabulary size; validated on
    construction (ConfigError naming the field)."""

    ntoken: int = field(default=0, kw_only=True, metadata={"help": "vocabulary size"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check(_count(self.ntoken), "ntoken", f"expected an integer >= 1, got {self.ntoken!r}")

    @classmethod
    def of(cls, config: Any, ntoken: int) -> SupernetConfig:
        """The supernet of a run config (:class:`ess.search.SearchConfig`) over ``ntoken`` words."""
        return cls(ntoken=ntoken, **supernet_fields(config))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["intra_genotype"] = tables.intra_to_dict(self.intra_cell)
        out["intra_ops"], out["inter_ops"] = list(self.intra_ops), list(self.inter_ops)
        return out


# --------------------------------------------------------------------------------------------------
# The search model


_PART_OF_CELL = {"intra": "intra", "history": "history", "input": "inputs"}  # arch part -> ESSCell attribute


class SearchModel(RNNModel):
    """The ESS search model: a :class:`~ess.models.lm.RNNModel` whose :class:`~ess.models.cells.ESSCell`
    holds search cells.

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
                         dropouti=config.dropouti, dropoute=config.dropoute, init_range=config.emb_init)
        self.config, self.mode = config, mode
        self.alphas = nn.ParameterDict()
        self.ops: dict[str, tuple[str, ...]] = {}
        for part, module in self.searched_parts().items():
            self.ops[part] = config.intra_ops if part == "intra" else config.inter_ops
            for key, shape in module.arch_spec().items():
                self.alphas[self._alpha_name(part, key)] = nn.Parameter(1e-3 * torch.randn(*shape))
            # not a candidate: logit -inf before the softmax (weight 0, gradient 0); not saved in checkpoints
            self.register_buffer(f"_dropped_{part}", torch.tensor([op not in self.ops[part] for op in PRIMITIVES]),
                                 persistent=False)

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
        """The part's logits by key, ops outside the part's candidate set masked to ``-inf``."""
        module = self.searched_parts()[part]
        out = {key: self.alphas[self._alpha_name(part, key)] for key in module.arch_spec()}
        dropped = getattr(self, f"_dropped_{part}")
        if bool(dropped.any()):
            out["ops"] = out["ops"].masked_fill(dropped, float("-inf"))
        return out

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

    def log_partition(self) -> Tensor:
        """Mean ``log sum exp`` of the logits over every softmax distribution of the searched parts.

        beta-DARTS's beta-decay regulariser (Ye et al., CVPR 2022, eq. 11: a smooth maximum of each
        distribution's logits), here over the distributions of :func:`ess.space.tables.distributions`:
        intra edges, inter branches (scope ``node``) or branch rows (scope ``edge``), the combination logits.
        """
        values: list[Tensor] = []
        for part, module in self.searched_parts().items():
            logits = self.part_logits(part)
            if part == "intra":
                values.append(torch.logsumexp(logits["ops"], -1))
                continue
            for k in range(module.n_nodes):
                start, n = tables.inter_offset(module.m, k), module.m + k
                block = logits["ops"][start: start + 2 * n].view(2, n, -1)
                values.append(torch.logsumexp(block.reshape(2, -1) if module.softmax_scope == "node" else block,
                                              -1).flatten())
            if "combination" in logits:
                values.append(torch.logsumexp(logits["combination"], -1).reshape(1))
        return torch.cat(values).mean()

    @contextlib.contextmanager
    def overridden(self, probs: dict[str, Any]) -> Iterator[None]:
        """Run forward passes with these softmax weights (canonical form, by part) instead of the logits'."""
        self._override = probs
        try:
            yield
        finally:
            self._override = {}

    _override: dict[str, Any] = {}

    @contextlib.contextmanager
    def bound_architecture(self) -> Iterator[None]:
        """Bind the softmaxed architecture weights to the search cells for the block."""
        parts = self.searched_parts()
        try:
            for part, module in parts.items():
                if part in self._override:
                    module.bind(probs=self._override[part])
                else:
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
        combination weights; parts fixed in this mode carry their genotype. See :mod:`ess.space.derive`.
        """
        out: dict[str, Any] = {"format": tables.FORMAT, "mode": self.mode.name, "columns": list(PRIMITIVES)}
        searched = self.searched_parts()
        for part, module in self.parts().items():
            if part not in searched:
                out[part] = tables.fixed_part(module.genotype)
            elif part == "intra":
                out[part] = tables.intra_table(module.arch_probabilities(self.part_logits(part)), module.steps,
                                               self.ops[part])
            else:
                w = module.arch_probabilities(self.part_logits(part))
                out[part] = tables.inter_table(w.branches, module.m, module.softmax_scope, module.combination,
                                               module.residual, w.combination, self.ops[part])
        return out

    def derivation(self, rule: derive.DeriveRule = derive.DEFAULT_RULE) -> derive.Derivation:
        """The discrete architecture and every choice behind it (rules in :mod:`ess.space.derive`)."""
        return derive.derivation(self.arch_weights(), rule)

    def genotype(self, rule: derive.DeriveRule = derive.DEFAULT_RULE) -> ESSGenotype:
        """The discrete architecture (rules in :mod:`ess.space.derive`)."""
        return self.derivation(rule).genotype

    def arch_entropy(self) -> float:
        """Mean relative entropy of the searched parts (1 = uniform; :func:`ess.space.tables.arch_entropy`)."""
        return tables.arch_entropy(self.arch_weights())

    def diagnostics(self, rule: derive.DeriveRule = derive.DEFAULT_RULE) -> tuple[derive.Derivation, dict[str, float]]:
        """The derivation and its collapse/decision metrics (:mod:`ess.space.diagnostics`)."""
        weights = self.arch_weights()
        found = derive.derivation(weights, rule)
        return found, epoch_metrics(weights, found)

    # ---- copies

    def new(self, copy_weights: bool = False) -> SearchModel:
        """A model of the same config and architecture logits (DARTS's ``new``), same device and dtype.

        Network weights are freshly initialised unless ``copy_weights``. (:class:`ess.search.architect.Architect`
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


def build_search_model(ntoken: int, **values: Any) -> SearchModel:
    """``SearchModel(SupernetConfig(ntoken=ntoken, **values))``: build and validate (``ConfigError`` naming the
    field). Defaults are :class:`SupernetFields`' (the search's), ``inter_norm='op'`` among them."""
    return SearchModel(SupernetConfig(ntoken=ntoken, **values))
