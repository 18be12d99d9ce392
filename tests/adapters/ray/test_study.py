"""The study job end to end at smoke size: its tables, and the same tables rebuilt from its MLflow store."""

from __future__ import annotations

import json
import math

import pytest

from conftest import DATA_DIR, load_job, requires_ptb

pytestmark = [requires_ptb, pytest.mark.slow]


def test_study_smoke_tables_and_the_report_from_the_store_agree(tmp_path):
    import warnings

    from analysis.load import load_runs, trial_summary
    from analysis.report import write_report
    from analysis.study import study_tables

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--smoke-test", "--storage-path", str(tmp_path / "tune"), "--tracking-uri", store, "--name", "st",
            "--num-cpus", "2", "--data-dir", DATA_DIR, "--arms", "intra,joint,darts_v2,random",
            "--stages", "search,baselines,random,tau,planted", "--exploratory-seeds", "1"]
    assert load_job("study").main(argv) == 0
    summary = json.loads((tmp_path / "tune" / "st" / "summary.json").read_text())
    arms = {a["arm"]: a for a in summary["arms"]}
    # darts_v2 is in no primary comparison: an exploratory arm, on the first seed only
    assert list(arms) == ["intra", "joint", "darts_v2", "random"]
    assert {a: arms[a]["n"] for a in arms} == {"intra": 2, "joint": 2, "darts_v2": 1, "random": 2}
    trials = summary["trials"]
    assert {(t["arm"], t["seed"]) for t in trials} == {(a, s) for a in arms for s in (1, 2)} - {("darts_v2", 2)}
    for t in trials:   # every retrain of the same parameter budget at these sizes: within a few % of DARTS_V2's
        assert t["retrain_valid_ppl"] > 1 and t["params"] > 0
    # known truth: the smoke's planted arms (joint, rsws searched; lstm retrained) on k = 2, one row a seed
    planted = summary["planted"]
    assert sorted((p["k"], p["arm"], p["seed"]) for p in planted) == [(2, "joint", 1), (2, "lstm", 1), (2, "rsws", 1)]
    assert all(p["floor_ppl"] < p["retrain_test_ppl"] for p in planted)
    assert all((p["reaches_planted_input"] is None) == (p["arm"] == "lstm") for p in planted)
    # each row names the searched space its statistics are held against (seed agreement, recovery by chance)
    assert all({"steps", "m", "n_inter", "intra_ops", "inter_ops"} <= set(p) for p in planted)
    # ranking quality: 5 genotypes retrained short and 4x long, scored by both joint supernets (intra's is not)
    tau = summary["tau"]
    assert tau["long_epochs"] == 4 * tau["short_epochs"] and len(tau["short_valid_ppl"]) == 5
    assert -1 <= tau["short_vs_long"]["tau"] <= 1 and tau["short_vs_long"]["n"] == 5
    assert sorted((s["arm"], s["seed"]) for s in tau["supernets"]) == [("joint", 1), ("joint", 2)]
    assert all(len(s["losses"]) == 5 and -1 <= s["vs_long"]["tau"] <= 1 for s in tau["supernets"])
    # the pre-registered comparisons, each listed; joint:rsws has no rsws arm here, so no comparison
    primary = {c["arm_a"] + ":" + c["arm_b"]: c for c in summary["primary"]["comparisons"]}
    assert list(primary) == ["joint:intra", "joint:rsws", "joint:random"]
    assert primary["joint:rsws"]["verdict"].startswith("no comparison") and primary["joint:intra"]["n_a"] == 2
    assert {h for h in summary["headline"]} >= {"joint_vs_intra", "joint_vs_random", "joint_vs_darts_v2"}
    for name in ("study.csv", "study_arms.csv", "study_pairs.csv", "study_planted.csv", "study_random_screen.csv",
                 "study_primary.csv", "study_tau.csv"):
        assert (tmp_path / "tune" / "st" / name).is_file()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = load_runs("st", tracking_uri=store)
        table, pairs = study_tables(trial_summary(frame), list(arms))
    for row in table.to_dict(orient="records"):
        job = arms[row["arm"]]
        for key in ("n", "retrain_valid_ppl_geo_mean", "retrain_valid_ppl_ci_low", "retrain_valid_ppl_ci_high",
                    "retrain_test_ppl_geo_mean", "params"):
            assert row[key] == pytest.approx(job[key], rel=1e-9, nan_ok=True), (row["arm"], key)
    job_pairs = {(p["arm_a"], p["arm_b"], p["metric"]): p for v in summary["pairs"].values() for p in v}
    for p in pairs.to_dict(orient="records"):
        q = job_pairs[(p["arm_a"], p["arm_b"], p["metric"])]
        assert p["p_holm"] == pytest.approx(q["p_holm"], nan_ok=True) and p["diff"] == pytest.approx(q["diff"])
    report = write_report(frame, tmp_path / "report", draw=False)
    assert "study_arms" in report.tables and "Study: arms at equal budget" in report.markdown.read_text()
    import pandas as pd

    shown = pd.read_csv(report.tables["study_arms"])   # the job's arms only: not the screen or planted stages
    assert shown["arm"].tolist() == list(arms)
    for row in shown.to_dict(orient="records"):
        assert row["retrain_valid_ppl_geo_mean"] == pytest.approx(arms[row["arm"]]["retrain_valid_ppl_geo_mean"])
    for p in pd.read_csv(report.tables["study_pairs"]).to_dict(orient="records"):
        assert p["p_holm"] == pytest.approx(job_pairs[(p["arm_a"], p["arm_b"], p["metric"])]["p_holm"], nan_ok=True)
    assert ("not in this table: planted-k2-joint, planted-k2-lstm, planted-k2-rsws, random-screen, tau-long, "
            "tau-short.") in report.markdown.read_text()   # sorted: the store's order is the trials' finishing order
    assert not math.isnan(table["retrain_valid_ppl_ci_low"].iloc[0])

    from analysis.results import main as results_main

    assert results_main(["--study", str(tmp_path / "tune" / "st"), "--out", str(tmp_path / "results.md")]) == 0
    text = (tmp_path / "results.md").read_text()
    for arm in arms:   # the main table has a row per arm with the job's own numbers
        assert f"| {arm} | {arms[arm]['n']} |" in text and f"{arms[arm]['retrain_valid_ppl_geo_mean']:,.1f}" in text
    assert "joint vs intra" in text and "## The planted-structure corpora" in text
    # the design states the planned n per arm and every stage's budget, from the job's own file
    assert ("- n per arm (planned): 2 seeds (1, 2) for the primary arms (joint, intra, random); the first 1 for the "
            "exploratory arms (darts_v2).") in text and "- Budget of every stage: search: 2 epochs on" in text
    for section in ("## Design (pre-registered)", "## Primary comparisons", "## Did the searches find something?",
                    "## Ranking quality of the proxies"):
        assert section in text, section
    for figure in ("final", "curves", "entropy", "parts", "ops"):   # the report's figures, for the study's arms
        assert (tmp_path / "results" / f"{figure}.png").is_file() and f"(results/{figure}.png)" in text, figure
    assert "figure left out" not in text
    # the study's own rows size a follow-up study (analysis.pilot reads summary.json as the job writes it)
    from analysis.pilot import main as pilot_main

    design = tmp_path / "next.yaml"
    assert pilot_main(["--data", str(tmp_path / "results" / "data"), "--arms", "intra,joint,random,darts_v2",
                       "--search-preset", "smoke", "--train-preset", "smoke", "--write", str(design)]) == 0
    from ess.adapters.ray.config import parse_job_args

    header = design.read_text()
    assert f"n = {len(tau['short_valid_ppl'])}" in header and "random search: best of" in header
    follow_up, _ = parse_job_args("study", ["--config", str(design), "--name", "next"])
    assert follow_up.seeds[0] == 101 and follow_up.search.emsize == 16
    assert follow_up.train.epochs in (tau["short_epochs"], 2 * tau["short_epochs"])
    # the committed rows rewrite the same file byte for byte
    assert results_main(["--data", str(tmp_path / "results" / "data"), "--out", str(tmp_path / "results.md")]) == 0
    assert (tmp_path / "results.md").read_text() == text and str(tmp_path) not in text
    # a discussion given once stays with the data: rereading the study without --notes keeps it
    (tmp_path / "notes.md").write_text("Limits of a CPU-scale study.\n")
    study = ["--study", str(tmp_path / "tune" / "st"), "--out", str(tmp_path / "results.md")]
    assert results_main([*study, "--notes", str(tmp_path / "notes.md")]) == 0 and results_main(study) == 0
    assert (tmp_path / "results.md").read_text().endswith("## Discussion\n\nLimits of a CPU-scale study.\n")
