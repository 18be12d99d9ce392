"""Tracking outages: the spool keeps every record while the store cannot be reached and uploads it once."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ess.adapters.mlflow import (
    PARENT_TAG,
    MLflowTracker,
    get_or_create_experiment,
    start_parent_run,
    start_trial_run,
    sync,
)

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one runs MLflow's migrations: seconds); tests use own names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


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
    assert "joint_s1" in down[1] and "python -m ess.adapters.mlflow sync --spool" in down[1] and str(spool) in down[1]
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
    import ess.adapters.mlflow.spool
    import ess.adapters.mlflow.tracker

    down = {"now": False}
    real = ess.adapters.mlflow.spool.apply_record

    def flaky(*args, **kwargs):  # what MLflow's REST client raises when nothing listens
        if down["now"]:
            raise RuntimeError("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with "
                               "exception HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded "
                               "(Caused by NewConnectionError: [Errno 111] Connection refused)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ess.adapters.mlflow.tracker, "apply_record", flaky)
    monkeypatch.setattr(ess.adapters.mlflow.spool, "apply_record", flaky)
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
    import ess.adapters.mlflow.tracker

    calls = {"probe": 0}

    def fake_probe(uri, timeout=3.0):
        calls["probe"] += 1
        return False

    monkeypatch.setattr(ess.adapters.mlflow.tracker, "probe", fake_probe)
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
    from ess.adapters.mlflow.spool import Spool, replay

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
    from ess.adapters.mlflow.client import HTTP_DEFAULTS, set_http_defaults

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
    from ess.adapters.mlflow.client import is_unreachable

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
