"""Sequence tagging with searched cells: CoNLL readers, tag schemes, conlleval F1, a BiRNN-CRF tagger.

The training loop and command line are :mod:`ess.transfer` (``python -m ess.transfer``).
"""

from ess.tagging.conll import (
    TASKS,
    ColumnFormat,
    Sentence,
    TaskData,
    TaskSpec,
    carve_dev,
    get_task,
    load_task,
    parse_conll,
    read_conll,
    write_conll,
)
from ess.tagging.crf import CRF
from ess.tagging.embeddings import init_embeddings, read_glove
from ess.tagging.metrics import SpanScores, TypeScore, span_f1
from ess.tagging.model import BiRNN, CharCNN, Tagger
from ess.tagging.schemes import allowed_transitions, convert_tags, spans_to_tags, split_tag, tag_set, tag_spans
from ess.tagging.vocab import Vocab, build_vocab, encode

__all__ = [
    "CRF", "TASKS", "BiRNN", "CharCNN", "ColumnFormat", "Sentence", "SpanScores", "Tagger", "TaskData", "TaskSpec",
    "TypeScore", "Vocab", "allowed_transitions", "build_vocab", "carve_dev", "convert_tags", "encode", "get_task",
    "init_embeddings", "load_task", "parse_conll", "read_conll", "read_glove", "span_f1", "spans_to_tags",
    "split_tag", "tag_set", "tag_spans", "write_conll",
]
