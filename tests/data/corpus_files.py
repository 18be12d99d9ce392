"""What the ess.data tests share: a tiny corpus with its fixtures, a small planted corpus, the real corpora's marks."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from ess.data import CorpusSpec, PlantedParams, register_corpus, unregister_corpus

SPLITS = ("train", "valid", "test")
FILES = {s: f"{s}.txt" for s in SPLITS}
DATA_DIR = os.environ.get("ESS_DATA_DIR")


def _has_corpus(name: str) -> bool:
    return bool(DATA_DIR) and all((Path(DATA_DIR) / name / f"{s}.txt").is_file() for s in SPLITS)


needs_ptb = pytest.mark.skipif(not _has_corpus("ptb"), reason="PTB not found: set ESS_DATA_DIR to a dir with ptb/")
needs_wt2 = pytest.mark.skipif(
    not _has_corpus("wikitext-2"), reason="WikiText-2 not found: set ESS_DATA_DIR to a dir with wikitext-2/"
)

TINY = {
    "train": b" the cat sat \n on the mat \n\n <unk> dog \n",
    "valid": b" the dog sat \n",
    "test": b" a cat \n",  # 'a' is not in the train vocabulary: maps to <unk>
}


#: a planted corpus small enough to generate in a blink
SMALL = PlantedParams(k=2, switches=3, content=6, eps=0.2, p_switch=0.1, train_tokens=3_000, valid_tokens=500,
                      test_tokens=500, seed=7)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny(tmp_path):
    """A registered tiny corpus (sizes and sha256 of TINY) in a temporary data dir; unregistered after."""
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    spec = CorpusSpec(
        name=name,
        files=FILES,
        sizes={s: len(TINY[s]) for s in SPLITS},
        sha256={s: sha(TINY[s]) for s in SPLITS},
    )
    register_corpus(spec)
    root = tmp_path / "data"
    (root / name).mkdir(parents=True)
    for split, data in TINY.items():
        (root / name / FILES[split]).write_bytes(data)
    yield spec, root
    unregister_corpus(name)


@pytest.fixture
def bare(tmp_path):
    """A registered corpus without sizes or hashes, whose files the test writes."""
    name = f"bare-{uuid.uuid4().hex[:8]}"
    spec = register_corpus(CorpusSpec(name=name, files=FILES))
    root = tmp_path / "data"
    (root / name).mkdir(parents=True)
    yield spec, root
    unregister_corpus(name)


def write(root: Path, name: str, split: str, data: bytes) -> Path:
    path = root / name / FILES[split]
    path.write_bytes(data)
    return path
