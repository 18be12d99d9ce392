"""Tests of ess.data.corpus: loading the real and tiny corpora, the load cache, verify_corpus, random bytes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ess.data import CORPORA, EOS, UNK, load_corpus, tokenize, verify_corpus
from ess.errors import DataError

import corpus_files
from corpus_files import SPLITS, TINY, needs_ptb, needs_wt2, write

# pytest finds the shared fixtures by their names in this module
tiny = corpus_files.tiny
bare = corpus_files.bare


@needs_ptb
@pytest.mark.data
def test_ptb_stats():
    corpus = load_corpus("ptb")
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929_589, 73_760, 82_430)
    assert len(corpus.vocab) == 10_000
    assert corpus.train.dtype == torch.long and corpus.train.dim() == 1
    assert int(corpus.train.max()) == 9_999 and int(corpus.train.min()) == 0
    assert EOS in corpus.vocab and UNK in corpus.vocab
    # 42,068 lines in train, one <eos> each
    assert int((corpus.train == corpus.vocab.stoi[EOS]).sum()) == 42_068
    assert load_corpus("ptb") is corpus  # cached


@needs_wt2
@pytest.mark.data
def test_wikitext2_stats():
    corpus = load_corpus("wikitext-2")
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (2_088_628, 217_646, 245_569)
    assert len(corpus.vocab) == 33_278
    assert corpus.vocab.itos[:3] == [EOS, "=", "Valkyria"]  # order of first appearance


@needs_ptb
@pytest.mark.data
def test_verify_ptb():
    report = verify_corpus("ptb")
    assert report["train"][1] == 5_101_618
    assert report["train"][2] == CORPORA["ptb"].sha256["train"]


def test_tiny_corpus_loads(tiny):
    spec, root = tiny
    corpus = load_corpus(spec.name, root)
    assert corpus.vocab.itos == ["the", "cat", "sat", EOS, "on", "mat", UNK, "dog"]
    assert corpus.vocab.decode(corpus.train) == tokenize(TINY["train"].decode())
    assert corpus.vocab.decode(corpus.valid) == ["the", "dog", "sat", EOS]
    assert corpus.vocab.decode(corpus.test) == [UNK, "cat", EOS]
    assert corpus.path == (root / spec.name).resolve()
    assert load_corpus(spec.name, root) is corpus


def test_changed_file_is_reloaded(bare):
    spec, root = bare
    for split in SPLITS:
        write(root, spec.name, split, b"a b\n")
    assert len(load_corpus(spec.name, root).vocab) == 3
    write(root, spec.name, "train", b"a b c d\n")
    assert len(load_corpus(spec.name, root).vocab) == 5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    train=st.binary(max_size=64) | st.text(max_size=64).map(str.encode),
    valid=st.binary(max_size=32) | st.sampled_from([b"a\n", b"\n", b" <unk> \n"]),
)
def test_random_bytes_load_or_data_error(bare, train, valid):
    spec, root = bare
    write(root, spec.name, "train", train)
    write(root, spec.name, "valid", valid)
    write(root, spec.name, "test", train)
    try:
        corpus = load_corpus(spec.name, root, cache=False)
    except DataError as err:
        assert "\n" not in str(err)
        assert str(root.resolve()) in str(err)
    else:
        assert corpus.train.numel() == len(tokenize(train.decode()))
        assert corpus.test.tolist() == corpus.train.tolist()
