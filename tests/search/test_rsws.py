"""Random search with weight sharing and ranked derivation: what a user relies on, on real PTB."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from ess.checkpoint import load_checkpoint
from ess.errors import ConfigError
from ess.search import METHODS, PRESETS, SearchConfig, load_search, search, searcher
from ess.search.config import METHODS as METHOD_NAMES
from ess.search.loop import TIMING_KEYS
from ess.search.ranking import path_losses, sample
from ess.space.refs import load_genotype

from conftest import requires_ptb

TINY = SearchConfig(**{**PRESETS["smoke"], "emsize": 16, "nhid": 16, "steps": 3, "n_inter": 2, "m": 2,
                       "batch_size": 8, "max_eval_tokens": 1_200, "epochs": 2,
                       "draw": False, "method": "rsws", "rank_samples": 12, "rank_pool": 4, "rank_tokens": 600,
                       "threads": 1, "lr": 10.0, "inter_norm": "none", "batchnorm": False,
                       "max_train_tokens": 8_000})
TIMING = TIMING_KEYS


def test_the_method_registry_is_the_configs():
    assert tuple(METHODS) == METHOD_NAMES


@pytest.mark.parametrize("changes,pattern", [
    (dict(derive="perturbation"), "^derive: rsws has no architecture weights to perturb"),
    (dict(order=2), "^order: rsws takes no architecture step"),
    (dict(beta_decay=1.0), "^beta_decay: rsws has no architecture weights"),
    (dict(method="enas"), "^method: unknown 'enas'"),
    (dict(rank_tokens=10), "^rank_tokens: must be >= 100"),
    (dict(valid_part="select"), "^valid_part: unknown 'select'"),
    (dict(inter_norm="op"), "^inter_norm: rsws trains single paths, where 'op' normalisation"),
])
def test_bad_rsws_configs_are_one_line(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        dataclasses.replace(TINY, **changes)


@requires_ptb
def test_rsws_learns_ranks_and_returns_the_best_ranked_genotype(tmp_path):
    cfg = dataclasses.replace(TINY, run_dir=str(tmp_path))
    first = searcher(cfg)
    before = first.validate()
    result = search(cfg)
    assert result.rows[-1]["valid/loss"] < before - 0.5
    for row in result.rows:   # no architecture weights: no entropy or decided share is claimed
        assert not any(k.startswith("arch/") or k.endswith("decided_share") for k in row)
        assert row["valid/ppl"] <= row["rank/pool_mean_ppl"]
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection["criterion"] == "rank" and selection["candidates"] == ranking["candidates"] <= 13
    # how the epochs' genotypes (the pool's best) moved: epoch 2 against epoch 1
    epochs = [load_genotype(tmp_path / "genotypes" / f"epoch_{e:03d}.json") for e in (1, 2)]
    moved = selection["stability"]
    assert moved["epochs"] == 2 and moved["middle"] == 1 and moved["changed_epochs"] == int(epochs[0] != epochs[1])
    assert ranking["entries"][0]["genotype"] == result.genotype.to_dict() == load_genotype(
        tmp_path / "genotype.json").to_dict()
    assert [e["loss"] for e in ranking["entries"]] == sorted(e["loss"] for e in ranking["entries"])
    assert (tmp_path / "rankings" / "epoch_002.json").is_file()
    # read back from its run directory, the supernet scores the chosen genotype as the search did
    again = load_search(tmp_path)
    score = path_losses(again.model, [result.genotype], again.valid_source(cfg.rank_tokens), cfg.bptt)[0]
    assert score == pytest.approx(selection["loss"], abs=1e-6)
    assert (tmp_path / "genotypes" / "epoch_002.json").is_file()


@requires_ptb
def test_rsws_resume_continues_exactly(tmp_path):
    a = search(dataclasses.replace(TINY, run_dir=str(tmp_path / "a")))
    search(dataclasses.replace(TINY, run_dir=str(tmp_path / "b"), epochs=1))
    b = search(dataclasses.replace(TINY, run_dir=str(tmp_path / "b")), resume=True)
    assert a.genotype == b.genotype
    ca, cb = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert ca["sampler"] == cb["sampler"]
    strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in c["rows"]] for c in (ca, cb)]
    assert strip[0] == strip[1]


@requires_ptb
def test_a_weight_step_trains_only_the_sampled_path(tmp_path):
    """The inter maps of sources the drawn path does not read get no gradient (weight decay off)."""
    run = searcher(dataclasses.replace(TINY, run_dir=str(tmp_path), wdecay=0.0, mode="inter", m=3, n_inter=3))
    twin = random.Random()
    twin.setstate(run.sampler.getstate())
    drawn = sample(twin, run.space)
    before = run.model.cell.history.W.detach().clone()
    data, targets = run.train_data[:6], run.train_data[1:7]
    out = run.forward(data, run.model.init_state(run.cfg.batch_size))
    torch.nn.functional.cross_entropy(out.logits.reshape(-1, run.ntoken), targets.reshape(-1)).backward()
    run.optimizer.step()
    after = run.model.cell.history.W.detach()
    used = {(side, e.pred) for n in drawn.history.nodes for side, e in enumerate((n.a, n.b))}
    for side in (0, 1):
        for j in range(after.size(1)):
            assert torch.equal(after[side, j], before[side, j]) != ((side, j) in used), (side, j)


@requires_ptb
def test_derive_rank_takes_the_best_of_the_argmax_its_neighbours_and_samples(tmp_path):
    cfg = dataclasses.replace(TINY, run_dir=str(tmp_path), method="darts", derive="rank", epochs=1)
    result = search(cfg)
    selection = json.loads((tmp_path / "selection.json").read_text())
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert selection["criterion"] == "rank" and ranking["origins"]["argmax"] == 1
    assert ranking["origins"]["neighbour"] > 10 and ranking["origins"]["sample"] <= 12
    assert selection["rank_of_argmax"] == next(e["rank"] for e in ranking["entries"] if e["origin"] == "argmax")
    assert ranking["entries"][0]["genotype"] == result.genotype.to_dict()
    assert "decided" not in selection and set(selection["identity_share"]) == {"intra", "history", "input"}
    assert "stability" not in selection   # one epoch: nothing to compare
