"""Tests of ess.data.registry: the data directory, unknown corpus names."""

from __future__ import annotations

from pathlib import Path

import pytest

from ess.data import load_corpus, resolve_data_dir
from ess.errors import DataError


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ESS_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("ESS_DATA_DIR")
    assert resolve_data_dir(None) == Path("data")


def test_unknown_corpus():
    with pytest.raises(DataError, match=r"unknown corpus 'nope'.*ptb.*wikitext-2"):
        load_corpus("nope")
