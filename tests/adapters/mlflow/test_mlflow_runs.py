"""MLflow runs: the no-op tracker, parent and nested runs in a temporary SQLite store, the `ui` command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ess.adapters.mlflow import (
    PARENT_TAG,
    MLflowTracker,
    Tracker,
    best_runs,
    child_runs,
    close_open_children,
    config_tags,
    default_tracking_uri,
    flat_params,
    get_or_create_experiment,
    numeric_metrics,
    resolve_tracking_uri,
    start_parent_run,
    start_trial_run,
    ui_command,
    ui_hint,
)
from ess.errors import ConfigError
from ess.space.derive import arch_weight_rows

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def store(store_dir):
    """One SQLite store for the module (creating one runs MLflow's migrations: seconds); tests use own names."""
    return f"sqlite:///{store_dir / 'mlflow.db'}"


def test_noop_tracker_accepts_everything(tmp_path):
    t = Tracker()
    t.log_params({"a": 1})
    t.set_tags({"b": "x"})
    t.log_metrics({"valid/ppl": 3.0, "genotype": "{}"}, step=1)
    t.log_artifact(tmp_path / "missing.json", "genotypes")
    t.log_dict({"a": 1}, "a.json")
    t.log_table([{"a": 1}], "t.json")
    t.finish("FAILED")
    assert t.run_id is None and t.artifact_uri is None
    with Tracker() as t2:
        t2.log_metrics({"x": 1})


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("", tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert resolve_tracking_uri("", tmp_path) == default_tracking_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri("", tmp_path) == "http://127.0.0.1:5000"          # the env beats the default
    assert resolve_tracking_uri("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"  # the flag beats the env
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel.db", "x") == f"sqlite:///{tmp_path.resolve() / 'rel.db'}"
    assert resolve_tracking_uri("none", tmp_path) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "none")
    assert resolve_tracking_uri("", tmp_path) is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match="tracking-uri"):
        resolve_tracking_uri("", "s3://bucket/tune")


def test_flat_params_tags_and_numeric_metrics():
    params = flat_params({"lr": 20.0, "seeds": [1, 2], "search": {"m": 3, "data_dir": None}})
    assert params == {"lr": "20.0", "seeds": "1,2", "search.m": "3", "search.data_dir": ""}
    assert config_tags({"mode": "joint", "seed": 3, "steps": 8, "n_inter": 3, "m": 2, "lr": 1.0, "dataset": "ptb"}) \
        == {"mode": "joint", "seed": "3", "steps": "8", "n_inter": "3", "m": "2", "dataset": "ptb"}
    got = numeric_metrics({"a": 1, "b": 2.5, "c": True, "genotype": "{...}", "d": None, "e": [1]})
    assert got == {"a": 1.0, "b": 2.5, "c": 1.0}


def test_arch_weight_rows_flattens_every_searched_part():
    weights = {"columns": ["none", "tanh"],
               "intra": {"searched": True, "columns": ["none", "tanh"], "rows": ["1<-0", "2<-1"],
                         "weights": [[0.3, 0.7], [0.6, 0.4]]},
               "history": {"searched": True, "columns": ["none", "tanh"],
                           "branches": [{"node": 0, "branch": "a", "rows": [0, 1],
                                         "weights": [[0.5, 0.5], [0.1, 0.9]]}]},
               "input": {"searched": False, "genotype": {}}}
    rows = arch_weight_rows(weights)
    assert len(rows) == 4 + 4
    assert {"part": "intra", "edge": "2<-1", "branch": "", "op": "tanh", "weight": 0.4} in rows
    assert {"part": "history", "edge": "node 0 <- 1", "branch": "a", "op": "none", "weight": 0.1} in rows
    assert not [r for r in rows if r["part"] == "input"]


def test_parent_and_nested_runs(store, tmp_path):
    """One parent per experiment, nested trial runs with params, tags, per-epoch metrics, artifacts."""
    parent = start_parent_run(store, "ess-test", "exp1", tags={"job": "test"}, params={"seeds": "1,2"})
    exp_id = get_or_create_experiment(store, "ess-test")
    genotype = tmp_path / "genotype.json"
    genotype.write_text('{"intra": {}}\n')
    trial = start_trial_run(store, exp_id, parent.run_id, "t_00000", run_name="joint_s1",
                            tags={"mode": "joint", "seed": 1}, params={"search.lr": 20.0},
                            system_metrics=False)
    for epoch in (1, 2):
        trial.log_metrics({"valid/ppl": 100.0 / epoch, "genotype": "{...}", "epoch": epoch}, step=epoch)
        trial.log_artifact(genotype, "genotypes")
    trial.log_table([{"part": "intra", "op": "tanh", "weight": 0.5}], "arch_weights_table.json")
    trial.log_dict({"a": 1}, "extra/a.json")
    trial.log_artifact(tmp_path / "does-not-exist.pt", "model")      # missing files are skipped
    trial.finish()
    trial.finish()                                                   # idempotent
    parent.finish()

    client = MlflowClient(store)
    runs = client.search_runs([exp_id])
    parents = [r for r in runs if r.data.tags.get("ess.role") == "parent"]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.run_id]
    assert len(parents) == 1 and len(children) == 1
    child = children[0]
    assert child.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    assert child.data.params == {"search.lr": "20.0"}
    assert child.data.tags["mode"] == "joint" and child.data.tags["seed"] == "1"
    assert child.data.tags["ess.trial_id"] == "t_00000"
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "valid/ppl")] == \
        [(1, 100.0), (2, 50.0)]
    assert "genotype" not in child.data.metrics                      # only numbers become metrics
    paths = {f.path for f in client.list_artifacts(child.info.run_id)}
    assert {"genotypes", "arch_weights_table.json", "extra"} <= paths
    assert [f.path for f in client.list_artifacts(child.info.run_id, "genotypes")] == ["genotypes/genotype.json"]
    assert child_runs(store, "ess-test", parent.run_id)[0].info.run_id == child.info.run_id
    # artifacts live next to the database, under an absolute path (trials run in other directories)
    assert child.info.artifact_uri.startswith(store[len("sqlite:///"):].replace("mlflow.db", "mlartifacts"))


