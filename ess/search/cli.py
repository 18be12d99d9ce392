"""The search command line: ``python -m ess.search`` (presets, YAML, flags, ``--resume``, ``--smoke-test``)."""

from __future__ import annotations

from typing import Any

from ess.runs import loop_command
from ess.search.config import PRESETS, SearchConfig
from ess.search.loop import SearchResult
from ess.search.methods import search
from ess.space.description import describe


def _closing(result: SearchResult) -> dict[str, Any]:
    return {"genotype": result.genotype.to_dict(), "describe": describe(result.genotype),
            "stability": (result.selection.get("stability") or {}).get("statement")}


main = loop_command(SearchConfig, search, prog="python -m ess.search",
                    description="The ESS search: DARTS's bilevel optimisation of the supernet, or random search with "
                                "weight sharing (--method rsws).",
                    presets=PRESETS, closing=_closing)
