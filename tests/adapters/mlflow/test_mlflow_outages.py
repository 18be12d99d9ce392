"""Tracking outages: the record keeps everything while the store cannot be reached; MLflow is brought up to date once.

The driver's :class:`ExperimentRuns` is fed here the way Tune feeds it (trial starts, checkpoints that
are copies of the run directory, trial ends), with a store that is dead, or fails for a while.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import pytest

from ess.adapters.mlflow import PARENT_TAG, RunRecord, RunView, start_parent_run, trial_run
from ess.adapters.mlflow.experiment_runs import ExperimentRuns
from ess.adapters.mlflow.sync import LocalCheckpoint, sync_directory
from ess.adapters.ray.grid import trial_identity

from conftest import fake_record

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one runs MLflow's migrations: seconds); tests use own names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def outage_env(monkeypatch):
    """No MLflow HTTP retries (a dead endpoint fails at once), no probing back-off."""
    for key, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "ESS_TRACKING_RETRY_S": "0"}.items():
        monkeypatch.setenv(key, value)


def outage_lines(err: str) -> tuple[list[str], list[str]]:
    lines = err.splitlines()
    return [x for x in lines if "is unreachable" in x], [x for x in lines if "is back:" in x]


def tune_config(trial_id: str = "t_00000") -> dict:
    """What Tune hands the driver for a search trial: the spec and the grid variant."""
    from ess.adapters.ray.config import job_base
    from ess.config import config_to_dict

    job = job_base("joint_search", "smoke")
    return {"ess": {"job": "joint_search", "experiment_name": "exp", "mlflow_experiment": "ess-out",
                    "search": config_to_dict(job.search), "train": None},
            "variant": {"mode": "joint", "seed": 1, "steps": 3, "n_inter": 2, "m": 2}}


def checkpoint(root, tmp_path, n: int) -> LocalCheckpoint:
    """A copy of the run directory, as Tune persists one at each report."""
    copy = tmp_path / f"checkpoint_{n:06d}"
    shutil.copytree(root, copy)
    return LocalCheckpoint(copy)


def tune_layout(exp, root, trial_id="t_00000", status="TERMINATED"):
    """``<experiment>/search/<trial>/`` as Tune leaves it: params.json, result.json, a checkpoint, the state."""
    trial = exp / "search" / f"joint_s1_{trial_id}"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps(tune_config(trial_id)))
    (trial / "result.json").write_text(json.dumps({"epoch": 2, "trial_id": trial_id}) + "\n")
    shutil.copytree(root, trial / "checkpoint_000001")
    (exp / "search" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(
        {"trial_data": [[json.dumps({"trial_id": trial_id, "status": status}), "{}"]]}))


def test_dead_server_at_start_keeps_everything_and_sync_shows_it_once(store, outage_env, tmp_path, capsys):
    """Server down from the start: the experiment runs, told once; ``sync`` later creates the parent and
    the trial run under it, with every epoch, once."""
    dead = f"http://127.0.0.1:{closed_port()}"
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "job.yaml").write_text(f"job: joint_search\nname: exp\nexperiment: ess-out\ntracking_uri: {dead}\n")
    runs = ExperimentRuns(dead, "ess-out", "exp", str(exp))
    runs.open_parent(tags={"job": "joint_search"}, params={"seeds": "1"}, resume=False)
    runs.started("t_00000", trial_identity(tune_config(), "t_00000", "joint_s1_t_00000"))
    root = tmp_path / "run"
    started = time.monotonic()
    for epoch in (1, 2, 3):
        fake_record(root, epochs=range(1, epoch + 1), final=epoch == 3, mlflow_experiment="ess-out")
        runs.checkpoint("t_00000", checkpoint(root, tmp_path, epoch))
    runs.ended("t_00000", "FINISHED")
    runs.log_parent(metrics={"best/valid_ppl": 33.3}, status="FINISHED")
    runs.end()
    assert time.monotonic() - started < 30 and runs.parent_id is None
    down, back = outage_lines(capsys.readouterr().err)
    assert len(down) == 1 and not back                                 # once, however many events
    assert f"python -m ess.adapters.mlflow sync {exp}" in down[0]
    assert json.loads((exp / "parent.json").read_text())["metrics"] == {"best/valid_ppl": 33.3}

    tune_layout(exp, root)
    said: list[str] = []
    assert sync_directory(exp, store, say=said.append)
    assert said == [f"exp: 1 trial runs and the parent run are up to date in {store}"]
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ess-out")
    all_runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in all_runs if r.data.tags.get("ess.role") == "parent"]
    children = [r for r in all_runs if r.data.tags.get(PARENT_TAG)]
    assert len(parents) == 1 and len(children) == 1
    child = children[0]
    assert child.data.tags[PARENT_TAG] == parents[0].info.run_id
    assert child.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    assert parents[0].data.params == {"seeds": "1"} and parents[0].data.metrics == {"best/valid_ppl": 33.3}
    assert child.data.tags["mode"] == "joint" and child.data.tags["ess.genotype"].startswith('{"intra"')
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "valid/ppl")] == \
        [(1, 100.0), (2, 50.0), (3, 100.0 / 3)]
    assert {"genotypes", "genotype.json", "arch_weights_table.json", "model"} <= \
        {f.path for f in client.list_artifacts(child.info.run_id)}

    again: list[str] = []
    assert sync_directory(exp, store, say=again.append)                # idempotent
    assert len(client.get_metric_history(child.info.run_id, "valid/ppl")) == 3
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_outage_mid_run_is_told_once_each_way_and_nothing_is_lost(store, outage_env, monkeypatch, tmp_path, capsys):
    """The store fails for epochs 2 and 3 and answers again at epoch 4: one message each way, every epoch once."""
    import ess.adapters.mlflow.view as view

    down = {"now": False}
    real = view.RunView.sync

    def flaky(self, *args, **kwargs):  # what MLflow's REST client raises when nothing listens
        if down["now"]:
            raise RuntimeError("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with "
                               "exception HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded "
                               "(Caused by NewConnectionError: [Errno 111] Connection refused)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(view.RunView, "sync", flaky)
    monkeypatch.setattr("ess.adapters.mlflow.experiment_runs.probe", lambda uri: not down["now"])
    runs = ExperimentRuns(store, "ess-flaky", "flaky", str(tmp_path / "exp"))
    runs.open_parent(tags={}, params={}, resume=False)
    runs.started("t_00000", trial_identity(tune_config(), "t_00000", "joint_s1_t_00000"))
    root = tmp_path / "run"
    for epoch in (1, 2, 3, 4):
        down["now"] = epoch in (2, 3)
        fake_record(root, epochs=range(1, epoch + 1))
        runs.checkpoint("t_00000", checkpoint(root, tmp_path, epoch))
        assert runs.down == (epoch in (2, 3))
    runs.ended("t_00000", "FINISHED")
    down_lines, back_lines = outage_lines(capsys.readouterr().err)
    assert len(down_lines) == 1 and "connection refused" in down_lines[0]
    assert len(back_lines) == 1
    run_id = runs.trials["t_00000"].run_id
    client = MlflowClient(store)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "valid/ppl")) == \
        [(1, 100.0), (2, 50.0), (3, 100.0 / 3), (4, 25.0)]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_dead_server_is_not_asked_again_before_the_retry_interval(outage_env, monkeypatch, tmp_path, capsys):
    import ess.adapters.mlflow.experiment_runs as tracking

    calls = {"probe": 0}

    def fake_probe(uri, timeout=3.0):
        calls["probe"] += 1
        return False

    monkeypatch.setattr(tracking, "probe", fake_probe)
    monkeypatch.setenv("ESS_TRACKING_RETRY_S", "3600")
    runs = ExperimentRuns(f"http://127.0.0.1:{closed_port()}", "ess-x", "x", str(tmp_path / "exp"))
    runs.open_parent(tags={}, params={}, resume=False)                 # one refused call
    root = fake_record(tmp_path / "run")
    started = time.monotonic()
    runs.started("t_00000", trial_identity(tune_config(), "t_00000", "joint_s1_t_00000"))
    for _ in range(50):
        runs.checkpoint("t_00000", LocalCheckpoint(root))
    assert time.monotonic() - started < 10                             # nothing more is sent while it is down
    assert calls["probe"] == 0
    runs.end()                                                         # the end checks once, whatever the interval
    assert calls["probe"] == 1
    err = capsys.readouterr().err
    assert len(outage_lines(err)[0]) == 1 and err.count("is still unreachable; when it is back run: python -m") == 1


def test_points_an_interrupted_upload_delivered_are_not_sent_again(store, tmp_path):
    """A call that failed may have reached the server: the view reads the run's history first."""
    parent = start_parent_run(store, "ess-dup", "p")
    run_id, _ = trial_run(store, parent, "t", run_name="r")
    MlflowClient(store).log_metric(run_id, "valid/ppl", 100.0, step=1)   # delivered before the failure
    root = fake_record(tmp_path / "run", epochs=(1, 2))
    sent = RunView(store, run_id).sync(RunRecord(root))
    assert sent["metrics"] == 3                                          # epoch@1, epoch@2, valid/ppl@2
    assert sorted((m.step, m.value) for m in MlflowClient(store).get_metric_history(run_id, "valid/ppl")) == \
        [(1, 100.0), (2, 50.0)]


