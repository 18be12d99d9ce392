"""The jobs of tune_jobs/ end to end on a local Ray (num_cpus=2) with MLflow in a temporary SQLite store."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from report_helpers import check_intervals, check_real_arms, check_title, job_report

from conftest import DATA_DIR, load_job, requires_ptb

pytestmark = [requires_ptb, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def _client(store: str):
    from mlflow import MlflowClient

    return MlflowClient(store)


def _runs(store: str, experiment: str):
    client = _client(store)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ess.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return parents, children


def _artifacts(store: str, run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in _client(store).list_artifacts(run_id, path)}


def _history(store: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in _client(store).get_metric_history(run_id, key))


def _each_point_once(store: str, run) -> None:
    """Every (key, step) of a run is in MLflow once (gap: retrains logged retrain/epoch twice at step 1)."""
    for key in run.data.metrics:
        steps = _history(store, run.info.run_id, key)
        assert len(steps) == len(set(steps)), (run.info.run_name, key, steps)


# -- Tuner.restore with Optuna: run first (a subprocess of its own, before this module starts Ray) ---------


def test_hparam_search_interrupted_and_resumed_keeps_the_study(tmp_path):
    import optuna

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, str(ROOT / "tune_jobs" / "hparam_search.py"), "--smoke-test", "--storage-path",
           str(tmp_path / "tune"), "--tracking-uri", store, "--name", "hp", "--num-cpus", "2", "--num-samples", "3",
           "--search", "max_train_tokens=2000"]
    env = {**os.environ, "ESS_DATA_DIR": DATA_DIR}
    storage = f"sqlite:///{tmp_path / 'tune' / 'hp' / 'optuna.db'}"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline, before = time.time() + 240, []
        while time.time() < deadline and proc.poll() is None:   # stop part way: after the first finished trial
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name="hp", storage=storage)
            except Exception:   # not created yet
                continue
            before = [(t.number, t.params, t.value) for t in study.trials if t.state.is_finished()]
            if before:
                break
        assert before, (tmp_path / "first.log").read_text()[-3000:]
        proc.send_signal(signal.SIGINT)                           # Ctrl+C: Tune saves its state and stops
        assert proc.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "--resume --name hp" in (tmp_path / "first.log").read_text()
    interrupted = optuna.load_study(study_name="hp", storage=storage)
    assert len(interrupted.trials) < 3 or any(not t.state.is_finished() for t in interrupted.trials)

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "restoring" in resumed.stderr and "Optuna study 'hp' (3 trials)" in resumed.stdout
    study = optuna.load_study(study_name="hp", storage=storage)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    after = {t.number: (t.params, t.value) for t in study.trials}
    for number, params, value in before:                          # the history before the stop is kept as is
        assert after[number] == (params, value)
    summary = json.loads((tmp_path / "tune" / "hp" / "summary.json").read_text())
    assert summary["trials"] == 3 and summary["optuna_trials"] == 3
    assert summary["best_valid_ppl"] == pytest.approx(min(t.value for t in study.trials))
    parents, children = _runs(store, "ess-hparam_search")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"   # the resumed run kept its parent
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}

    report = job_report(tmp_path / "report", "hp", store=store)   # the sampled configurations, ranked
    check_title(report, "hparam_search", "hp")
    configs = report.tables["configs"]
    assert len(configs) == 3 and configs["rank"].tolist() == [1, 2, 3] and "arms" not in report.tables
    best = configs.iloc[0]
    assert best["final_valid_ppl"] == pytest.approx(summary["best_valid_ppl"])
    for key, value in summary["best_config"].items():   # the tuned values, by name (m, n_inter: their columns)
        assert best[key if key in configs else f"config.search.{key}"] == pytest.approx(value), key
    assert report.notes == [] and "3 sampled configuration(s) of mode joint, seed 1" in report.markdown


# -- the smoke jobs, in this process, sharing one local Ray ------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def joint(local_ray, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("joint")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    argv = ["--smoke-test", "--storage-path", str(tmp / "tune"), "--tracking-uri", store, "--name", "smoke",
            "--data-dir", DATA_DIR]
    start = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = load_job("joint_search").main(argv)
    return {"rc": rc, "tmp": tmp, "store": store, "seconds": time.perf_counter() - start, "out": out.getvalue()}


def test_joint_search_smoke(joint):
    assert joint["rc"] == 0
    tmp, store = joint["tmp"], joint["store"]
    summary = json.loads((tmp / "tune" / "smoke" / "summary.json").read_text())
    assert len(summary["searched"]) == 2 and {s["seed"] for s in summary["searched"]} == {1, 2}   # two seeds
    assert len(summary["retrained"]) == 1                                                      # top_k = 1
    best = summary["best"]
    assert best["label"] == summary["retrained"][0]["label"].removeprefix("retrain_")
    assert Path(best["artifacts"]["genotype.json"]).is_file() and Path(best["artifacts"]["retrain/best.pt"]).is_file()
    assert json.loads((tmp / "tune" / "smoke" / "best_genotype.json").read_text()) == json.loads(best["genotype"])
    top = tmp / "tune" / "smoke"          # results at the top: the picture, a README of what is where
    assert (top / "best_genotype.png").stat().st_size > 10_000
    assert "best_genotype.png" in (top / "README.txt").read_text()
    trials = (top / "trials.csv").read_text().splitlines()
    assert trials[0] == "trial,mode,seed,search_valid_ppl,decided,decided_share,retrain_valid_ppl,retrain_test_ppl"
    assert len(trials) == 3
    assert summary["decided"] == best["decided"] and summary["selected_by"].startswith("lowest retrained valid")
    said = joint["out"]
    assert "chosen by:" in said
    # the evidence of its searches: two seeds' agreement against random genotypes, their stability
    evidence = summary["evidence"]["joint"]
    assert evidence["searches"] == 2 and evidence["agreement"]["k"] == 2
    assert 0.0 <= evidence["changed_epoch_share"] <= 1.0 and 0.0 <= evidence["kept_from_middle"] <= 1.0
    assert f"evidence (docs/method.md section 11): {evidence['statement']}" in said
    assert "/#/experiments/" in said and said.rstrip().splitlines()[-1].startswith("wall time")

    parents, children = _runs(store, "ess-joint_search")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    search = [c for c in children if c.data.tags["ess.phase"] == "search"]
    retrain = [c for c in children if c.data.tags["ess.phase"] == "retrain"]
    assert len(search) == 2 and len(retrain) == 1
    for run in search:
        rid = run.info.run_id
        assert run.info.status == "FINISHED"
        assert _history(store, rid, "valid/ppl") == [1, 2] and _history(store, rid, "arch/entropy") == [1, 2]
        assert {"genotypes/epoch_001.json", "genotypes/epoch_001.png", "genotypes/epoch_002.json",
                "genotypes/epoch_002.png"} <= _artifacts(store, rid, "genotypes")
        assert {"genotype.json", "genotype.png", "arch_weights.json", "arch_weights_table.json", "model"} \
            <= _artifacts(store, rid)
        assert "model/checkpoint.pt" in _artifacts(store, rid, "model")
        tags = run.data.tags
        assert tags["mode"] == "joint" and tags["dataset"] == "ptb" and tags["steps"] == "3"
        assert tags["n_inter"] == "2" and tags["m"] == "2" and tags["seed"] in ("1", "2") and tags["git_commit"]
        assert run.data.params["search.emsize"] == "16" and run.data.params["search.mode"] == "joint"
        if importlib.util.find_spec("psutil"):                                                # system metrics
            assert "system/cpu_utilization_percentage" in run.data.metrics
    for run in children:
        _each_point_once(store, run)
    rid = retrain[0].info.run_id
    assert _history(store, rid, "retrain/valid/ppl") == [1, 2]   # TrainConfig smoke: 2 epochs
    assert "retrain/test/ppl" in retrain[0].data.metrics
    assert "model/best.pt" in _artifacts(store, rid, "model")
    assert {"summary.json", "job.yaml", "best_genotype.json"} <= _artifacts(store, parent.info.run_id)

    out = joint["out"]
    assert "best genotype:" in out and "artifacts:" in out and best["checkpoint"] in out
    assert f"mlflow ui --backend-store-uri {store} --host 127.0.0.1" in out
    print(f"\njoint_search --smoke-test wall time: {joint['seconds']:.1f} s")


def test_joint_search_report_joins_the_retrain_to_its_search(joint, tmp_path):
    """The report of the joint smoke: one row per search, the retrain on its search's row, the search seeds."""
    summary = json.loads((joint["tmp"] / "tune" / "smoke" / "summary.json").read_text())
    report = job_report(tmp_path, "smoke", store=joint["store"])
    check_title(report, "joint_search", "smoke")
    trials = report.trials().set_index("run_name")
    searched = {s["label"]: s for s in summary["searched"]}
    assert set(trials.index) == set(searched) and len(trials) == len(searched)   # no retrain row of its own
    for label, s in searched.items():
        assert trials.loc[label, "seed"] == s["seed"] and trials.loc[label, "mode"] == s["mode"]
        assert trials.loc[label, "final_valid_ppl"] == pytest.approx(s["valid_ppl"])
    retrained = summary["retrained"][0]
    row = trials.loc[retrained["label"]]
    assert row["retrain_run"] == f"retrain_{retrained['label']}" and row["retrain_seed"] != row["seed"]
    assert row["test_ppl"] == pytest.approx(retrained["retrain_test_ppl"])
    assert row["retrain_valid_ppl"] == pytest.approx(retrained["retrain_valid_ppl"])
    search = report.arms("final_valid_ppl")
    assert list(search.index) == ["joint"] and search.loc["joint", "n"] == len(searched)
    assert search.loc["joint", "mean"] == pytest.approx(sum(s["valid_ppl"] for s in searched.values()) / len(searched))
    assert search.loc["joint", "seeds"] == ",".join(sorted(str(s["seed"]) for s in searched.values()))
    test = report.arms("test_ppl")
    assert test.loc["joint", "n"] == 1 and test.loc["joint", "seeds"] == str(searched[retrained["label"]]["seed"])
    check_intervals(report)
    check_real_arms(report)
    assert report.notes == []   # the search not among the top_k was never meant to be retrained


