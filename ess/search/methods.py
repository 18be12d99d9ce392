"""The search methods by name (``SearchConfig.method``): each a :class:`~ess.search.loop.Searcher`."""

from __future__ import annotations

from ess.config import save_config
from ess.runs import OnEpoch, ignore_report
from ess.search.config import SearchConfig
from ess.search.loop import Searcher, SearchResult
from ess.search.rsws import RSWSSearcher

#: ``darts``: the bilevel search (architecture weights by gradient, DARTS eqs. 6-8); ``rsws``: random search with
#: weight sharing (one random path per weight step, then shared-weight ranking)
METHODS: dict[str, type[Searcher]] = {"darts": Searcher, "rsws": RSWSSearcher}


def searcher(cfg: SearchConfig) -> Searcher:
    """The searcher of ``cfg.method``."""
    return METHODS[cfg.method](cfg)


def search(cfg: SearchConfig, *, resume: bool = False, on_epoch: OnEpoch = ignore_report) -> SearchResult:
    """Run (or continue) a search; returns the derived genotype and the per-epoch rows."""
    run = searcher(cfg)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        run.resume()
    save_config(cfg, run.run_dir / "config.yaml")
    return run.fit(on_epoch)


__all__ = ["METHODS", "search", "searcher"]
