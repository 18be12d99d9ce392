"""The console lines of a running job (ess.adapters.ray.progress)."""

from __future__ import annotations

from ess.adapters.ray.progress import WIDTH, progress_line


def test_one_short_line_per_epoch_with_an_estimate():
    epochs = {"search": 4, "retrain": 3}
    line = progress_line("joint_s3_n8-3-3", {"epoch": 2, "valid/ppl": 1830.12}, epochs, 0.0, 120.0)
    assert line.startswith("joint_s3_n8-3-3") and "search 2/4" in line and "valid ppl   1830.1" in line
    assert "2m00s elapsed" in line and "ETA 5m00s" in line and len(line) <= WIDTH   # 5 epochs left at 1 min each
    line = progress_line("joint_s3_n8-3-3", {"epoch": 4, "retrain/epoch": 3, "retrain/valid/ppl": 300.0}, epochs,
                         0.0, 700.0)
    assert "retrain 3/3" in line and "ETA done" in line
    assert progress_line("x" * 300, {"epoch": 1}, {"search": 1}, 0.0, 5.0).count("x") == 34
    assert progress_line("t", {"dev/f1": 0.5}, {}, 0.0, 1.0) is None
    assert progress_line("t", {"epoch": 4, "retrain/epoch": 3, "final": 1}, epochs, 0.0, 1.0) is None   # a repeat
    assert "\x1b" not in line   # no terminal codes in logs
