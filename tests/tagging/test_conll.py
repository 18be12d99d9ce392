"""CoNLL readers (formats, -DOCSTART-, whitespace-only breaks, errors), dev carving, GloVe reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ess.errors import DataError
from ess.tagging.conll import TASKS, ColumnFormat, carve_dev, load_task, parse_conll, read_conll, write_conll
from ess.tagging.embeddings import init_embeddings, read_glove

DATA_DIR = os.environ.get("ESS_DATA_DIR")
CONLL03 = TASKS["conll2003"].format
WNUT = TASKS["wnut17"].format
CONLL00 = TASKS["conll2000"].format


def _requires(task: str, *files: str):
    present = bool(DATA_DIR) and all((Path(DATA_DIR) / task / f).is_file() for f in files)
    return pytest.mark.skipif(not present, reason=f"needs {', '.join(files)} of {task} in $ESS_DATA_DIR/{task} "
                                                  "(set ESS_DATA_DIR)")


# ---------------------------------------------------------------------------------------------------------------
# Formats


def test_conll2003_columns_and_docstart():
    text = ("-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n\n\n"
            "-DOCSTART- -X- -X- O\n\nPeter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n"
            "-DOCSTART- -X- O O\nBRUSSELS NNP I-NP I-LOC\n")
    sents = parse_conll(text, CONLL03, "x.txt")
    assert [s.words for s in sents] == [("EU", "rejects"), ("Peter", "Blackburn"), ("BRUSSELS",)]
    assert [s.tags for s in sents] == [("I-ORG", "O"), ("I-PER", "I-PER"), ("I-LOC",)]
    assert [s.line for s in sents] == [3, 9, 12]   # a -DOCSTART- line also ends a sentence


def test_wnut_breaks_on_whitespace_only_lines_and_keeps_raw_tokens():
    text = "@paulwalk\tO\nIt\tO\n\t\nEmpire\tB-location\nState\tI-location\n \n&\tO\ngt\tO\n\n\n"
    sents = parse_conll(text, WNUT, "w.txt")
    assert [s.words for s in sents] == [("@paulwalk", "It"), ("Empire", "State"), ("&", "gt")]
    assert sents[1].tags == ("B-location", "I-location")


def test_crlf_bom_and_missing_final_newline():
    text = "\ufeffConfidence NN B-NP\r\nin IN B-PP\r\n\r\nthe DT B-NP"
    sents = parse_conll(text, CONLL00, "c.txt")
    assert [s.words for s in sents] == [("Confidence", "in"), ("the",)]
    assert [s.tags for s in sents] == [("B-NP", "B-PP"), ("B-NP",)]


def test_unicode_line_separators_inside_tokens_are_not_line_breaks():
    text = "a\u2028b\tO\nc\u0085\tB-person\n"
    sents = parse_conll(text, WNUT, "w.txt")
    assert sents[0].words == ("a\u2028b", "c\u0085") and sents[0].tags == ("O", "B-person")


@pytest.mark.parametrize("text,fmt,match", [
    ("EU NNP I-ORG\n", CONLL03, r"x\.txt:1: expected 4 whitespace-separated columns, got 3"),
    ("EU NNP I-NP I-ORG\nrejects VBZ I-VP O extra\n", CONLL03, r"x\.txt:2: expected 4 .* got 5"),
    ("EU NNP I-NP X-ORG\n", CONLL03, r"x\.txt:1: tag 'X-ORG' is not a IOB1 tag"),
    ("\nEU NNP I-NP E-ORG\n", CONLL03, r"x\.txt:2: tag 'E-ORG'"),
    ("EU NNP I-NP B_ORG\n", CONLL03, r"x\.txt:1: tag 'B_ORG'"),
    ("word O\n", WNUT, r"x\.txt:1: expected 2 TAB-separated columns, got 1"),
    ("a\tb\tO\n", WNUT, r"x\.txt:1: expected 2 TAB-separated columns, got 3"),
    ("\tO\n", WNUT, r"x\.txt:1: empty word"),
    ("ok\tO\n\nw\tB-\n", WNUT, r"x\.txt:3: tag 'B-'"),
])
def test_malformed_lines_name_file_and_line(text, fmt, match):
    with pytest.raises(DataError, match=match) as err:
        parse_conll(text, fmt, "x.txt")
    assert "\n" not in str(err.value)


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_conll(tmp_path / "missing.txt", CONLL00)
    empty = tmp_path / "empty.txt"
    empty.write_text("-DOCSTART- -X- O O\n\n")
    with pytest.raises(DataError, match="no sentences"):
        read_conll(empty, CONLL03)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ok NN B-NP\n\ncaf\xe9 NN B-NP\n")
    with pytest.raises(DataError, match=r"latin1\.txt:3: not UTF-8"):
        read_conll(bad, CONLL00)
    with pytest.raises(DataError, match="not a regular file"):
        read_conll(tmp_path, CONLL00)


def test_missing_task_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match=r"conll2000.train\.txt: no such file; put train\.txt, test\.txt"):
        load_task("conll2000", tmp_path)
    with pytest.raises(DataError, match="unknown task"):
        load_task("ontonotes", tmp_path)


def test_carve_dev_is_reproducible_and_disjoint():
    sents = parse_conll("".join(f"w{i} NN B-NP\n\n" for i in range(50)), CONLL00)
    train, dev = carve_dev(sents, 10, seed=7)
    again_train, again_dev = carve_dev(sents, 10, seed=7)
    assert dev == again_dev and train == again_train
    assert len(train) == 40 and len(dev) == 10
    assert {s.words for s in train}.isdisjoint({s.words for s in dev})
    assert [s.line for s in dev] == sorted(s.line for s in dev)   # file order kept
    assert carve_dev(sents, 10, seed=8)[1] != dev                 # the seed changes the split
    with pytest.raises(DataError, match="cannot hold out"):
        carve_dev(sents, 50)


def test_write_conll_roundtrip(tmp_path):
    sents = parse_conll("EU NNP I-NP I-ORG\nrejects VBZ I-VP O\n\nPeter NNP I-NP I-PER\n", CONLL03)
    path = write_conll(tmp_path / "pred.txt", sents, [["I-ORG", "I-ORG"], ["O"]])
    assert path.read_text() == "EU I-ORG I-ORG\nrejects O I-ORG\n\nPeter I-PER O\n\n"


# ---------------------------------------------------------------------------------------------------------------
# Real files


@_requires("conll2003", "train.txt", "valid.txt", "test.txt")
def test_real_conll2003_counts():
    data = load_task("conll2003", DATA_DIR)
    assert (len(data.train), len(data.dev), len(data.test)) == (14_041, 3_250, 3_453)
    assert [sum(map(len, s)) for s in (data.train, data.dev, data.test)] == [203_621, 51_362, 46_435]
    assert not any(w == "-DOCSTART-" for s in data.train for w in s.words)
    assert data.train[0].words[:3] == ("EU", "rejects", "German")
    assert data.spec.format.scheme == "iob1"
    assert not any(t.startswith("B-PER") for s in data.train for t in s.tags)  # README: no B-PER in train


@_requires("wnut17", "train.txt", "valid.txt", "test.txt")
def test_real_wnut17_counts():
    data = load_task("wnut17", DATA_DIR)
    assert (len(data.train), len(data.dev), len(data.test)) == (3_394, 1_009, 1_287)
    assert [sum(map(len, s)) for s in (data.train, data.dev, data.test)] == [62_730, 15_733, 23_394]
    types = {t[2:] for s in data.train for t in s.tags if t != "O"}
    assert types == {"person", "location", "group", "creative-work", "corporation", "product"}


@_requires("conll2000", "train.txt", "test.txt")
def test_real_conll2000_counts_and_carved_dev():
    root = Path(DATA_DIR) / "conll2000"
    train = read_conll(root / "train.txt", CONLL00)
    test = read_conll(root / "test.txt", CONLL00)
    assert (len(train), len(test)) == (8_936, 2_012)
    assert (sum(map(len, train)), sum(map(len, test))) == (211_727, 47_377)
    data = load_task("conll2000", DATA_DIR)
    assert (len(data.train), len(data.dev), len(data.test)) == (7_936, 1_000, 2_012)
    assert sorted(data.train + data.dev, key=lambda s: s.line) == train
    # The carved dev set is pinned: a change of the rule would silently change every CoNLL-2000 result.
    assert [s.line for s in data.dev[:4]] == PINNED_CONLL2000_DEV_LINES
    assert "held out" in data.paths["valid"]


PINNED_CONLL2000_DEV_LINES = [598, 792, 1041, 1205]  # first lines of the first four held-out sentences


# ---------------------------------------------------------------------------------------------------------------
# GloVe reader


def _glove(tmp_path, text: str, name: str = "vec.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_glove_reader(tmp_path):
    path = _glove(tmp_path, "the 0.1 0.2 0.3\n, 1 2 3\nnew york 4 5 6\nthe 9 9 9\n")
    vectors = read_glove(path, 3)
    assert set(vectors) == {"the", ",", "new york"}
    assert vectors["the"].tolist() == pytest.approx([0.1, 0.2, 0.3])   # first occurrence wins
    assert set(read_glove(path, 3, keep={"the", "absent"})) == {"the"}
    w2v = _glove(tmp_path, "2 3\nthe 1 2 3\ncat 4 5 6\n", "w2v.txt")
    assert set(read_glove(w2v, 3)) == {"the", "cat"}


@pytest.mark.parametrize("text,match", [
    ("the 0.1 0.2\n", r"vec\.txt:1: 2 numbers after the word but word_dim is 3"),
    ("the 1 2 3 4\n", r"vec\.txt:1: 4 numbers after the word but word_dim is 3"),
    ("the 1 2 3\ncat 1 2\n", r"vec\.txt:2: expected a word and 3 numbers, got 3 fields"),
    ("the 1 2 3\ncat 1 x 3\n", r"vec\.txt:2: field 3 is not a number: 'x'"),
    ("the 1 nan 3\n", r"vec\.txt:1: non-finite number"),
    ("2 5\nthe 1 2 3\n", r"vec\.txt:1: word2vec header says 5-dimensional"),
    ("", r"vec\.txt: no vectors"),
])
def test_glove_errors(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_glove(_glove(tmp_path, text), 3)


def test_glove_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such embeddings file"):
        read_glove(tmp_path / "nope.txt", 3)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the 1 2 3\ncaf\xe9 1 2 3\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not UTF-8"):
        read_glove(bad, 3)


def test_init_embeddings_uses_vectors_and_lowercase_fallback():
    vectors = {"paris": torch.tensor([1.0, 2.0]), "the": torch.tensor([3.0, 4.0])}
    init = init_embeddings(["<pad>", "<unk>", "Paris", "the", "zzz"], 2, vectors, torch.Generator().manual_seed(0))
    assert init.found == 2 and init.total == 5
    assert init.weight[0].tolist() == [0.0, 0.0]
    assert init.weight[2].tolist() == [1.0, 2.0] and init.weight[3].tolist() == [3.0, 4.0]
    assert init.weight[4].abs().max() <= (3 / 2) ** 0.5


def test_column_format_of_each_task():
    assert TASKS["conll2003"].format == ColumnFormat(4, 0, 3, None, "iob1")
    assert TASKS["wnut17"].format.separator == "\t"
    assert TASKS["conll2000"].files["valid"] is None
