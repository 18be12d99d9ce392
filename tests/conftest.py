"""Shared fixtures: the real corpora come from $ESS_DATA_DIR and are never copied into the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA_DIR = os.environ.get("ESS_DATA_DIR")


def has_corpus(name: str) -> bool:
    return bool(DATA_DIR) and all((Path(DATA_DIR) / name / f"{s}.txt").is_file() for s in ("train", "valid", "test"))


requires_ptb = pytest.mark.skipif(not has_corpus("ptb"), reason="needs PTB in $ESS_DATA_DIR/ptb (set ESS_DATA_DIR)")
requires_wikitext2 = pytest.mark.skipif(
    not has_corpus("wikitext-2"), reason="needs WikiText-2 in $ESS_DATA_DIR/wikitext-2 (set ESS_DATA_DIR)")


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield
