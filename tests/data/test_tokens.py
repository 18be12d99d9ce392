"""Tests of ess.data.tokens: the AWD-LSTM tokenisation, the vocabulary, words outside it."""

from __future__ import annotations

import io

import pytest

from ess.data import EOS, Vocabulary, load_corpus, tokenize
from ess.errors import DataError

import corpus_files
from corpus_files import write

# pytest finds the shared fixtures by their names in this module
bare = corpus_files.bare


def test_tokenize_matches_awd_lstm_loop():
    text = " a b \n\n c\td \r\n e\r f \n"
    expected = []
    for line in io.StringIO(text, newline=None):  # what `for line in open(path)` yields
        expected += line.split() + [EOS]
    assert tokenize(text) == expected
    assert tokenize("\n") == [EOS]


def test_vocabulary_encode():
    vocab = Vocabulary.from_tokens(["x", "y", "x", EOS])
    assert len(vocab) == 3
    assert vocab.encode(["y", "x"]).tolist() == [1, 0]
    with pytest.raises(DataError, match="'z'"):
        vocab.encode(["z"])


def test_oov_without_unk(bare):
    spec, root = bare
    write(root, spec.name, "train", b"a b\n")
    write(root, spec.name, "valid", b"a\n")
    path = write(root, spec.name, "test", b"a b\n\nb z a\n")
    with pytest.raises(DataError, match=rf"{path.resolve()}: line 3: word 'z' is not in the train vocabulary"):
        load_corpus(spec.name, root)
