"""The trainables' phases (:mod:`ess.adapters.ray.trainables`) without Ray: what a search trial reports."""

from __future__ import annotations

import pytest

from ess.adapters.ray.trainables import run_search
from ess.config import config_from_mapping
from ess.search import SearchConfig
from ess.space.derive import identity_share
from ess.space.refs import load_genotype

from conftest import DATA_DIR, TINY_SEARCH, requires_ptb


class FakeTrial:
    """What run_search needs of :class:`ess.adapters.ray.trial.Trial`: it keeps the reported rows."""

    stopped = False

    def __init__(self):
        self.rows = []

    def report(self, row, checkpoint=False, last=False):
        self.rows.append(dict(row))

    def wants_checkpoint(self, epoch, epochs):
        return False


@requires_ptb
@pytest.mark.parametrize("derive", ["argmax", "perturbation"])
def test_the_final_row_carries_the_genotype_the_search_returns(tmp_path, derive):
    cfg = config_from_mapping(SearchConfig, {**TINY_SEARCH, "data_dir": DATA_DIR, "run_dir": str(tmp_path),
                                             "derive": derive, "pt_tokens": 400}, "test")
    trial = FakeTrial()
    result, last = run_search(trial, cfg)
    returned = load_genotype(str(tmp_path / "genotype.json"))   # what the retrain reads
    assert trial.rows[-1] == last and last["genotype"] == returned.to_json(None)
    parts = ("intra", "history", "input")
    assert last["selected/identity_share"] == pytest.approx(identity_share(returned, parts))
    for part in parts:
        assert last[f"selected/{part}/identity_share"] == pytest.approx(identity_share(returned, (part,)))
        assert 0 <= last[f"selected/{part}/decided_share"] <= 1
    argmax = load_genotype(str(tmp_path / "genotypes" / f"epoch_{cfg.epochs:03d}.json"))
    # the epoch rows keep describing each epoch's argmax derivation
    assert last["genotype/identity_share"] == pytest.approx(identity_share(argmax, parts))
    if derive == "argmax":
        assert returned == argmax
