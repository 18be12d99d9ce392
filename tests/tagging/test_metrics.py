"""Span F1 (conlleval), span reading and tag-scheme conversion."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ess.tagging.conll import load_task
from ess.tagging.metrics import span_f1
from ess.tagging.schemes import convert_tags, spans_to_tags, tag_spans

DATA_DIR = os.environ.get("ESS_DATA_DIR")


def _has(task: str, files: tuple[str, ...]) -> bool:
    return bool(DATA_DIR) and all((Path(DATA_DIR) / task / f).is_file() for f in files)


TASK_FILES = {"conll2003": ("train.txt", "valid.txt", "test.txt"), "wnut17": ("train.txt", "valid.txt", "test.txt"),
              "conll2000": ("train.txt", "test.txt")}


# ---------------------------------------------------------------------------------------------------------------
# conlleval, ported line by line from the Perl script (chunk counting only), as an independent oracle.


def _split(tag: str) -> tuple[str, str]:
    prefix, sep, typ = tag.partition("-")
    return (prefix, typ) if sep else (tag, "")


def _end_of_chunk(prev_tag, tag, prev_type, typ):
    end = False
    if (prev_tag, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}:
        end = True
    if prev_tag not in ("O", ".") and prev_type != typ:
        end = True
    if prev_tag in ("]", "["):
        end = True
    return end


def _start_of_chunk(prev_tag, tag, prev_type, typ):
    start = False
    if (prev_tag, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}:
        start = True
    if tag not in ("O", ".") and prev_type != typ:
        start = True
    if tag in ("[", "]"):
        start = True
    return start


def conlleval_counts(gold, pred) -> tuple[int, int, int]:
    """(correct chunks, found guessed, found correct) as conlleval counts them; a sentence break is ``O O``."""
    correct_chunk = found_guessed = found_correct = 0
    in_correct = False
    last_c, last_c_type, last_g, last_g_type = "O", "", "O", ""
    tokens = []
    for g, p in zip(gold, pred):
        tokens += list(zip(g, p)) + [("O", "O")]
    for c_tag, g_tag in tokens:
        c, c_type = _split(c_tag)
        g, g_type = _split(g_tag)
        if in_correct:
            end_c = _end_of_chunk(last_c, c, last_c_type, c_type)
            end_g = _end_of_chunk(last_g, g, last_g_type, g_type)
            if end_c and end_g and last_g_type == last_c_type:
                in_correct = False
                correct_chunk += 1
            elif end_c != end_g or g_type != c_type:
                in_correct = False
        start_c = _start_of_chunk(last_c, c, last_c_type, c_type)
        start_g = _start_of_chunk(last_g, g, last_g_type, g_type)
        if start_c and start_g and g_type == c_type:
            in_correct = True
        found_correct += start_c
        found_guessed += start_g
        last_c, last_c_type, last_g, last_g_type = c, c_type, g, g_type
    return correct_chunk, found_guessed, found_correct


# ---------------------------------------------------------------------------------------------------------------
# Spans


def test_iob1_spans():
    # I- starts a span after O or another type; B- only separates two adjacent spans of one type.
    tags = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "B-ORG", "I-ORG"]
    assert tag_spans(tags) == [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 7), ("ORG", 7, 9)]


def test_bio_and_bioes_spans():
    assert tag_spans(["B-NP", "I-NP", "B-VP", "B-NP", "I-NP", "O"]) == [("NP", 0, 2), ("VP", 2, 3), ("NP", 3, 5)]
    # ill-formed IOB2: I- after O or after another type starts a span, as in conlleval
    assert tag_spans(["O", "I-NP", "I-NP", "B-PP", "I-NP"]) == [("NP", 1, 3), ("PP", 3, 4), ("NP", 4, 5)]
    assert tag_spans(["S-X", "B-X", "I-X", "E-X", "S-X", "O", "B-Y", "E-Y"]) == [
        ("X", 0, 1), ("X", 1, 4), ("X", 4, 5), ("Y", 6, 8)]
    assert tag_spans([]) == []
    assert tag_spans(["O", "O"]) == []


def test_wnut_types_with_hyphens():
    tags = ["B-creative-work", "I-creative-work", "O", "B-person", "B-product", "I-product"]
    assert tag_spans(tags) == [("creative-work", 0, 2), ("person", 3, 4), ("product", 4, 6)]
    assert convert_tags(tags, "bioes") == ["B-creative-work", "E-creative-work", "O", "S-person", "B-product",
                                          "E-product"]


def test_bad_tags_are_rejected():
    for bad in ("PER", "X-PER", "B-", "b-PER", ""):
        with pytest.raises(ValueError, match="not O or"):
            tag_spans(["O", bad])


# ---------------------------------------------------------------------------------------------------------------
# Conversions


def test_conversions_by_hand():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "O", "I-MISC", "I-MISC", "I-MISC"]
    assert convert_tags(iob1, "bio") == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "O", "B-MISC", "I-MISC", "I-MISC"]
    assert convert_tags(iob1, "bioes") == ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "O", "B-MISC", "I-MISC", "E-MISC"]
    assert convert_tags(convert_tags(iob1, "bioes"), "iob1") == iob1
    assert convert_tags(convert_tags(iob1, "bio"), "iob1") == iob1
    # IOB1 needs B- only between two adjacent spans of one type
    assert spans_to_tags([("X", 0, 1), ("Y", 1, 2), ("Y", 2, 3)], 3, "iob1") == ["I-X", "I-Y", "B-Y"]
    with pytest.raises(ValueError, match="overlaps"):
        spans_to_tags([("X", 0, 2), ("Y", 1, 3)], 3, "bio")
    with pytest.raises(ValueError, match="unknown tag scheme"):
        convert_tags(["O"], "bilou")


_TAGS = st.sampled_from(["O", "B-A", "I-A", "B-B", "I-B", "B-long-type", "I-long-type"])


@settings(max_examples=200, deadline=None)
@given(tags=st.lists(_TAGS, max_size=12))
def test_conversion_keeps_spans(tags):
    spans = tag_spans(tags)
    for scheme in ("iob1", "bio", "bioes"):
        converted = convert_tags(tags, scheme)
        assert tag_spans(converted) == spans
        assert convert_tags(converted, scheme) == converted


# ---------------------------------------------------------------------------------------------------------------
# F1


def test_f1_worked_out_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"],          # PER(0,2) LOC(3,4)
            ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"]]   # ORG(0,3) PER(4,5)
    pred = [["B-PER", "I-PER", "O", "B-ORG"],          # PER right, ORG(3,4) wrong type
            ["B-ORG", "I-ORG", "O", "O", "B-PER"]]      # ORG(0,2) wrong end, PER right
    s = span_f1(gold, pred)
    # gold 4, predicted 4, correct 2: P = R = F1 = 50
    assert (s.correct, s.predicted, s.gold) == (2, 4, 4)
    assert s.precision == pytest.approx(50.0) and s.recall == pytest.approx(50.0) and s.f1 == pytest.approx(50.0)
    assert s.per_type["PER"].f1 == pytest.approx(100.0)
    assert s.per_type["LOC"].recall == 0.0 and s.per_type["LOC"].predicted == 0
    assert s.per_type["ORG"].precision == 0.0 and s.per_type["ORG"].predicted == 2 and s.per_type["ORG"].gold == 1
    assert s.accuracy == pytest.approx(100 * 7 / 9)


def test_f1_asymmetric_and_iob1_edge_cases():
    # IOB1 gold: "I-PER I-PER B-PER" is two PER spans; a prediction of one long PER span gets neither.
    gold = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"], ["I-ORG", "I-MISC"]]   # PER(0,2) PER(2,3) LOC(4,5) ORG MISC
    pred = [["I-PER", "I-PER", "I-PER", "O", "I-LOC"], ["I-ORG", "I-ORG"]]    # PER(0,3) LOC(4,5) ORG(0,2)
    s = span_f1(gold, pred)
    # gold 5 spans, predicted 3, correct 1 (LOC): P = 33.33, R = 20, F1 = 2PR/(P+R) = 25
    assert (s.correct, s.predicted, s.gold) == (1, 3, 5)
    assert s.precision == pytest.approx(100 / 3)
    assert s.recall == pytest.approx(20.0)
    assert s.f1 == pytest.approx(25.0)
    assert s.per_type["PER"].gold == 2 and s.per_type["PER"].correct == 0


def test_f1_with_wnut_types():
    gold = [["B-creative-work", "I-creative-work", "O", "B-person"], ["B-corporation", "O", "B-group", "I-group"]]
    pred = [["B-creative-work", "I-creative-work", "O", "B-location"], ["B-corporation", "O", "B-group", "O"]]
    s = span_f1(gold, pred)
    # gold: cw, person, corporation, group (4); pred: cw, location, corporation, group(2,3) (4); correct: cw, corp
    assert (s.correct, s.predicted, s.gold) == (2, 4, 4)
    assert s.f1 == pytest.approx(50.0)
    assert set(s.per_type) == {"creative-work", "person", "location", "corporation", "group"}
    assert s.per_type["creative-work"].f1 == pytest.approx(100.0)
    assert s.per_type["location"].precision == 0.0 and s.per_type["location"].gold == 0
    row = s.as_row("dev")
    assert row["dev/f1"] == pytest.approx(50.0) and row["dev/f1/creative-work"] == pytest.approx(100.0)
    assert "FB1" in s.report()


def test_all_o_tagger_scores_zero():
    gold = [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
    s = span_f1(gold, [["O"] * 3, ["O"] * 2])
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    assert span_f1([["O"]], [["O"]]).f1 == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="sentence 0"):
        span_f1([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="gold sentences"):
        span_f1([["O"]], [])


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.lists(st.tuples(_TAGS, _TAGS), min_size=1, max_size=8), min_size=1, max_size=4))
def test_counts_equal_conlleval(pairs):
    gold = [[g for g, _ in sent] for sent in pairs]
    pred = [[p for _, p in sent] for sent in pairs]
    s = span_f1(gold, pred)
    assert (s.correct, s.predicted, s.gold) == conlleval_counts(gold, pred)


# ---------------------------------------------------------------------------------------------------------------
# Real data


@pytest.mark.parametrize("task", sorted(TASK_FILES))
def test_real_gold_against_itself_scores_100(task):
    if not _has(task, TASK_FILES[task]):
        pytest.skip(f"needs {task} in $ESS_DATA_DIR/{task} (set ESS_DATA_DIR)")
    data = load_task(task, DATA_DIR)
    for split in (data.train, data.dev, data.test):
        gold = [s.tags for s in split]
        s = span_f1(gold, gold)
        assert s.f1 == 100.0 and s.precision == 100.0 and s.recall == 100.0 and s.gold > 0
        # Through the training scheme and back: still 100 (predictions are scored this way).
        scheme = data.spec.format.scheme
        back = [convert_tags(convert_tags(t, "bioes"), scheme) for t in gold]
        assert span_f1(gold, back).f1 == 100.0
        n = span_f1(gold[:500], gold[:500]).gold
        assert conlleval_counts(gold[:500], back[:500]) == (n, n, n)


def test_real_conll2003_span_counts_match_readme():
    if not _has("conll2003", TASK_FILES["conll2003"]):
        pytest.skip("needs conll2003 in $ESS_DATA_DIR/conll2003 (set ESS_DATA_DIR)")
    data = load_task("conll2003", DATA_DIR)
    s = span_f1([x.tags for x in data.dev], [x.tags for x in data.dev])
    assert {t: v.gold for t, v in s.per_type.items()} == {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}
    # Round trip IOB1 -> BIOES -> IOB1 rewrites only the two train sentences whose files have "O B-X".
    changed = [x.line for x in data.train if convert_tags(convert_tags(x.tags, "bioes"), "iob1") != list(x.tags)]
    assert changed == [152416, 175432]
