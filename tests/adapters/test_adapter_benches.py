"""The adapters' benchmark scripts run end to end at their smallest sizes and print one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA_DIR, requires_ptb

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [requires_ptb, pytest.mark.slow]


def _run(script: str, *args: str, cwd: Path) -> dict:
    env = {**os.environ, "ESS_DATA_DIR": DATA_DIR}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = "\n" + out.stdout
    return json.loads(text[text.rindex("\n{") + 1:])   # the JSON object closes the output (Tune prints before)


def test_tracking_overhead_shows_each_epoch_once_from_the_driver(tmp_path):
    got = _run("tracking_overhead.py", "--epochs", "2", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert got["epochs"] == 2 + 2 and not got["on_trial_critical_path"] and got["points_written_twice"] == []
    assert got["mlflow_calls_per_epoch"][1] == 5 and got["mlflow_calls_per_epoch"][-1] == 1


def test_tune_overhead_times_one_epoch_three_ways(tmp_path):
    got = _run("tune_overhead.py", "--preset", "smoke", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert {"direct", "tune_in_trial", "tune_fit", "ratio_in_trial", "ratio_fit"} <= set(got)
    assert 0 < got["direct"] and 0 < got["tune_in_trial"] < got["tune_fit"]
