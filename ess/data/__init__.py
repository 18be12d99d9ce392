"""Language-model corpora (PTB, WikiText-2, user-registered ones) and BPTT batching.

Loading follows the AWD-LSTM/DARTS ``data.py`` conventions; see :mod:`ess.data.corpus` for the
tokenisation and validation rules and :mod:`ess.data.batching` for the batch layout.
``python -m ess.data`` lists, downloads, verifies and counts corpora.
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
    get_spec,
    load_corpus,
    register_corpus,
    resolve_data_dir,
    tokenize,
    unregister_corpus,
    verify_corpus,
)
from ess.data.download import download_corpus

__all__ = [
    "CORPORA",
    "EOS",
    "SPLITS",
    "UNK",
    "BPTTIterator",
    "Corpus",
    "CorpusSpec",
    "DownloadSpec",
    "Vocabulary",
    "batchify",
    "clear_corpus_cache",
    "corpus_dir",
    "download_corpus",
    "get_batch",
    "get_spec",
    "load_corpus",
    "num_tokens",
    "register_corpus",
    "resolve_data_dir",
    "tokenize",
    "unregister_corpus",
    "verify_corpus",
]
