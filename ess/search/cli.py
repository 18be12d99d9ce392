"""The search command line: ``python -m ess.search`` (presets, YAML, flags, ``--resume``, ``--smoke-test``)."""

from __future__ import annotations

from typing import Any

from ess.runs import loop_command
from ess.search.config import PRESETS, SearchConfig
from ess.search.loop import SearchResult, search
from ess.space.description import describe


def _closing(result: SearchResult) -> dict[str, Any]:
    return {"genotype": result.genotype.to_dict(), "describe": describe(result.genotype)}


main = loop_command(SearchConfig, search, prog="python -m ess.search",
                    description="The differentiable ESS search: bilevel optimisation of the supernet.",
                    presets=PRESETS, closing=_closing)
