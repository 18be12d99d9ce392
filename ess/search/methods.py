"""The search methods by name (``SearchConfig.method``): each a :class:`~ess.search.loop.Searcher`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ess.config import config_from_mapping, load_yaml, save_config
from ess.errors import ConfigError
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


def load_search(run_dir: str | Path) -> Searcher:
    """A finished (or stopped) search read back from its run directory (``config.yaml``, ``checkpoint.pt``): its
    supernet, data and state, e.g. to score genotypes on its paths (:func:`ess.search.ranking.path_losses` with
    its :meth:`~ess.search.loop.Searcher.valid_source`)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no search config (is {run_dir} a search's run directory?)")
    cfg = config_from_mapping(SearchConfig, load_yaml(path), str(path))
    run = searcher(dataclasses.replace(cfg, run_dir=str(run_dir), progress=False, draw=False))
    run.resume()
    return run


def search(cfg: SearchConfig, *, resume: bool = False, on_epoch: OnEpoch = ignore_report) -> SearchResult:
    """Run (or continue) a search; returns the derived genotype and the per-epoch rows."""
    run = searcher(cfg)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        run.resume()
    save_config(cfg, run.run_dir / "config.yaml")
    return run.fit(on_epoch)


__all__ = ["METHODS", "load_search", "search", "searcher"]
