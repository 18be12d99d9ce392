"""MLflow as a view of the record: parent and nested runs in a temporary SQLite store, sync, dead drivers, `ui`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ess.adapters.mlflow import (
    PARENT_TAG,
    RunRecord,
    RunView,
    best_runs,
    child_runs,
    close_open_children,
    close_stale,
    config_tags,
    default_tracking_uri,
    flat_params,
    get_or_create_experiment,
    numeric_metrics,
    resolve_tracking_uri,
    start_parent_run,
    trial_run,
    ui_command,
    ui_hint,
)
from ess.errors import ConfigError
from ess.space.description import describe
from ess.space.genotype import DARTS_V2
from ess.space.tables import arch_weight_rows

from conftest import fake_record

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def store(store_dir):
    """One SQLite store for the module (creating one runs MLflow's migrations: seconds); tests use own names."""
    return f"sqlite:///{store_dir / 'mlflow.db'}"


def test_tracking_off_does_nothing(tmp_path):
    """No tracking URI: the driver's view accepts everything and sends nothing."""
    from ess.adapters.mlflow.experiment_runs import ExperimentRuns

    runs = ExperimentRuns(None, "ess-x", "x", str(tmp_path))
    runs.open_parent(tags={"a": 1}, params={"b": 2}, resume=False)
    runs.log_parent(metrics={"m": 1.0}, status="FINISHED")
    assert runs.parent_id is None and not runs.attempt("anything", lambda: 1 / 0)
    runs.end()


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
    """Edges are named as in the pictures (s3 <- s1, s1 <- h_{t-2}) from the row layouts, not the stored labels."""
    weights = {"columns": ["none", "tanh"],
               "intra": {"searched": True, "columns": ["none", "tanh"], "steps": 2, "rows": ["1<-0", "2<-0", "2<-1"],
                         "weights": [[0.3, 0.7], [0.5, 0.5], [0.6, 0.4]]},
               "history": {"searched": True, "m": 2, "columns": ["none", "tanh"],
                           "branches": [{"node": 0, "branch": "a", "rows": [0, 1],
                                         "weights": [[0.5, 0.5], [0.1, 0.9]]},
                                        {"node": 1, "branch": "b", "rows": [0, 1, 2],
                                         "weights": [[1.0, 0.0], [1.0, 0.0], [0.2, 0.8]]}]},
               "input": {"searched": False, "genotype": {}}}
    rows = arch_weight_rows(weights)
    assert len(rows) == 6 + 4 + 6
    assert {"part": "intra", "edge": "s2 <- s1", "branch": "", "op": "tanh", "weight": 0.4} in rows
    assert {"part": "history", "edge": "s1 <- h_{t-2}", "branch": "a", "op": "none", "weight": 0.1} in rows
    assert {"part": "history", "edge": "s2 <- s1", "branch": "b", "op": "tanh", "weight": 0.8} in rows
    assert not [r for r in rows if r["part"] == "input"]
    del weights["intra"]["steps"], weights["history"]["m"]     # both follow from the row counts
    assert arch_weight_rows(weights) == rows


def _show(store, experiment, name, root, *, final=False, status=None, resume=False):
    """Parent run, then the trial run of ``root`` brought up to date with it, the way the driver does."""
    parent = start_parent_run(store, experiment, name, tags={"job": "test"}, params={"seeds": "1,2"}, resume=resume)
    ident = RunRecord(root).identity()
    run_id, found = trial_run(store, parent, ident["trial_id"], run_name=ident["run_name"], tags=ident["tags"])
    view = RunView(store, run_id)
    sent = view.sync(RunRecord(root), final=final)
    if status:
        view.finish(status)
    return parent, run_id, found, sent


def test_parent_and_nested_runs_show_the_record(store, tmp_path):
    """One parent per experiment, a nested trial run with params, tags, per-epoch metrics, files, the weights."""
    root = fake_record(tmp_path / "run", final=True)
    parent, run_id, found, sent = _show(store, "ess-test", "exp1", root, final=True, status="FINISHED")
    assert not found and sent == {"metrics": 4, "params": 3, "files": 9}
    client = MlflowClient(store)
    exp_id = get_or_create_experiment(store, "ess-test")
    runs = client.search_runs([exp_id])
    parents = [r for r in runs if r.data.tags.get("ess.role") == "parent"]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent]
    assert len(parents) == 1 and len(children) == 1
    child = children[0]
    assert child.info.status == "FINISHED" and parents[0].data.params == {"seeds": "1,2"}
    assert child.data.params == {"search.mode": "joint", "search.lr": "20.0", "search.seeds": "1,2"}
    assert child.data.tags["mode"] == "joint" and child.data.tags["seed"] == "1" and child.data.tags["git_commit"]
    assert child.data.tags["ess.trial_id"] == "t_00000" and child.data.tags["ess.genotype"].startswith('{"intra"')
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "valid/ppl")] == \
        [(1, 100.0), (2, 50.0)]
    assert "genotype" not in child.data.metrics                      # only numbers become metrics
    paths = {f.path for f in client.list_artifacts(run_id)}
    assert {"genotypes", "arch_weights", "arch_weights.json", "arch_weights_table.json", "genotype.json",
            "config.yaml", "metrics.jsonl", "model"} <= paths
    assert [f.path for f in client.list_artifacts(run_id, "genotypes")] == \
        ["genotypes/epoch_001.json", "genotypes/epoch_002.json"]
    assert [f.path for f in client.list_artifacts(run_id, "model")] == ["model/checkpoint.pt"]
    table = Path(client.download_artifacts(run_id, "arch_weights_table.json", str(tmp_path / "dl")))
    assert json.loads(table.read_text())["data"] == [["intra", "s1 <- s0", "", "none", 0.3],
                                                     ["intra", "s1 <- s0", "", "tanh", 0.7]]
    assert "retrain" not in paths                                    # a search draws its own pictures
    assert child_runs(store, "ess-test", parent)[0].info.run_id == run_id
    # artifacts live next to the database, under an absolute path (trials run in other directories)
    assert child.info.artifact_uri.startswith(store[len("sqlite:///"):].replace("mlflow.db", "mlartifacts"))


