"""Perturbation-based derivation (ess.search.perturbation): scores by hand, the none rule, a valid genotype."""

from __future__ import annotations

import pytest
import torch

from ess.evaluation import evaluate
from ess.search import perturbation
from ess.space.derive import DeriveRule
from ess.space.genotype import IDENTITY_INTER
from ess.space.ops import PRIMITIVES
from ess.supernet import build_search_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _model(mode="joint"):
    model = build_search_model(11, mode=mode, emsize=6, nhid=6, steps=2, n_inter=2, m=2).double()
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_()
    return model


def test_intra_choices_are_the_removals_that_hurt_most():
    model = _model("intra")
    source = torch.randint(0, 11, (30, 4))
    found = perturbation.perturbation_derivation(model, source, 7, DeriveRule())
    probs = model.searched_parts()["intra"].arch_probabilities(model.part_logits("intra")).detach()
    base = evaluate(model, source, 7)
    scores = {}
    for j in range(2):                     # node 2: rows (2,0) and (2,1) are rows 1 and 2
        for c in range(1, 5):
            removed = probs.clone()
            removed[1 + j, c] = 0.0
            with model.overridden({"intra": removed}):
                scores[(j, c)] = evaluate(model, source, 7) - base
    (j, c), best = max(scores.items(), key=lambda kv: kv[1])
    choice = [ch for ch in found.choices if ch.where == "s2"][0]
    assert (choice.pred, choice.op, choice.source) == (j, PRIMITIVES[c], f"s{j}")
    assert choice.weight == pytest.approx(best, abs=1e-12)
    assert found.genotype.intra.recurrent[1].pred == j and found.genotype.history == IDENTITY_INTER
    assert any("validation passes" in n for n in found.notes)


def test_a_branch_whose_removals_never_hurt_says_none(monkeypatch):
    model = _model("inter")
    # scripted scores: history node 0 branch a helps nobody (every removal lowers the loss); everything else
    # has one clearly useful candidate
    def without(self, part, remove):
        self.evaluations += 1
        probs = self.probs[part]
        changed = remove(probs)
        for k, (old, new) in enumerate(zip(probs.branches, changed.branches)):
            diff = (old != new).nonzero().tolist()
            if diff:
                side, j, c = diff[0]
                if part == "history" and k == 0 and side == 0:
                    return -0.01 * (c + 1)
                return 0.5 if (j, c) == (0, 1) else 0.01
        raise AssertionError("nothing removed")

    monkeypatch.setattr(perturbation._Scorer, "without", without)
    found = perturbation.perturbation_derivation(model, torch.randint(0, 11, (20, 3)), 5, DeriveRule())
    a = [c for c in found.choices if c.part == "history" and c.where == "s1.a"][0]
    assert a.op == "none" and a.decided
    assert any("history: s1 dropped" in n for n in found.notes)
    assert len(found.genotype.history.nodes) == 1 and found.genotype.history.nodes[0].a.op == "tanh"
    assert found.genotype.input.nodes[0].a.op == "tanh" and found.decided_share("input") == 1.0
