"""The bilevel search: the architect (DARTS's architecture step) and the loop around it."""

from ess.search.config import PRESETS, SearchConfig
from ess.search.loop import Searcher, SearchResult, build_model, search

__all__ = ["PRESETS", "SearchConfig", "SearchResult", "Searcher", "build_model", "search"]