def _retrain_record(root, genotype):
    """A retrain trial's run directory, as ``retrain_trainable`` leaves it: the genotype written to a scratch
    file of the trial (the path its config names), the retraining's own files beside its copy."""
    import shutil

    import yaml

    root = fake_record(root, epochs=(1,))
    shutil.rmtree(root / "search")
    scratch = root / "genotype.json"
    scratch.write_text(genotype.to_json())
    retrain = root / "retrain"
    retrain.mkdir()
    (retrain / "config.yaml").write_text(yaml.safe_dump({"genotype": str(scratch), "epochs": 1, "lr": 20.0}))
    (retrain / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "valid/ppl": 80.0}) + "\n")
    (retrain / "final.json").write_text(json.dumps({"epoch": 1, "test/ppl": 90.0}))
    (retrain / "genotype.json").write_text(genotype.to_json())
    (retrain / "best.pt").write_bytes(b"weights")
    return root


def test_a_retrain_run_shows_its_genotype_by_description_and_picture(store, tmp_path):
    """Gap: a retrain run logged ``retrain.genotype = <trial dir>/genotype.json`` (a scratch path) and no picture.
    Now the param is the genotype's description (which reads back as the genotype), its picture is drawn."""
    from ess.adapters.mlflow.record import genotype_param
    from ess.space.genotype import Edge, ESSGenotype, InterGenotype, InterNode
    from ess.space.refs import load_genotype

    genotype = ESSGenotype(DARTS_V2.intra, history=InterGenotype(3, (InterNode(Edge("relu", 0), Edge("tanh", 2)),)),
                           input=InterGenotype(2, (InterNode(Edge("sigmoid", 1), Edge("relu", 0)),), "sum"))
    root = _retrain_record(tmp_path / "run", genotype)
    _, run_id, _, _ = _show(store, "ess-test", "exp-retrain", root, final=True, status="FINISHED")
    client = MlflowClient(store)
    params = client.get_run(run_id).data.params
    assert params["retrain.genotype"] == describe(genotype) and "/" not in params["retrain.genotype"]
    assert load_genotype(params["retrain.genotype"]) == genotype and params["retrain.epochs"] == "1"
    assert "history[m=3 s1=relu(h_{t-1})*tanh(h_{t-3}) +res]" in params["retrain.genotype"]
    files = {f.path for f in client.list_artifacts(run_id, "retrain")}
    assert {"retrain/genotype.json", "retrain/genotype.png", "retrain/config.yaml", "retrain/final.json"} <= files
    picture = Path(client.download_artifacts(run_id, "retrain/genotype.png", str(tmp_path / "dl")))
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    logged = Path(client.download_artifacts(run_id, "retrain/genotype.json", str(tmp_path / "dl")))
    assert load_genotype(logged) == genotype
    assert genotype_param("darts_v2", tmp_path) == "DARTS_V2"         # a built-in keeps its name
    assert genotype_param("gone.json", tmp_path) == "gone.json"       # nothing to read: the value as it is


