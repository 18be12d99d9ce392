"""analysis.report (the command) and analysis/ablation.ipynb (executed) on a real MLflow SQLite store.

The store is tests/test_analysis.py's (built once per session), whose metric values are known; the
slow test runs a real ``tune_jobs/ablation.py --smoke-test`` and reports it from MLflow and from the
Ray Tune result folders.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("mlflow")
scipy_stats = pytest.importorskip("scipy.stats")

from report_helpers import check_intervals, check_real_arms, check_title, read_report  # noqa: E402
from test_analysis import TRIALS, TUNE_NAME, build_ray_results, shared_store  # noqa: E402

from analysis.report import main, markdown_table  # noqa: E402

from conftest import requires_ptb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("final_metric", "valid_ppl_curves", "entropy", "best_genotype", "op_heatmap")
TABLES = ("trials", "runs", "arms", "comparisons", "curves", "evolution", "evidence", "genotypes", "op_frequency",
          "predecessor_frequency")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["--experiment", TUNE_NAME, "--tracking-uri", store, "--out", str(out)]) == 0
    return out


def check_report_files(out: Path, expected: tuple[str, ...] = FIGURES) -> str:
    """Every expected file is there and the HTML references every figure (PNG and SVG); the HTML text."""
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    for name in TABLES:
        assert (out / "tables" / f"{name}.csv").is_file(), name
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    figures = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert set(figures) == set(expected)
    for name in figures:
        for fmt in ("png", "svg"):
            path = out / "figures" / f"{name}.{fmt}"
            assert path.stat().st_size > 1000, path
            assert f"figures/{name}.{fmt}" in page and f"figures/{name}.{fmt}" in markdown
    assert (out / "figures" / "final_metric.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "figures" / "op_heatmap.svg").read_bytes()[:2000]
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
    return page


def test_report_writes_all_files_and_the_html_references_every_figure(report):
    page = check_report_files(report)
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") >= 8
    markdown = (report / "report.md").read_text()
    assert "| arm | metric | n | mean | std |" in markdown
    assert "primary metric test_ppl" in markdown


def test_report_tables_hold_the_hand_computed_values(report):
    arms = pd.read_csv(report / "tables" / "arms.csv")
    test = arms[arms["metric"] == "test_ppl"].set_index("arm")
    joint = [v[1] for (m, _), v in TRIALS.items() if m == "joint"]
    mean = sum(joint) / len(joint)
    std = math.sqrt(sum((v - mean) ** 2 for v in joint) / (len(joint) - 1))
    assert test.loc["joint", "n"] == 3
    assert test.loc["joint", "mean"] == pytest.approx(mean) and test.loc["joint", "std"] == pytest.approx(std)
    comparisons = pd.read_csv(report / "tables" / "comparisons.csv")
    row = comparisons[comparisons["metric"] == "test_ppl"].iloc[0]
    reference = scipy_stats.ttest_ind([80, 84, 88], [70, 71, 75], equal_var=False)
    assert row["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    trials = pd.read_csv(report / "tables" / "trials.csv")
    assert len(trials) == 6 and set(trials["status"]) == {"FINISHED"}
    runs = pd.read_csv(report / "tables" / "runs.csv")
    assert len(runs) == 18 and "config.search.lr" in runs.columns
    genotypes = pd.read_csv(report / "tables" / "genotypes.csv")
    assert genotypes["rank"].tolist() == [1, 2, 3] and genotypes["mean"].tolist() == [72.0, 82.0, 88.0]


def test_report_says_whether_the_searches_agree_by_hand(report):
    """intra's seeds derived A, A, B: the pair (A, A) agrees on its 3 (op, predecessor) choices, each (A, B) pair
    on 1 of 3 (node 1), so 5 of 9; joint's three seeds derived one genotype: 1. Both above random genotypes."""
    evidence = pd.read_csv(report / "tables" / "evidence.csv").set_index("arm")
    assert evidence.loc["intra", "agreement"] == pytest.approx(5 / 9) and evidence.loc["joint", "agreement"] == 1.0
    assert (evidence["searches"] == 3).all() and (evidence["random_agreement"] < evidence["agreement"]).all()
    assert (evidence["p"] < 0.05).all()
    assert "Did the searches find something?" in (report / "report.md").read_text()


