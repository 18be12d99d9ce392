"""bench/ranking.py runs end to end (its figures are in BENCHMARKS.md, never asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import requires_ptb


@requires_ptb
def test_ranking_bench_smoke_test():
    script = Path(__file__).resolve().parents[1] / "bench" / "ranking.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke-test"], capture_output=True, text=True,
                          env={**os.environ}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "ranking" and set(result["results"]) == {
        "group 1", "group 4", "whole supernet, one-hot", "screen 20%, group 4", "halving"}
    halving = result["results"]["halving"]
    assert halving["keep"] == 100 and -1 <= halving["screen_vs_full_tau"] <= 1