def test_retrain_job_takes_the_best_runs_of_an_experiment(joint, capsys, tmp_path):
    """retrain.py with --source-experiment (the joint smoke's MLflow store) and a built-in genotype."""
    tmp, store = joint["tmp"], joint["store"]
    argv = ["--smoke-test", "--storage-path", str(tmp / "tune"), "--tracking-uri", store, "--name", "re",
            "--data-dir", DATA_DIR, "--source-experiment", "ess-joint_search", "--source-run", "smoke",
            "--top-k", "1", "--genotypes", "DARTS_V2"]
    assert load_job("retrain").main(argv) == 0
    summary = json.loads((tmp / "tune" / "re" / "summary.json").read_text())
    labels = {r["label"] for r in summary["retrained"]}
    joint_best = min(json.loads((tmp / "tune" / "smoke" / "summary.json").read_text())["searched"],
                     key=lambda s: s["valid_ppl"])
    assert labels == {"DARTS_V2", joint_best["label"]}
    parents, children = _runs(store, "ess-retrain")
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["genotype"] for c in children} == labels
    assert "best genotype:" in capsys.readouterr().out

    report = job_report(tmp_path / "report", "re", store=store)   # arms by genotype, the search's seed
    check_title(report, "retrain", "re")
    trials = report.trials().set_index("genotype_label")
    assert set(trials.index) == labels
    assert trials.loc[joint_best["label"], "seed"] == joint_best["seed"] and pd.isna(trials.loc["DARTS_V2", "seed"])
    assert trials["retrain_seed"].notna().all()
    test = report.arms("test_ppl")
    assert set(test.index) == labels and (test["n"] == 1).all()
    for r in summary["retrained"]:
        assert test.loc[r["label"], "mean"] == pytest.approx(r["retrain_test_ppl"])
    check_intervals(report)
    assert report.notes == []   # one retrain per genotype is the job's design, not a gap