def test_a_sync_repeated_sends_nothing_and_a_later_epoch_only_its_own(store, tmp_path):
    """Each (key, step) and each per-epoch file once, whatever view (process) sends it."""
    root = fake_record(tmp_path / "run", epochs=(1,))
    _, run_id, _, first = _show(store, "ess-test", "exp-once", root)
    assert first["metrics"] == 2 and first["files"] == 3   # per epoch: its two files, the latest weights
    again = RunView(store, run_id)                                   # a new process: reads what the run holds
    assert again.sync(RunRecord(root))["metrics"] == 0
    fake_record(root, epochs=(1, 2))                                 # epoch 2 arrives (epoch 1 rewritten as is)
    sent = again.sync(RunRecord(root))
    assert sent["metrics"] == 2 and sent["params"] == 0
    client = MlflowClient(store)
    assert [m.step for m in client.get_metric_history(run_id, "valid/ppl")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "epoch")] == [1, 2]


def test_a_restarted_trial_gets_its_run_back(store, tmp_path):
    root = fake_record(tmp_path / "run", epochs=(1,))
    parent, run_id, found, _ = _show(store, "ess-test", "exp2", root)
    assert not found
    # the worker (or the driver) dies here: the run stays RUNNING; the restart finds it by its trial id
    again, found = trial_run(store, parent, "t_00000", run_name="joint_s1")
    assert again == run_id and found
    fake_record(root, epochs=(1, 2))
    RunView(store, again).sync(RunRecord(root))
    client = MlflowClient(store)
    assert [m.step for m in client.get_metric_history(run_id, "valid/ppl")] == [1, 2]
    assert len(client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")) == 1


def test_resumed_parent_and_closing_interrupted_children(store, tmp_path):
    parent, run_id, _, _ = _show(store, "ess-test", "exp3", fake_record(tmp_path / "run"))   # trial left RUNNING
    assert close_open_children(store, parent, "KILLED") == 1
    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"
    MlflowClient(store).set_terminated(parent, "KILLED")
    assert start_parent_run(store, "ess-test", "exp3", resume=True) == parent
    assert MlflowClient(store).get_run(parent).info.status == "RUNNING"
    assert start_parent_run(store, "ess-test", "exp3") != parent   # a new experiment: a new parent


def test_the_runs_of_a_dead_driver_are_closed_by_the_next_start(store, tmp_path, monkeypatch):
    """Gap: a killed driver's runs stayed RUNNING until someone resumed. Now the next start on its host marks
    them KILLED; ``close`` does it for a driver lost with its host."""
    import ess.adapters.mlflow.runs as runs

    parent, run_id, _, _ = _show(store, "ess-dead", "dead", fake_record(tmp_path / "run"))
    client = MlflowClient(store)
    assert close_stale(store, "ess-dead") == []                      # its driver (this process) is alive
    monkeypatch.setattr(runs, "driver_id", lambda: "elsewhere:1:1")
    other, _, _, _ = _show(store, "ess-dead", "lost-host", fake_record(tmp_path / "run2", trial_id="t_2"))
    monkeypatch.undo()
    client.set_tag(parent, runs.DRIVER_TAG, f"{runs.driver_id().split(':')[0]}:999999999:1")   # a pid that is gone
    assert close_stale(store, "ess-dead") == ["dead"]
    assert client.get_run(parent).info.status == "KILLED" and client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(other).info.status == "RUNNING"            # another host's driver: not known to be gone
    assert close_stale(store, "ess-dead", name="lost-host", force=True) == ["lost-host"]
    assert client.get_run(other).info.status == "KILLED"


def test_best_runs_orders_by_metric(store, tmp_path):
    parent = start_parent_run(store, "ess-best", "p")
    client = MlflowClient(store)
    for i, ppl in enumerate([30.0, 10.0, 20.0]):
        run_id, _ = trial_run(store, parent, f"t{i}", run_name=f"r{i}", tags={"ess.phase": "search"})
        client.log_metric(run_id, "valid/ppl", ppl, step=1)
        client.set_terminated(run_id, "FINISHED")
    got = best_runs(store, "ess-best", k=2, parent_name="p")
    assert [r.info.run_name for r in got] == ["r1", "r2"]
    with pytest.raises(ConfigError, match="no MLflow experiment"):
        best_runs(store, "nope")


def test_system_metrics_are_sampled_into_the_record_and_shown(store, tmp_path):
    pytest.importorskip("psutil")
    from ess.adapters.mlflow.system import SystemSampler

    root = fake_record(tmp_path / "run", epochs=(1,))
    sampler = SystemSampler(root, 0.2, time.time()).start()
    time.sleep(1.0)
    sampler.stop()
    rows = [json.loads(line) for line in (root / "system_metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 3 and [r["step"] for r in rows] == sorted({r["step"] for r in rows})
    _, run_id, _, _ = _show(store, "ess-sys", "p", root)
    metrics = MlflowClient(store).get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_logging_failures_never_raise(store, tmp_path):
    """A store that refuses a record (not an outage) is one warning per operation; the experiment goes on."""
    from ess.adapters.mlflow.experiment_runs import ExperimentRuns

    runs = ExperimentRuns(store, "ess-x", "x", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="MLflow log a checkpoint failed"):
        assert not runs.attempt("log a checkpoint", lambda: RunView(store, "0" * 32))     # no such run
    assert not runs.attempt("log a checkpoint", lambda: RunView(store, "0" * 32))         # warned once only
    assert not runs.down


def test_ui_command_and_cli(tmp_path, store_dir, store, monkeypatch):
    assert ui_command(store) == ["mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", "5000"]
    assert "mlflow ui --backend-store-uri" in ui_hint(store) and "127.0.0.1" in ui_hint(store)
    assert ui_hint("http://head:5000") == "MLflow UI: http://head:5000"
    start_parent_run(store, "ess-ui", "p")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "ui", "--print", "--storage-path",
                          str(store_dir), "--experiment", "ess-ui"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    command, address = out.stdout.strip().splitlines()
    assert command == f"mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000"
    assert re.fullmatch(r"then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs", address)
    by_job = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "ui", "--print", "--storage-path",
                             str(store_dir), "--experiment", "p"], capture_output=True, text=True, timeout=120)
    assert by_job.returncode == 0 and by_job.stdout.strip().splitlines()[1] == address   # the job's name works too
    unknown = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "ui", "--print", "--storage-path",
                              str(store_dir), "--experiment", "nope"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "(experiments: ess-ui" in unknown.stderr
    missing = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "ui", "--print", "--storage-path",
                              str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no MLflow database" in missing.stderr
    listed = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "runs", "ess-ui", "--tracking-uri", store],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout.splitlines()[0])["role"] == "parent"
    assert Path(store_dir / "mlflow.db").exists()


def test_experiments_open_on_their_runs(tmp_path):
    from mlflow import MlflowClient

    from ess.adapters.mlflow.client import KIND, KIND_TAG, experiment_id_of, get_or_create_experiment

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = get_or_create_experiment(store, "ess-x")
    client = MlflowClient(store)
    assert client.get_experiment(exp_id).tags[KIND_TAG] == KIND == "custom_model_development"
    old = client.create_experiment("made-elsewhere")          # an experiment without the kind gets it
    assert get_or_create_experiment(store, "made-elsewhere") == old
    assert client.get_experiment(old).tags[KIND_TAG] == KIND
    assert experiment_id_of(store, "ess-x") == exp_id and experiment_id_of(store, "nope") is None
    assert ui_hint(store, exp_id).endswith(f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs)")
    assert ui_hint("http://head:5000/", "7") == "MLflow UI: http://head:5000/#/experiments/7/runs"
