"""Tests of ess.data.generated: atomic generation on first use, races, refusal of changed or foreign files."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from ess.data import CORPORA, PlantedParams, clear_corpus_cache, corpus_dir, load_corpus
from ess.data.__main__ import main as cli_main
from ess.data.generated import write_generated
from ess.errors import DataError

from corpus_files import SMALL


@pytest.fixture(autouse=True)
def _generated_dir(tmp_path_factory, monkeypatch):
    """Generated corpora go to a fresh directory (never ~/.cache); no load stays cached after a test."""
    monkeypatch.setenv("ESS_GENERATED_DIR", str(tmp_path_factory.mktemp("generated")))
    yield
    clear_corpus_cache()


def test_generation_races_are_safe(tmp_path):
    """The temp + rename protocol: a writer that loses the race keeps the winner's corpus and leaves no temp dir."""

    @dataclasses.dataclass(frozen=True)
    class Racing(PlantedParams):
        def generate(self, out, name):  # another process finishes first, while this one is writing
            write_generated(dataclasses.replace(SMALL), name, tmp_path / "corpus")
            return super().generate(out, name)

    racing = Racing(**dataclasses.asdict(SMALL))
    assert racing.fingerprint() == SMALL.fingerprint()
    assert write_generated(racing, "x", tmp_path / "corpus") is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_failed_generation_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match=r"never has the token"):
        write_generated(dataclasses.replace(SMALL, train_tokens=1, p_switch=0.9), "x", tmp_path / "corpus")
    assert list(tmp_path.iterdir()) == []


def test_two_processes_generate_at_once(tmp_path):
    code = ("import sys; from ess.data import load_corpus; c = load_corpus('planted-k3'); "
            "print(c.train.numel(), len(c.vocab))")
    env = {**os.environ, "ESS_GENERATED_DIR": str(tmp_path), "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert outs[0][0] == outs[1][0] and outs[0][0].split()[1] == "44"
    assert [p.name for p in tmp_path.iterdir()] == [f"planted-k3-{CORPORA['planted-k3'].generator.fingerprint()}"]
    assert sum("ess.data: generated corpus 'planted-k3'" in o[1] for o in outs) in (1, 2)  # said by whoever wrote it


def test_generated_on_first_use_and_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ESS_GENERATED_DIR", str(tmp_path / "gen"))
    assert cli_main(["list"]) == 0
    assert "planted\tmissing" in capsys.readouterr().out and not (tmp_path / "gen").exists()  # list generates nothing
    load_corpus("planted-k4")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"in {tmp_path / 'gen'}" in err and "floor perplexity 2.486" in err
    clear_corpus_cache()
    load_corpus("planted-k4")
    assert capsys.readouterr().err == ""


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ESS_GENERATED_DIR", str(tmp_path))
    assert write_generated(CORPORA["planted"].generator, "planted", corpus_dir("planted"))
    path = corpus_dir("planted") / "valid.txt"
    path.write_bytes(path.read_bytes().replace(b"c1 ", b"c2 ", 1))
    with pytest.raises(DataError, match=r"valid\.txt: sha256 mismatch"):
        load_corpus("planted")


def test_other_parameters_in_the_directory_are_refused(tmp_path):
    assert write_generated(SMALL, "x", tmp_path / "c")
    with pytest.raises(DataError, match=r"planted\.json: generated with other parameters"):
        write_generated(dataclasses.replace(SMALL, k=3), "x", tmp_path / "c")
