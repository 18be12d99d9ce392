"""Tests of ``python -m ess.data`` (ess/data/__main__.py): stats, verify, list, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ess.data.__main__ import main as cli_main

import corpus_files
from corpus_files import DATA_DIR, SPLITS, needs_ptb, write

# pytest finds the shared fixtures by their names in this module
tiny = corpus_files.tiny


@needs_ptb
@pytest.mark.data
def test_cli_stats_ptb():
    env = {**os.environ, "ESS_DATA_DIR": DATA_DIR}
    result = subprocess.run([sys.executable, "-m", "ess.data", "stats", "ptb"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for figure in ("929,589", "73,760", "82,430", "10,000"):
        assert figure in result.stdout


def test_cli_bad_file_one_line(tmp_path):
    (tmp_path / "ptb").mkdir()
    for split in SPLITS:
        (tmp_path / "ptb" / f"{split}.txt").write_bytes(b" a b \n")
    result = subprocess.run([sys.executable, "-m", "ess.data", "stats", "ptb", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'ptb' / 'train.txt'}: truncated")


def test_cli_in_process(tiny, capsys):
    spec, root = tiny
    assert cli_main(["stats", spec.name, "--data-dir", str(root)]) == 0
    assert "train 12 / valid 4 / test 3 tokens, vocabulary 8" in capsys.readouterr().out
    assert cli_main(["verify", spec.name, "--data-dir", str(root)]) == 0
    assert capsys.readouterr().out.count("sha256 ok") == 3
    write(root, spec.name, "test", b"")
    assert cli_main(["verify", spec.name, "--data-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty file" in err
    assert cli_main(["list", "--data-dir", str(root)]) == 0
    assert f"{spec.name}\tmissing" not in capsys.readouterr().out
