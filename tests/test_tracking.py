"""Tracking: the no-op tracker, MLflow parent/nested runs in a temporary SQLite store, the `ui` helper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ess.errors import ConfigError
from ess.tracking import (
    PARENT_TAG,
    MLflowTracker,
    Tracker,
    arch_weight_rows,
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
    sync,
    ui_command,
    ui_hint,
)

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
    out = subprocess.run([sys.executable, "-m", "ess.tracking", "ui", "--print", "--storage-path", str(store_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000"
    missing = subprocess.run([sys.executable, "-m", "ess.tracking", "ui", "--print", "--storage-path",
                              str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no MLflow database" in missing.stderr
    listed = subprocess.run([sys.executable, "-m", "ess.tracking", "runs", "ess-ui", "--tracking-uri", store],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout.splitlines()[0])["role"] == "parent"
    assert Path(store_dir / "mlflow.db").exists()


# --------------------------------------------------------------------------------------------------
# Outages: the spool keeps every record while the store cannot be reached and uploads it once


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def outage_env(monkeypatch, tmp_path):
    """No MLflow HTTP retries (a dead endpoint fails at once), a spool under tmp_path, no probing back-off."""
    for key, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "ESS_TRACKING_RETRY_S": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ESS_TRACKING_SPOOL", raising=False)
    return tmp_path / "spool"


def outage_lines(err: str) -> tuple[list[str], list[str]]:
    lines = err.splitlines()
    return [x for x in lines if "is unreachable" in x], [x for x in lines if "is back: uploaded" in x]


def test_dead_server_at_start_spools_everything_and_sync_uploads_it_once(store, outage_env, tmp_path, capsys):
    """Server down from the start: parent and trial runs are created at sync, in the right place, once."""
    dead = f"http://127.0.0.1:{closed_port()}"
    spool = outage_env
    parent = start_parent_run(dead, "ess-spool", "job", params={"seeds": "1"}, spool_dir=spool)
    assert parent.run_id.startswith("spool:") and parent.experiment_id is None
    trial = start_trial_run(dead, None, parent.run_id, "t_1", run_name="joint_s1", tags={"mode": "joint"},
                            params={"search.lr": 20.0}, system_metrics=True, experiment_name="ess-spool",
                            spool_dir=spool)
    genotype = tmp_path / "genotype.json"
    for epoch in (1, 2, 3):
        genotype.write_text(json.dumps({"epoch": epoch}) + "\n")
        trial.log_metrics({"valid/ppl": 100.0 / epoch, "train/loss": 5.0 - epoch, "genotype": "{}"}, step=epoch)
        trial.log_artifact(genotype, f"genotypes/{epoch}")
    genotype.write_text("overwritten after it was logged\n")            # the spool kept a copy
    trial.log_artifact(genotype)
    trial.log_dict({"a": 1}, "extra/a.json")
    trial.log_table([{"part": "intra", "op": "tanh", "weight": 0.5}], "arch_weights_table.json")
    trial.set_tags({"ess.genotype": "{...}"})
    trial.finish()
    parent.log_metrics({"best/valid_ppl": 33.3})
    parent.finish()
    down, back = outage_lines(capsys.readouterr().err)
    assert len(down) == 2 and not back                                  # once per run, however many records
    assert "joint_s1" in down[1] and "python -m ess.tracking sync --spool" in down[1] and str(spool) in down[1]
    assert trial.spooled == 11 and len(list(spool.glob("*.jsonl"))) == 2

    lines: list[str] = []
    assert sync(spool, store, echo=lines.append) == 0
    assert len(lines) == 2 and all("uploaded" in x for x in lines), lines
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("ess-spool")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ess.role") == "parent"]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG)]
    assert len(parents) == 1 and len(children) == 1
    child = children[0]
    assert child.data.tags[PARENT_TAG] == parents[0].info.run_id           # the placeholder was resolved
    assert child.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    assert child.data.params == {"search.lr": "20.0"} and parents[0].data.params == {"seeds": "1"}
    assert child.data.tags["mode"] == "joint" and child.data.tags["ess.genotype"] == "{...}"
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "valid/ppl")] == \
        [(1, 100.0), (2, 50.0), (3, 100.0 / 3)]
    assert parents[0].data.metrics == {"best/valid_ppl": 33.3}
    got = Path(client.download_artifacts(child.info.run_id, "genotypes/2/genotype.json", str(tmp_path / "dl")))
    assert json.loads(got.read_text()) == {"epoch": 2}
    paths = {f.path for f in client.list_artifacts(child.info.run_id)}
    assert {"genotypes", "genotype.json", "extra", "arch_weights_table.json"} <= paths
    assert not list(spool.glob("*.jsonl")) and not list(spool.glob("*.files"))

    again: list[str] = []
    assert sync(spool, store, echo=again.append) == 0                   # idempotent
    assert again == [f"nothing to upload in {spool.resolve()}"]
    assert len(client.get_metric_history(child.info.run_id, "valid/ppl")) == 3


def test_outage_mid_run_spools_and_recovers_at_the_next_log_call(store, outage_env, monkeypatch, capsys):
    """The store fails after epoch 1 and comes back before epoch 4: one message each way, nothing lost."""
    import ess.tracking
    import ess.tracking_spool

    down = {"now": False}
    real = ess.tracking_spool.apply_record

    def flaky(*args, **kwargs):  # what MLflow's REST client raises when nothing listens
        if down["now"]:
            raise RuntimeError("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with "
                               "exception HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded "
                               "(Caused by NewConnectionError: [Errno 111] Connection refused)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ess.tracking, "apply_record", flaky)
    monkeypatch.setattr(ess.tracking_spool, "apply_record", flaky)
    parent = start_parent_run(store, "ess-flaky", "p", spool_dir=outage_env)
    exp_id = get_or_create_experiment(store, "ess-flaky")
    trial = start_trial_run(store, exp_id, parent.run_id, "t", run_name="r", system_metrics=False,
                            spool_dir=outage_env)
    for epoch in (1, 2, 3, 4):
        down["now"] = epoch in (2, 3)
        trial.log_metrics({"valid/ppl": float(epoch), "x": epoch * 2}, step=epoch)
        assert trial.offline == (epoch in (2, 3))
    trial.finish()
    parent.finish()
    err = capsys.readouterr().err
    down_lines, back_lines = outage_lines(err)
    assert len(down_lines) == 1 and "connection refused" in down_lines[0]
    assert len(back_lines) == 1 and "uploaded 3 spooled records" in back_lines[0]  # epochs 2, 3 and 4
    client = MlflowClient(store)
    for key, values in (("valid/ppl", [1.0, 2.0, 3.0, 4.0]), ("x", [2.0, 4.0, 6.0, 8.0])):
        history = client.get_metric_history(trial.run_id, key)
        assert sorted((m.step, m.value) for m in history) == list(zip((1, 2, 3, 4), values))
    assert client.get_run(trial.run_id).info.status == "FINISHED"
    assert trial.outages == 1 and trial.spooled == 3


def test_a_dead_server_is_not_asked_again_before_the_retry_interval(store, outage_env, monkeypatch, capsys):
    import ess.tracking

    calls = {"probe": 0}

    def fake_probe(uri, timeout=3.0):
        calls["probe"] += 1
        return False

    monkeypatch.setattr(ess.tracking, "probe", fake_probe)
    monkeypatch.setenv("ESS_TRACKING_RETRY_S", "3600")
    dead = f"http://127.0.0.1:{closed_port()}"
    tracker = MLflowTracker(dead, "f" * 32, spool_dir=outage_env)
    started = time.monotonic()
    for step in range(50):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    assert time.monotonic() - started < 10                          # one refused call, then the spool only
    assert calls["probe"] == 0 and tracker.spooled == 50
    tracker.finish()                                                 # finish checks once, whatever the interval
    assert calls["probe"] == 1
    assert len(outage_lines(capsys.readouterr().err)[0]) == 1


def test_replay_skips_metrics_a_failed_upload_delivered_after_all(store, outage_env):
    """A call that failed may still have reached the server: replay compares with the history first."""
    from ess.tracking_spool import Spool, replay

    parent = start_parent_run(store, "ess-dup", "p", spool_dir=outage_env)
    exp_id = get_or_create_experiment(store, "ess-dup")
    trial = start_trial_run(store, exp_id, parent.run_id, "t", run_name="r", system_metrics=False,
                            spool_dir=outage_env)
    trial.log_metrics({"a": 1.0, "b": 2.0}, step=1)                    # reached the store
    logged = {m.key: m for m in MlflowClient(store).get_run(trial.run_id).data._metric_objs}
    spool = Spool(outage_env, "x" * 32)
    with spool.locked():
        spool.write([{"t": "metrics", "seq": 1, "metrics": [[k, m.value, m.timestamp, m.step]
                                                          for k, m in logged.items()]},
                     {"t": "metrics", "seq": 2, "metrics": [["a", 0.5, 123, 2]]}],
                    {"t": "header", "uri": store, "run_id": trial.run_id, "local_id": "x" * 32})
    result = replay(spool, MlflowClient(store), uri=store)
    assert result.skipped == 2 and result.counts == {"log_metrics": 2}
    assert replay(spool, MlflowClient(store), uri=store).uploaded == 0  # finalized: nothing left
    assert sorted((m.step, m.value) for m in MlflowClient(store).get_metric_history(trial.run_id, "a")) == \
        [(1, 1.0), (2, 0.5)]
    trial.finish()
    parent.finish()


def test_restarted_trial_offline_gets_its_old_run_back(store, outage_env, capsys):
    parent = start_parent_run(store, "ess-re", "p", spool_dir=outage_env)
    exp_id = get_or_create_experiment(store, "ess-re")
    first = start_trial_run(store, exp_id, parent.run_id, "t_7", run_name="a", params={"lr": 1},
                            system_metrics=False, spool_dir=outage_env)
    first.log_metrics({"valid/ppl": 10.0}, step=1)
    dead = f"http://127.0.0.1:{closed_port()}"   # the restarted worker cannot reach the store
    again = start_trial_run(dead, exp_id, parent.run_id, "t_7", run_name="a", params={"lr": 2},
                            run_id=first.run_id, system_metrics=False, spool_dir=outage_env)
    assert again.offline and again.run_id.startswith("spool:")
    again.log_metrics({"valid/ppl": 9.0}, step=2)
    again.finish()
    assert sync(outage_env, store, echo=lambda line: None) == 0
    client = MlflowClient(store)
    run = client.get_run(first.run_id)
    assert run.data.tags["ess.restarts"] == "1" and run.data.params == {"lr": "1"}   # params are kept
    assert [m.step for m in client.get_metric_history(first.run_id, "valid/ppl")] == [1, 2]
    assert len(client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'")) == 1
    parent.finish()


def test_http_defaults_are_short_but_never_override_the_user(monkeypatch):
    from ess.tracking_spool import HTTP_DEFAULTS, set_http_defaults

    for key in HTTP_DEFAULTS:
        monkeypatch.setenv(key, "placeholder")      # recorded, so the test leaves the environment as it was
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    set_http_defaults("sqlite:///x.db")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ       # local stores: untouched
    set_http_defaults("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_unreachable_errors_are_told_apart_from_refused_records():
    from ess.tracking_spool import is_unreachable

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("API request to http://h/api/2.0/mlflow/runs/log-batch failed") from inner
    except RuntimeError as wrapped:
        assert is_unreachable(wrapped)
    assert is_unreachable(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert not is_unreachable(RuntimeError("Run 'abc' not found"))
    assert not is_unreachable(RuntimeError("Changing param values is not allowed. Param with key='lr'"))
    from mlflow.exceptions import RestException

    refused = RestException({"error_code": "INVALID_PARAMETER_VALUE",
                             "message": "Param 'x' was already logged with value 'connection refused, timed out'"})
    assert not is_unreachable(refused)                               # the server answered: not an outage
