"""The bilevel search: DARTS's architecture step (the architect) inside the search loop."""

from ess.search.config import PRESETS, SearchConfig
from ess.search.loop import Searcher, SearchResult, build_model, search

__all__ = ["PRESETS", "SearchConfig", "SearchResult", "Searcher", "build_model", "search"]
