"""The transfer job (cells x seeds on CoNLL-2003) end to end on a local Ray with MLflow in a temporary SQLite store."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from report_helpers import check_intervals, check_real_arms, check_title, job_report

from conftest import DATA_DIR, load_job

HAS_CONLL2003 = bool(DATA_DIR) and all((Path(DATA_DIR) / "conll2003" / f"{s}.txt").is_file()
                                       for s in ("train", "valid", "test"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAS_CONLL2003, reason="needs CoNLL-2003 in $ESS_DATA_DIR/conll2003")]


def test_transfer_smoke_job_compares_cells_in_mlflow_and_its_report(tmp_path, capsys, monkeypatch):
    import ray
    from mlflow import MlflowClient

    from ess.adapters.ray.config import job_base
    from ess.adapters.ray.grid import transfer_variants
    from ess.transfer import PRESETS, TransferConfig

    monkeypatch.setenv("ESS_DATA_DIR", DATA_DIR)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    smoke = job_base("transfer", "smoke")
    assert smoke.cells == ("lstm", "DARTS_V2") and smoke.seeds == (1,)
    assert smoke.transfer == dataclasses.replace(TransferConfig(**PRESETS["smoke"]), **{
        k: getattr(smoke.transfer, k) for k in ("task", "run_dir", "threads", "progress", "data_dir")})
    assert len(transfer_variants(smoke, smoke.cells)) == 2
    argv = ["--smoke-test", "--storage-path", str(tmp_path / "tune"), "--tracking-uri", store, "--name", "tt",
            "--data-dir", DATA_DIR, "--num-cpus", "2", "--no-system-metrics"]
    try:
        assert load_job("transfer").main(argv) == 0
    finally:
        ray.shutdown()
        os.environ.pop("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", None)
    out = capsys.readouterr().out
    assert "transfer (span F1" in out and "mlflow ui --backend-store-uri" in out
    assert "lstm" in out and "DARTS_V2" in out

    summary = json.loads((tmp_path / "tune" / "tt" / "summary.json").read_text())
    assert summary["failed_trials"] == 0 and len(summary["trials"]) == 2
    assert {t["cell"] for t in summary["trials"]} == {"lstm", "DARTS_V2"}
    for t in summary["trials"]:
        assert 0.0 <= t["dev_f1"] <= 100.0 and 0.0 <= t["test_f1"] <= 100.0  # conlleval: percent and t["checkpoint"]
        assert (Path(t["checkpoint"]) / "transfer" / "checkpoint.pt").is_file()
    assert {r["cell"] for r in summary["by_cell"]} == {"lstm", "DARTS_V2"}
    assert (tmp_path / "tune" / "tt" / "transfer_summary.csv").is_file()

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("ess-transfer")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ess.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert {c.data.tags["cell"] for c in children} == {"lstm", "DARTS_V2"}
    for c in children:
        assert c.data.tags["task"] == "conll2003" and c.data.tags["seed"] == "1" and c.data.tags.get("git_commit")
        epochs = set(range(1, smoke.transfer.epochs + 1))   # the TransferConfig smoke preset's
        assert {m.step for m in client.get_metric_history(c.info.run_id, "dev/f1")} == epochs
        assert len(client.get_metric_history(c.info.run_id, "train/loss")) >= 2
        assert "test/f1" in c.data.metrics
        assert "transfer" in {f.path for f in client.list_artifacts(c.info.run_id)}

    report = job_report(tmp_path / "report", "tt", store=store)   # arms by task and cell, span F1
    check_title(report, "transfer", "tt")
    dev, test = report.arms("dev/f1"), report.arms("test/f1")
    assert set(dev.index) == {"conll2003 lstm", "conll2003 DARTS_V2"}
    for row in summary["by_cell"]:
        arm = f"{row['task']} {row['cell']}"
        assert dev.loc[arm, "n"] == row["dev_f1_count"] and dev.loc[arm, "seeds"] == "1"
        assert dev.loc[arm, "mean"] == pytest.approx(row["dev_f1_mean"])
        assert test.loc[arm, "mean"] == pytest.approx(row["test_f1_mean"])
    params = report.trials().set_index("cell")["params"].to_dict()
    assert params == {t["cell"]: t["params"] for t in summary["trials"]}
    assert "primary metric test/f1 (higher is better)" in report.markdown
    check_intervals(report)
    check_real_arms(report)
    assert len(report.notes) == 1 and report.notes[0].startswith("arm(s) with one seed: ")   # smoke: seed 1 only
