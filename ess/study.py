"""The study's design: the arms it compares (searches with their knobs, fixed cells, random search), its stages.

``tune_jobs/study.py`` runs it, ``JobConfig`` checks ``--arms`` and ``--stages`` against it, ``analysis`` names the
arms from it. An arm is one row of :data:`ARMS`; a stage, a name in :data:`STAGES` that the job runs in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ess.errors import ConfigError

KINDS = ("search", "baseline", "random")
STAGES = ("search", "baselines", "random", "transfer", "wikitext2", "planted")


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
    Arm("lstm", "baseline", cell="lstm", about="an LSTM of the same parameter count"),
    Arm("darts_v2", "baseline", cell="DARTS_V2", about="the published DARTS_V2 cell"),
    Arm("random", "random", "joint", about="random search: the best of k random joint genotypes"),
)}


def named_arms(names: tuple[str, ...]) -> list[Arm]:
    """The named arms, in order (one-line ConfigError for an unknown name)."""
    for name in names:
        if name not in ARMS:
            raise ConfigError(f"arms: unknown arm {name!r} (known: {', '.join(ARMS)})")
    return [ARMS[name] for name in names]


__all__ = ["ARMS", "Arm", "KINDS", "STAGES", "named_arms"]
