"""Language-model corpora (PTB, WikiText-2, generated planted-structure ones, user-registered ones)
and BPTT batching.

Loading follows the AWD-LSTM/DARTS ``data.py`` conventions; see :mod:`ess.data.corpus` for the
tokenisation and validation rules, :mod:`ess.data.batching` for the batch layout and
:mod:`ess.data.planted` for the generated corpora with a known perplexity floor (``planted``,
``planted-k3``, ``planted-k4``). ``python -m ess.data`` lists, downloads, generates, verifies and counts
corpora.
"""

from ess.data.batching import BPTTIterator, batchify, get_batch, num_tokens
from ess.data.corpus import (
    CORPORA,
    EOS,
    SPLITS,
    UNK,
    Corpus,
    CorpusSpec,
    DownloadSpec,
    Vocabulary,
    clear_corpus_cache,
    corpus_dir,
    ensure_generated,
    generated_root,
    get_spec,
    load_corpus,
    register_corpus,
    resolve_data_dir,
    tokenize,
    unregister_corpus,
    verify_corpus,
)
from ess.data.download import download_corpus, ensure_corpus
from ess.data.planted import PlantedParams, planted_spec, register_planted

register_planted()

__all__ = [
    "CORPORA",
    "EOS",
    "SPLITS",
    "UNK",
    "BPTTIterator",
    "Corpus",
    "CorpusSpec",
    "DownloadSpec",
    "PlantedParams",
    "Vocabulary",
    "batchify",
    "clear_corpus_cache",
    "corpus_dir",
    "download_corpus",
    "ensure_corpus",
    "ensure_generated",
    "generated_root",
    "get_batch",
    "get_spec",
    "load_corpus",
    "num_tokens",
    "planted_spec",
    "register_corpus",
    "resolve_data_dir",
    "tokenize",
    "unregister_corpus",
    "verify_corpus",
]
