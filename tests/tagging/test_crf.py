"""The linear-chain CRF against brute-force enumeration of every tag sequence."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ess.tagging.crf import CRF
from ess.tagging.schemes import allowed_transitions, spans_to_tags, split_tag, tag_set, tag_spans


def _random_crf(K: int, seed: int, allowed=None) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(K, allowed).double()
    with torch.no_grad():
        crf.transitions.normal_()
        crf.start.normal_()
        crf.end.normal_()
    return crf


@torch.no_grad()
def _brute_force(crf: CRF, emissions: torch.Tensor, length: int) -> dict[tuple[int, ...], float]:
    """Score of every tag sequence of one sentence, written out from the definition."""
    trans = crf.transitions + crf.trans_penalty
    start, end = crf.start + crf.start_penalty, crf.end + crf.end_penalty
    scores = {}
    for seq in itertools.product(range(crf.num_tags), repeat=length):
        s = start[seq[0]] + end[seq[-1]] + sum(emissions[t, seq[t]] for t in range(length))
        s = s + sum(trans[seq[t - 1], seq[t]] for t in range(1, length))
        scores[seq] = float(s)
    return scores


def _batch(lengths: list[int], K: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    emissions = torch.randn(T, len(lengths), K, generator=g, dtype=torch.double)
    mask = torch.arange(T).unsqueeze(1) < torch.tensor(lengths).unsqueeze(0)
    return emissions, mask


def _check_against_brute_force(crf: CRF, lengths: list[int], seed: int) -> None:
    emissions, mask = _batch(lengths, crf.num_tags, seed)
    log_z = crf.log_partition(emissions, mask)
    paths, best_scores = crf.viterbi(emissions, mask)
    for b, n in enumerate(lengths):
        scores = _brute_force(crf, emissions[:, b], n)
        expected_z = torch.logsumexp(torch.tensor(list(scores.values()), dtype=torch.double), 0)
        assert log_z[b].item() == pytest.approx(expected_z.item(), abs=1e-9)
        best = max(scores.values())
        assert len(paths[b]) == n
        assert scores[tuple(paths[b])] == pytest.approx(best, abs=1e-9)   # Viterbi finds a best path
        assert best_scores[b].item() == pytest.approx(best, abs=1e-9)
        # The gold-path score matches the enumeration for a few sequences, padding ignored.
        for seq in list(scores)[:: max(1, len(scores) // 7)]:
            tags = torch.zeros(emissions.size(0), 1, dtype=torch.long)
            tags[:n, 0] = torch.tensor(seq)
            tags[n:, 0] = crf.num_tags - 1  # padding holds an arbitrary label
            got = crf.score(emissions[:, b:b + 1], tags, mask[:, b:b + 1]).item()
            assert got == pytest.approx(scores[seq], abs=1e-9)


@pytest.mark.parametrize("K,lengths", [(1, [3]), (2, [1]), (3, [4, 1, 2, 3]), (4, [3, 3]), (5, [2, 4, 1])])
def test_log_partition_and_viterbi_equal_enumeration(K, lengths):
    _check_against_brute_force(_random_crf(K, seed=K), lengths, seed=10 + K)


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 4), lengths=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 10**6))
def test_enumeration_property(K, lengths, seed):
    _check_against_brute_force(_random_crf(K, seed), lengths, seed + 1)


@pytest.mark.parametrize("scheme", ["bio", "bioes"])
def test_constrained_crf_equals_enumeration_and_decodes_well_formed_tags(scheme):
    labels = tag_set(["A", "B"], scheme)
    allowed = allowed_transitions(labels, scheme)
    crf = _random_crf(len(labels), seed=3, allowed=allowed)
    _check_against_brute_force(crf, [3, 1, 2], seed=4)
    emissions, mask = _batch([6, 2, 5, 1], len(labels), seed=5)
    emissions = emissions * 5  # strong, arbitrary emissions would pick ill-formed sequences unconstrained
    paths, _ = crf.viterbi(emissions, mask)
    for path in paths:
        tags = [labels[k] for k in path]
        first, last = split_tag(tags[0])[0], split_tag(tags[-1])[0]
        assert first in ("O", "B", "S")
        if scheme == "bioes":
            assert last in ("O", "E", "S")
        for prev, cur in zip(tags, tags[1:]):
            assert allowed[0][labels.index(prev), labels.index(cur)], (prev, cur, tags)
        # Well-formed: writing the spans back gives the same tags.
        assert spans_to_tags(tag_spans(tags), len(tags), scheme) == tags


def test_allowed_transitions_bio_by_hand():
    labels = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    trans, start, end = allowed_transitions(labels, "bio")
    assert start.tolist() == [True, True, False, True, False]
    assert end.all()
    into_ix = trans[:, 2].tolist()
    assert into_ix == [False, True, True, False, False]   # I-X only after B-X or I-X
    assert trans[2, 3] and trans[4, 0] and trans[0, 1]


def test_nll_is_positive_and_trainable():
    crf = _random_crf(3, seed=0).float()
    emissions, mask = _batch([4, 2], 3, seed=1)
    emissions = emissions.float().requires_grad_()
    tags = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 0]])
    nll = crf.neg_log_likelihood(emissions, tags, mask)
    assert (nll > 0).all()
    nll.sum().backward()
    assert emissions.grad is not None and crf.transitions.grad is not None
    assert emissions.grad[2:, 1].abs().sum() == 0  # padding gets no gradient


def test_bad_shapes_are_rejected():
    crf = CRF(3)
    with pytest.raises(ValueError, match="mask"):
        crf.log_partition(torch.zeros(2, 1, 3), torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one token"):
        crf.viterbi(torch.zeros(2, 2, 3), torch.tensor([[True, False], [True, False]]))
