"""Tests of ess.data.batching: batchify, get_batch, the BPTT iterator with its resumable state."""

from __future__ import annotations

import pytest
import torch

from ess.data import BPTTIterator, batchify, get_batch, num_tokens
from ess.errors import CheckpointError, DataError


def test_batchify_layout():
    data = torch.arange(11)
    batched = batchify(data, 3)
    assert batched.shape == (3, 3) and batched.dtype == torch.long
    assert batched.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # column b = b-th chunk, remainder trimmed
    batched[0, 0] = 99
    assert data[0] == 0  # never aliases the (cached) corpus tensor
    assert batchify(data, 1).shape == (11, 1)
    single = batchify(data, 1)
    single[0, 0] = 99
    assert data[0] == 0
    with pytest.raises(DataError):
        batchify(torch.arange(5), 3)


def test_get_batch_targets_are_shifted_inputs():
    source = batchify(torch.arange(40), 4)  # [10, 4]
    data, targets = get_batch(source, 2, 5)
    assert data.shape == targets.shape == (5, 4)
    assert torch.equal(targets[:-1], data[1:])
    assert torch.equal(targets, source[3:8])
    assert torch.equal(targets, data + 1)  # consecutive ids within each column
    data, targets = get_batch(source, 6, 35)  # clipped to the remaining rows
    assert data.shape == (3, 4) and torch.equal(targets, source[7:10])
    assert num_tokens(source) == 9 * 4


def _collect(iterator):
    return [(d.clone(), t.clone(), n) for d, t, n in iterator]


def test_bptt_iterator_covers_every_token_once():
    source = batchify(torch.arange(4003), 4)  # 1000 rows
    batches = _collect(BPTTIterator(source, 35, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.cat([t for _, t, _ in batches]), source[1:])
    assert torch.equal(torch.cat([d for d, _, _ in batches]), source[:-1])
    lengths = [n for _, _, n in batches]
    assert all(5 <= n <= 55 for n in lengths[:-1]) and 1 <= lengths[-1] <= 55
    assert len(set(lengths)) > 5  # lengths really vary


def test_bptt_iterator_length_distribution():
    source = batchify(torch.arange(200_000), 1)
    lengths = [n for _, _, n in BPTTIterator(source, 10, generator=torch.Generator().manual_seed(1),
                                             max_seq_len_delta=5, min_seq_len=3)][:-1]
    assert min(lengths) >= 3 and max(lengths) <= 15
    assert 15 in lengths and 3 in lengths  # both clips are reached with std 5 around bptt 10
    mean = sum(lengths) / len(lengths)
    assert 9.0 < mean < 10.5


def test_bptt_iterator_darts_search_lengths():
    # DARTS's search loop: bptt, or bptt / 2 with probability 0.05, no normal draw
    source = batchify(torch.arange(100_000), 1)
    lengths = [n for _, _, n in BPTTIterator(source, 35, generator=torch.Generator().manual_seed(2),
                                             length_noise=False)][:-1]
    assert set(lengths) == {35, 17}
    assert 0.03 < lengths.count(17) / len(lengths) < 0.08


def test_bptt_iterator_same_seed_same_lengths():
    source = batchify(torch.arange(5000), 2)

    def lengths(seed):
        return [n for _, _, n in BPTTIterator(source, 35, generator=torch.Generator().manual_seed(seed))]

    assert lengths(7) == lengths(7)
    assert lengths(7) != lengths(8)


def test_bptt_iterator_default_generator_follows_global_seed():
    source = batchify(torch.arange(3000), 2)
    torch.manual_seed(5)
    first = [n for *_, n in BPTTIterator(source, 35)]
    torch.manual_seed(5)
    assert [n for *_, n in BPTTIterator(source, 35)] == first


def test_bptt_iterator_resume_is_exact():
    source = batchify(torch.arange(6000), 3)
    generator = torch.Generator().manual_seed(123)
    reference = _collect(BPTTIterator(source, 35, generator=torch.Generator().manual_seed(123)))

    first = BPTTIterator(source, 35, generator=generator)
    head = [next(first) for _ in range(len(reference) // 2)]
    state, rng = first.state_dict(), generator.get_state()
    list(first)  # the run goes on (and consumes randomness) after the checkpoint

    restored_generator = torch.Generator()
    restored_generator.set_state(rng)
    resumed = BPTTIterator(source, 35, generator=restored_generator)
    resumed.load_state_dict(state)
    tail = _collect(resumed)
    assert resumed.batches == len(reference)
    got = head + tail
    assert [n for *_, n in got] == [n for *_, n in reference]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, reference))


def test_bptt_iterator_rejects_state_of_other_source():
    state = BPTTIterator(batchify(torch.arange(100), 2), 5).state_dict()
    with pytest.raises(CheckpointError, match="50 rows"):
        BPTTIterator(batchify(torch.arange(100), 4), 5).load_state_dict(state)


def test_fixed_length_iterator():
    source = batchify(torch.arange(1000), 10)  # 100 rows -> 99 target rows
    lengths = [n for _, _, n in BPTTIterator(source, 35, random_length=False)]
    assert lengths == [35, 35, 29]
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    list(BPTTIterator(source, 35, random_length=False, generator=generator))
    assert torch.equal(generator.get_state(), before)  # evaluation draws nothing
