"""The study's design: the arms it compares, its stages, its pre-registered primary analysis (:class:`StudyDesign`).

``tune_jobs/study.py`` runs it, ``JobConfig`` checks ``--arms``, ``--stages`` and ``--design`` against it,
``analysis`` names the arms and renders the design from it. An arm is one row of :data:`ARMS`; a stage, a name in
:data:`STAGES` that the job runs in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ess.config import check
from ess.errors import ConfigError

KINDS = ("search", "baseline", "random")
STAGES = ("search", "baselines", "random", "tau", "planted", "transfer", "wikitext2")


@dataclass(frozen=True)
class Arm:
    """One arm: ``search`` (a search of ``mode`` with ``search`` overrides, then a retrain of its genotype),
    ``baseline`` (a retrain of ``cell``: ``lstm`` or a built-in genotype) or ``random`` (the best of
    ``random_k`` genotypes of ``mode``'s space by a short retrain, then retrained as the others)."""

    name: str
    kind: str
    mode: str = "joint"
    search: Mapping[str, Any] = field(default_factory=dict)
    cell: str = ""
    about: str = ""


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("intra", "search", "intra", about="DARTS: the intra cell searched, the inter cells the identity"),
    Arm("inter", "search", "inter", about="the inter cells searched around the fixed DARTS_V2 cell"),
    Arm("joint", "search", "joint", about="ESS: intra and inter cells searched at once"),
    Arm("joint-beta", "search", "joint", {"beta_decay": 25.0},
        about="joint with beta-decay regularisation (beta-DARTS; weight 0 -> 25 over the search)"),
    Arm("joint-pt", "search", "joint", {"derive": "perturbation"},
        about="joint with perturbation-based derivation (DARTS-PT)"),
    Arm("joint-nonorm", "search", "joint", {"inter_norm": "none"},
        about="joint without inter-cell normalisation"),
    Arm("rsws", "search", "joint", {"method": "rsws", "inter_norm": "none", "batchnorm": False},
        about="random search with weight sharing in the joint space (Li & Talwalkar 2019): one random path per "
              "step, the best of rank_samples by shared-weight ranking"),
    Arm("joint-rank", "search", "joint", {"derive": "rank"},
        about="joint with ranked derivation: the best of its argmax, one-edit neighbours and random genotypes"),
    Arm("lstm", "baseline", cell="lstm", about="an LSTM of the same parameter count"),
    Arm("darts_v2", "baseline", cell="DARTS_V2", about="the published DARTS_V2 cell"),
    Arm("random", "random", "joint", about="random search: the best of k random joint genotypes"),
)}


@dataclass(frozen=True)
class StudyDesign:
    """The pre-registered primary analysis of a study, written down before it runs (docs/results.md "Design").

    ``primary``: the comparisons ``"a:b"`` that answer the question, Holm-adjusted over these only (every other
    comparison the study reports is exploratory); ``metric``: the primary metric of a retrained model (chosen by
    nothing: test perplexity is reported, never used to select); ``alpha`` the family-wise level, ``target_gain``
    the relative difference (ratio of geometric means ``1 - target_gain``) to be detected with ``power``;
    ``noise_sd``: the pilot's seed sd of the log metric the seeds per arm were computed from (0: none given);
    ``pilot``: where that figure comes from; ``stopping``: when the study ends.
    """

    primary: tuple[str, ...] = field(default=("joint:intra", "joint:rsws", "joint:random"), metadata={
        "help": "the primary comparisons a:b (Holm over these only)"})
    metric: str = field(default="retrain_test_ppl", metadata={"help": "the primary metric of a retrained model"})
    alpha: float = field(default=0.05, metadata={"help": "family-wise level of the primary comparisons"})
    target_gain: float = field(default=0.03, metadata={"help": "relative gain to detect (0.03: a ratio of 0.97)"})
    power: float = field(default=0.8, metadata={"help": "power at the target gain"})
    noise_sd: float = field(default=0.0, metadata={
        "help": "the pilot's seed sd of the log metric behind the seeds per arm (0: not given)"})
    pilot: str = field(default="", metadata={"help": "where the pilot's noise figure comes from"})
    stopping: str = field(default="every trial of every arm runs to its end; no interim analysis; a trial that fails "
                                  "after its restarts is reported missing, never replaced", metadata={
        "help": "the stopping rule"})

    def __post_init__(self) -> None:
        for pair in self.primary:
            a, _, b = str(pair).partition(":")
            check(bool(a) and bool(b) and a != b, "primary", f"expected comparisons a:b of two arms, got {pair!r}")
            for arm in (a, b):
                check(arm in ARMS, "primary", f"unknown arm {arm!r} in {pair!r} (known: {', '.join(ARMS)})")
        check(self.metric in ("retrain_test_ppl", "retrain_valid_ppl"), "metric",
              f"unknown {self.metric!r} (known: retrain_test_ppl, retrain_valid_ppl)")
        for name in ("alpha", "target_gain", "power"):
            check(0 < getattr(self, name) < 1, name, f"must be in (0, 1), got {getattr(self, name)}")
        check(self.noise_sd >= 0, "noise_sd", f"must be >= 0, got {self.noise_sd}")

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [tuple(p.split(":", 1)) for p in self.primary]   # type: ignore[misc]


def named_arms(names: tuple[str, ...]) -> list[Arm]:
    """The named arms, in order (one-line ConfigError for an unknown name)."""
    for name in names:
        if name not in ARMS:
            raise ConfigError(f"arms: unknown arm {name!r} (known: {', '.join(ARMS)})")
    return [ARMS[name] for name in names]


__all__ = ["ARMS", "Arm", "KINDS", "STAGES", "StudyDesign", "named_arms"]
