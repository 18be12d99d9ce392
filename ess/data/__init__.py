"""Language-model corpora: PTB, WikiText-2, generated planted-structure ones, user-registered ones.

Loading follows the AWD-LSTM/DARTS ``data.py`` conventions; see :mod:`ess.data.registry` for the known
corpora, :mod:`ess.data.tokens` for the tokenisation rules, :mod:`ess.data.validation` for the file checks,
:mod:`ess.data.batching` for the BPTT batch layout and :mod:`ess.data.planted` for the generated corpora
with a known perplexity floor (``planted``, ``planted-k3``, ``planted-k4``). ``python -m ess.data`` lists,
downloads, generates, verifies and counts corpora.
"""

from ess.data.batching import BPTTIterator, batchify, get_batch, num_tokens
from ess.data.corpus import Corpus, clear_corpus_cache, load_corpus, unregister_corpus, verify_corpus
from ess.data.download import download_corpus, ensure_corpus
from ess.data.generated import ensure_generated
from ess.data.planted import PlantedParams, planted_spec, register_planted
from ess.data.registry import (
    CORPORA,
    SPLITS,
    CorpusSpec,
    DownloadSpec,
    corpus_dir,
    generated_root,
    get_spec,
    register_corpus,
    resolve_data_dir,
)
from ess.data.roles import VALID_PARTS, valid_part
from ess.data.tokens import EOS, UNK, Vocabulary, tokenize

register_planted()

__all__ = [
    "CORPORA",
    "EOS",
    "SPLITS",
    "UNK",
    "VALID_PARTS",
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
    "valid_part",
    "verify_corpus",
]
