"""The search: DARTS's bilevel search (the architect inside the loop) and random search with weight sharing."""

from ess.search.config import PRESETS, SearchConfig
from ess.search.loop import Searcher, SearchResult, build_model
from ess.search.methods import METHODS, load_search, search, searcher

__all__ = ["METHODS", "PRESETS", "SearchConfig", "SearchResult", "Searcher", "build_model", "load_search", "search",
           "searcher"]