def test_a_trial_restarted_while_the_store_is_down_gets_its_old_run_back(store, outage_env, tmp_path, monkeypatch):
    first = ExperimentRuns(store, "ess-re", "re", str(tmp_path / "exp"))
    first.open_parent(tags={}, params={}, resume=False)
    first.started("t_7", trial_identity(tune_config("t_7"), "t_7", "joint_s1_t_7"))
    root = fake_record(tmp_path / "run", epochs=(1,), trial_id="t_7")
    first.checkpoint("t_7", checkpoint(root, tmp_path, 1))
    run_id = first.trials["t_7"].run_id
    # the driver dies; a new one resumes while the store is unreachable, then it is back
    monkeypatch.setattr("ess.adapters.mlflow.experiment_runs.probe", lambda uri: False)
    again = ExperimentRuns(f"http://127.0.0.1:{closed_port()}", "ess-re", "re", str(tmp_path / "exp"))
    again.open_parent(tags={}, params={}, resume=True)
    again.started("t_7", trial_identity(tune_config("t_7"), "t_7", "joint_s1_t_7"))
    fake_record(root, epochs=(1, 2), trial_id="t_7")
    again.checkpoint("t_7", checkpoint(root, tmp_path, 2))
    assert again.down and again.trials["t_7"].run_id is None
    monkeypatch.undo()
    again.uri = store                                                   # the same store, reachable again
    again.ended("t_7", "FINISHED")
    client = MlflowClient(store)
    assert again.trials["t_7"].run_id == run_id
    assert [m.step for m in client.get_metric_history(run_id, "valid/ppl")] == [1, 2]
    assert client.get_run(run_id).data.tags["ess.restarts"] == "1"      # the resumed start, counted when back
    parent = client.get_run(run_id).data.tags[PARENT_TAG]
    assert len(client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")) == 1


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