def test_restarted_trial_reattaches_its_run(store):
    parent = start_parent_run(store, "ess-test", "exp2")
    exp_id = get_or_create_experiment(store, "ess-test")
    first = start_trial_run(store, exp_id, parent.run_id, "t_1", run_name="a", params={"lr": 1},
                            system_metrics=False)
    first.log_metrics({"valid/ppl": 10.0}, step=1)
    # the worker dies here: no finish(); the restarted trial finds the run by its trial id tag
    again = start_trial_run(store, exp_id, parent.run_id, "t_1", run_name="a", params={"lr": 1},
                            system_metrics=False)
    assert again.run_id == first.run_id
    again.log_metrics({"valid/ppl": 9.0}, step=2)
    again.finish()
    by_id = start_trial_run(store, exp_id, parent.run_id, "t_1", run_name="a", run_id=first.run_id,
                            system_metrics=False)
    assert by_id.run_id == first.run_id
    by_id.finish()
    client = MlflowClient(store)
    run = client.get_run(first.run_id)
    assert run.data.tags["ess.restarts"] == "2"
    assert [m.step for m in client.get_metric_history(first.run_id, "valid/ppl")] == [1, 2]
    assert len(client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'")) == 1


def test_resumed_parent_and_closing_interrupted_children(store):
    parent = start_parent_run(store, "ess-test", "exp3")
    exp_id = get_or_create_experiment(store, "ess-test")
    start_trial_run(store, exp_id, parent.run_id, "t_9", run_name="x", system_metrics=False)   # left RUNNING
    assert close_open_children(store, "ess-test", parent.run_id, "KILLED") == 1
    parent.finish("KILLED")
    again = start_parent_run(store, "ess-test", "exp3", resume=True)
    assert again.run_id == parent.run_id
    assert MlflowClient(store).get_run(parent.run_id).info.status == "RUNNING"
    assert start_parent_run(store, "ess-test", "exp3").run_id != parent.run_id   # a new experiment: a new parent


def test_best_runs_orders_by_metric(store):
    parent = start_parent_run(store, "ess-best", "p")
    exp_id = get_or_create_experiment(store, "ess-best")
    for i, ppl in enumerate([30.0, 10.0, 20.0]):
        t = start_trial_run(store, exp_id, parent.run_id, f"t{i}", run_name=f"r{i}",
                            tags={"ess.phase": "search"}, system_metrics=False)
        t.log_metrics({"valid/ppl": ppl}, step=1)
        t.finish()
    got = best_runs(store, "ess-best", k=2, parent_name="p")
    assert [r.info.run_name for r in got] == ["r1", "r2"]
    with pytest.raises(ConfigError, match="no MLflow experiment"):
        best_runs(store, "nope")


def test_system_metrics_are_logged(store):
    pytest.importorskip("psutil")
    parent = start_parent_run(store, "ess-sys", "p")
    exp_id = get_or_create_experiment(store, "ess-sys")
    trial = start_trial_run(store, exp_id, parent.run_id, "t", run_name="t", system_metrics=True,
                            system_metrics_interval=0.2)
    time.sleep(1.0)
    trial.finish()
    metrics = MlflowClient(store).get_run(trial.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_logging_failures_never_raise(store):
    parent = start_parent_run(store, "ess-x", "p")
    tracker = MLflowTracker(store, "0" * 32)                  # no such run
    with pytest.warns(RuntimeWarning, match="MLflow log_metrics failed"):
        tracker.log_metrics({"a": 1.0}, step=1)
    tracker.log_metrics({"a": 2.0}, step=2)                   # warned once only
    parent.finish()


def test_ui_command_and_cli(tmp_path, store_dir, store, monkeypatch):
    assert ui_command(store) == ["mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", "5000"]
    assert "mlflow ui --backend-store-uri" in ui_hint(store) and "127.0.0.1" in ui_hint(store)
    assert ui_hint("http://head:5000") == "MLflow UI: http://head:5000"
    start_parent_run(store, "ess-ui", "p").finish()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "ui", "--print", "--storage-path",
                          str(store_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000"
    missing = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "ui", "--print", "--storage-path",
                              str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no MLflow database" in missing.stderr
    listed = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "runs", "ess-ui", "--tracking-uri", store],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout.splitlines()[0])["role"] == "parent"
    assert Path(store_dir / "mlflow.db").exists()
