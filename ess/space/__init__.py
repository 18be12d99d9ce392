"""The ESS search space: candidate ops (:mod:`~ess.space.ops`), genotypes (:mod:`~ess.space.genotype`),
derivation from architecture weights (:mod:`~ess.space.derive`), pictures (:mod:`~ess.space.draw`).

The genotype types are re-exported here.

``draw_genotype`` is imported lazily so that importing the genotypes does not import matplotlib.
"""

from typing import Any

from ess.space.genotype import (
    BUILTINS,
    COMBINATIONS,
    DARTS_V1,
    DARTS_V2,
    ENAS,
    IDENTITY_INTER,
    Edge,
    ESSGenotype,
    InterGenotype,
    InterNode,
    IntraGenotype,
    genotype_from_dict,
    parse_genotype_json,
    save_genotype,
)
from ess.space.refs import load_genotype

__all__ = [
    "BUILTINS", "COMBINATIONS", "DARTS_V1", "DARTS_V2", "ENAS", "IDENTITY_INTER", "Edge", "ESSGenotype",
    "InterGenotype", "InterNode", "IntraGenotype", "draw_genotype", "genotype_from_dict", "load_genotype",
    "parse_genotype_json", "save_genotype",
]


def __getattr__(name: str) -> Any:
    if name == "draw_genotype":
        from ess.space.draw import draw_genotype

        return draw_genotype
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