def test_ablation_smoke(local_ray, tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.perf_counter()
    rc = load_job("ablation").main(["--smoke-test", "--storage-path", str(tmp_path / "tune"), "--tracking-uri", store,
                               "--name", "abl", "--data-dir", DATA_DIR])
    seconds = time.perf_counter() - start
    assert rc == 0
    summary = json.loads((tmp_path / "tune" / "abl" / "summary.json").read_text())
    assert sorted(t["mode"] for t in summary["trials"]) == ["inter", "intra", "joint"]   # modes x 1 seed x 1 count
    assert summary["failed_trials"] == 0 and summary["value"] == "retrain_valid_ppl"
    assert all(t["retrain_test_ppl"] and t["search_valid_ppl"] for t in summary["trials"])
    assert (tmp_path / "tune" / "abl" / "ablation.csv").read_text().startswith("mode,seed,steps,n_inter,m,")

    parents, children = _runs(store, "ess-ablation")
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mode"] for c in children} == {"intra", "inter", "joint"}
    parts = ("intra", "history", "input")
    per_part = tuple(f"{kind}/{part}/" for kind in ("arch", "genotype") for part in parts)
    keys = [set(k for k in c.data.metrics if not k.startswith(("system/", *per_part))) for c in children]
    assert keys[0] == keys[1] == keys[2]                      # same metric names: comparable side by side
    searched = {"intra": {"intra"}, "inter": {"history", "input"}, "joint": set(parts)}
    for c in children:                                        # per-part diagnostics: the searched parts only
        has = {part for part in parts if f"arch/{part}/entropy" in c.data.metrics}
        assert has == searched[c.data.tags["mode"]]
    assert {"valid/ppl", "retrain/valid/best_ppl", "retrain/test/ppl"} <= keys[0]
    for c in children:
        _each_point_once(store, c)
        assert c.info.status == "FINISHED" and c.data.tags["ess.phase"] == "search+retrain"
        assert _history(store, c.info.run_id, "valid/ppl") == [1, 2]
        assert _history(store, c.info.run_id, "retrain/valid/ppl") == [1, 2]   # TrainConfig smoke: 2 epochs
        assert {"genotypes/epoch_001.json", "genotypes/epoch_002.png"} <= _artifacts(store, c.info.run_id, "genotypes")
        assert {"model/checkpoint.pt", "model/best.pt"} <= _artifacts(store, c.info.run_id, "model")
        assert {"steps", "n_inter", "m", "seed", "dataset"} <= set(c.data.tags)
    assert {"ablation.csv", "ablation_summary.csv"} <= _artifacts(store, parents[0].info.run_id)
    out = capsys.readouterr().out
    assert "ablation (retrain_valid_ppl" in out and "mlflow ui --backend-store-uri" in out
    print(f"\nablation --smoke-test wall time: {seconds:.1f} s")