def test_report_notes_runs_that_miss_metrics(store, tmp_path, capsys):
    out = tmp_path / "broken"
    assert main(["--experiment", "ess-broken", "--tracking-uri", store, "--out", str(out), "--metric", "test_ppl",
                 "--no-figures"]) == 0
    err = capsys.readouterr().err
    markdown = (out / "report.md").read_text()
    assert "## Notes" in markdown
    assert "1 unfinished trial run(s) left out (1 FAILED)" in markdown
    assert "'test_ppl' is missing in 1 run(s): intra_s2_n3-2-2" in markdown
    notes = markdown.split("## Notes", 1)[1]   # the run's missing retrain metrics are one note, naming them all
    assert notes.count("is missing") == 1 and "(also 'retrain_valid_ppl', 'params')" in notes
    assert "note: metric 'test_ppl' is missing" in err and "Traceback" not in err
    assert (out / "report.html").is_file() and not (out / "figures").exists()


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "error: experiment: no MLflow experiment or Tune experiment named 'nope'"),
    (["--experiment", "ess-empty"], "error: MLflow experiment 'ess-empty' in sqlite"),
    (["--experiment", TUNE_NAME, "--metric", "no/such"], "error: --metric: no run has 'no/such'"),
    (["--experiment", "ess-ablation", "--parent", "nope"], "error: parent: no Tune experiment 'nope'"),
])
def test_report_errors_are_one_line(store, tmp_path, capsys, args, message):
    assert main([*args, "--tracking-uri", store, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_report_errors_for_bad_sources(tmp_path, capsys):
    assert main(["--experiment", "x", "--ray-results", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "no such Ray Tune results folder" in capsys.readouterr().err
    assert main(["--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'no.db'}"]) == 2
    assert "no MLflow database there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    assert "give --experiment NAME" in capsys.readouterr().err


def test_report_from_ray_results(tmp_path):
    build_ray_results(tmp_path / "tune")
    out = tmp_path / "report"
    assert main(["--experiment", "abl-ray", "--ray-results", str(tmp_path / "tune"), "--out", str(out),
                 "--test", "bootstrap"]) == 0
    check_report_files(out)
    trials = pd.read_csv(out / "tables" / "trials.csv")
    assert len(trials) == 5   # the trial Tune marked ERROR is left out
    assert "1 unfinished trial run(s) left out (1 FAILED)" in (out / "report.md").read_text()


def test_markdown_table_escapes_and_formats():
    text = markdown_table(pd.DataFrame({"a": ["x|y", None], "b": [1234.5678, 0.000123456]}))
    assert text.splitlines()[0] == "| a | b |" and text.splitlines()[1] == "|---|---:|"
    assert "| x\\|y | 1234.57 |" in text and "|  | 0.0001235 |" in text


def test_notebook_executes_against_the_store(store):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "analysis" / "ablation.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
        "save the notebook without outputs"
    env = {"ESS_ANALYSIS_TRACKING_URI": store, "ESS_ANALYSIS_EXPERIMENT": TUNE_NAME, "ESS_ANALYSIS_RAY_RESULTS": ""}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    assert any("6 trials" in o.get("text", "") for o in outputs)


@requires_ptb
@pytest.mark.slow
@pytest.mark.data
def test_report_of_a_real_smoke_ablation(tmp_path):
    """``tune_jobs/ablation.py --smoke-test`` then the report, from MLflow and from the Ray result folders."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0", "MLFLOW_TRACKING_URI": ""}
    job = subprocess.run([sys.executable, str(ROOT / "tune_jobs" / "ablation.py"), "--smoke-test", "--name", "abl",
                          "--storage-path", str(tmp_path / "tune"), "--num-cpus", "2", "--no-system-metrics"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    store = f"sqlite:///{tmp_path / 'tune' / 'mlflow.db'}"
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "analysis.report", "--experiment", "abl", "--tracking-uri", store,
                             "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    check_report_files(out, FIGURES + ("parts",))   # a real search logs the per-part diagnostics
    trials = pd.read_csv(out / "tables" / "trials.csv")
    assert sorted(trials["mode"]) == ["inter", "intra", "joint"] and trials["test_ppl"].notna().all()
    ray_out = tmp_path / "report-ray"
    assert main(["--ray-results", str(tmp_path / "tune" / "abl"), "--out", str(ray_out)]) == 0
    ray_trials = pd.read_csv(ray_out / "tables" / "trials.csv")
    merged = trials.merge(ray_trials, on="mode", suffixes=("_mlflow", "_ray"))
    for col in ("final_valid_ppl", "best_valid_ppl", "retrain_valid_ppl", "test_ppl", "params"):
        assert merged[f"{col}_mlflow"].to_numpy() == pytest.approx(merged[f"{col}_ray"].to_numpy()), col
    summary = json.loads((tmp_path / "tune" / "abl" / "summary.json").read_text())
    by_mode = {t["mode"]: t["retrain_test_ppl"] for t in summary["trials"]}
    assert dict(zip(trials["mode"], trials["test_ppl"])) == pytest.approx(by_mode)
    report = read_report(out)   # the job's own table per arm: one seed each, so one note
    check_title(report, "ablation", "abl")
    check_title(read_report(ray_out), "ablation", "abl")
    test = report.arms("test_ppl")
    assert set(test.index) == {"intra", "inter", "joint"} and (test["n"] == 1).all() and (test["seeds"] == "1").all()
    assert test["mean"].to_dict() == pytest.approx(by_mode)
    search = report.arms("final_valid_ppl")["mean"].to_dict()
    assert search == pytest.approx({t["mode"]: t["search_valid_ppl"] for t in summary["trials"]})
    check_intervals(report)
    check_real_arms(report)
    assert report.notes == ["arm(s) with one seed: intra, inter, joint (no standard deviation, confidence interval "
                            "or test; run more seeds)"]
