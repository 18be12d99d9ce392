"""Random search with weight sharing (RSWS; Li & Talwalkar, UAI 2019): the supernet trained one random path at a time.

Each weight step draws one genotype uniformly from the searched space (:func:`ess.search.ranking.sample`:
every intra node a predecessor among the earlier nodes and an op other than ``none``, as the reference code
draws them; every inter node both branches likewise, so no inter node is dropped: a ``none`` branch would zero
its node's product and train neither branch's map) and trains the supernet's weights on that path alone
(:mod:`ess.supernet.path`: only the drawn ops run). There is no architecture step and no architecture weight.

After each epoch a fixed pool of ``rank_pool`` random genotypes (drawn once) is ranked by shared-weight
validation loss on the search's validation tokens: the epoch's genotype is the pool's best and the epoch's
``valid/ppl`` its perplexity (the search's stability is read from these). At the end the pool's best and
``rank_samples`` fresh random genotypes are ranked on ``rank_tokens`` tokens and the best is the search's
genotype (the reference ranks 1,000 random architectures on the validation data and keeps the best).
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from ess.search.config import SearchConfig
from ess.search.loop import Searcher
from ess.search.ranking import Ranking, rank, sample, samples, space_of
from ess.space.derive import Derivation, identity_share
from ess.supernet.path import PathPlan, path_forward


def _state_of(rng: random.Random) -> list[Any]:
    """``rng``'s state as plain lists (a checkpoint loads with ``weights_only=True``)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


class RSWSSearcher(Searcher):
    """A :class:`~ess.search.loop.Searcher` whose weight steps each train one random path, with no architecture
    step, whose epochs are read out by ranking a pool of genotypes, and whose genotype is the best ranked."""

    def __init__(self, cfg: SearchConfig):
        super().__init__(cfg)
        self.space = space_of(self.model)
        self.sampler = random.Random(f"rsws-paths-{cfg.seed}")
        self.pool = samples(f"rsws-pool-{cfg.seed}", cfg.rank_pool, self.space)
        self._ranking: Ranking | None = None

    # -- the method -------------------------------------------------------------------------------------
    def architecture_step(self, batch, state, valid_pos, valid_state, train_pos, lr):
        return valid_pos, valid_state   # nothing to step: no architecture weights

    def forward(self, data: torch.Tensor, state):
        """One uniformly drawn path, trained alone (the reference's ``set_model_arch(sample_arch())``)."""
        genotype = sample(self.sampler, self.space)
        return path_forward(self.model, PathPlan.of(self.model, [genotype]), data, state)

    def _pool_ranking(self) -> Ranking:
        return rank(self.model, [("pool", g) for g in self.pool], self.valid_source(self.cfg.rank_tokens),
                    self.cfg.bptt)

    def validate(self) -> float:
        """The pool ranked; the epoch's validation loss is its best genotype's."""
        self._ranking = self._pool_ranking()
        return self._ranking.best.loss

    def readout(self) -> tuple[Derivation, dict[str, float], dict[str, Any]]:
        ranking = self._ranking or self._pool_ranking()
        found = Derivation(ranking.best.genotype, notes=(f"the best of the {len(ranking.entries)} pool genotypes "
                                                         "by shared-weight validation loss",), rule=self.rule)
        parts = list(self.model.searched_parts())
        losses = [e.loss for e in ranking.entries]
        diagnostics = {f"genotype/{p}/identity_share": identity_share(found.genotype, (p,)) for p in parts}
        diagnostics.update({"genotype/identity_share": identity_share(found.genotype, tuple(parts)),
                            "rank/pool_mean_ppl": math.exp(min(sum(losses) / len(losses), 50.0)),
                            "rank/pool_spread": max(losses) - min(losses), "rank/seconds": ranking.seconds})
        return found, diagnostics, {"rankings": ranking.to_dict()}

    def select(self) -> tuple[Derivation, dict[str, Any]]:
        ranking = self._ranking or self._pool_ranking()
        return self.ranked([("pool", ranking.best.genotype)], None)

    # -- checkpoints: the path sampler continues exactly ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sampler": _state_of(self.sampler)}

    def load_state_dict(self, state: dict[str, Any], restore_rng: bool = True) -> None:
        super().load_state_dict(state, restore_rng)
        if restore_rng and "sampler" in state:
            version, internal, gauss = state["sampler"]
            self.sampler.setstate((version, tuple(internal), gauss))


__all__ = ["RSWSSearcher"]
