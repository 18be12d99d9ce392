"""The experiment around the stages: corpus check, saved config, resources, MLflow URI, two nodes, cluster.yaml."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from ess.adapters.ray.config import parse_job_args
from ess.adapters.ray.experiment import Experiment, check_resources, ray_session
from ess.config import config_to_dict
from ess.data import ensure_corpus
from ess.errors import ConfigError, DataError

from conftest import DATA_DIR, TINY_SEARCH, load_job, requires_ptb, tiny_job

ROOT = Path(__file__).resolve().parents[3]
TINY = TINY_SEARCH


def test_ensure_corpus_offline_says_where(tmp_path):
    with pytest.raises(DataError) as err:
        ensure_corpus("ptb", str(tmp_path), url=str(tmp_path / "no-such-archive.zip"))
    text = str(err.value)
    assert "\n" not in text
    assert str((tmp_path / "ptb").resolve()) in text and "train.txt" in text and "could not be downloaded" in text


@requires_ptb
def test_ensure_corpus_present():
    assert ensure_corpus("ptb", DATA_DIR) == (Path(DATA_DIR) / "ptb").resolve()


def test_experiment_saves_config_and_refuses_to_overwrite(tmp_path):
    job = dataclasses.replace(tiny_job(tmp_path), name="e1", tracking_uri="none")
    exp = Experiment("joint_search", job)
    saved = yaml.safe_load((tmp_path / "tune" / "e1" / "job.yaml").read_text())
    assert saved["job"] == "joint_search" and saved["seeds"] == [1, 2] and saved["search"]["emsize"] == 16
    assert exp.parent_run_id is None and exp.uri is None          # tracking off
    with pytest.raises(ConfigError, match="--resume"):
        Experiment("joint_search", job)
    Experiment("joint_search", job, resume=True)
    with pytest.raises(ConfigError, match="no experiment"):
        Experiment("joint_search", dataclasses.replace(job, name="e2"), resume=True)
    # --resume reads the saved config back
    cfg, _ = parse_job_args("joint_search", ["--resume", "--name", "e1", "--storage-path", str(tmp_path / "tune")])
    assert cfg.search == job.search and cfg.seeds == job.seeds


def test_local_ray_without_gpu_is_one_line(tmp_path, local_ray):
    job = dataclasses.replace(tiny_job(tmp_path), name="g", tracking_uri="none", gpus_per_trial=1.0)
    with ray_session(job):
        with pytest.raises(ConfigError, match="gpus_per_trial"):
            check_resources(job)
        check_resources(dataclasses.replace(job, gpus_per_trial=0.0, cpus_per_trial=2.0))
        with pytest.raises(ConfigError, match="cpus_per_trial"):
            check_resources(dataclasses.replace(job, gpus_per_trial=0.0, cpus_per_trial=3.0))


def test_trials_are_sent_no_mlflow_address(tmp_path, local_ray):
    """Trials never talk to MLflow (the driver shows their record), so no server address has to be reachable
    from the workers: the spec of a stage names the MLflow experiment, not the store."""
    job = dataclasses.replace(tiny_job(tmp_path), name="spec", tracking_uri="http://127.0.0.1:1")
    exp = Experiment("joint_search", job)
    spec = exp.spec(search=exp.job.search)
    assert "http://127.0.0.1:1" not in repr(spec) and spec["mlflow_experiment"] == "ess-joint_search"
    assert spec["search"] == config_to_dict(exp.job.search) and spec["train"] is None
    assert [type(c).__name__ for c in exp.run_config("search").callbacks] == ["TrialRuns", "ProgressLines"]
    loud = Experiment("joint_search", dataclasses.replace(job, name="spec-loud", verbose=1))
    assert [type(c).__name__ for c in loud.run_config("search").callbacks] == ["TrialRuns"]


# -- two nodes -----------------------------------------------------------------------------------------


@requires_ptb
@pytest.mark.slow
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        job = tiny_job(tmp_path, name="two", tracking_uri="none", retrain=False, search={**TINY, "epochs": 1},
                       address=cluster.address)
        summary = load_job("joint_search").run(job)
        used = {s["node_id"] for s in summary["searched"]}
        assert len(summary["searched"]) == 2 and used == nodes       # one trial on each node
        assert all(s["epochs"] == 1 for s in summary["searched"])
    finally:
        ray.shutdown()
        cluster.shutdown()


# -- cluster.yaml ---------------------------------------------------------------------------------------


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)              # Ray's own schema (ray-schema.json) and consistency checks
    assert raw["provider"]["type"] == "aws"
    nodes = raw["available_node_types"]
    head = nodes[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}                       # trials never run on the head
    workers = [n for name, n in nodes.items() if name != raw["head_node_type"]]
    assert workers and all(n["node_config"]["InstanceType"].startswith(("g", "p")) for n in workers)
    assert all(n["min_workers"] == 0 and n["max_workers"] > 0 for n in workers)   # autoscaling GPU workers
    setup = " ".join(raw["setup_commands"])
    assert "pip install -q -e ~/ess" in setup and "/mnt/shared" in setup        # installs ess, shared storage
    assert raw["file_mounts"] == {"~/ess": "."}
    assert any("mlflow server" in c for c in raw["head_start_ray_commands"])   # the head hosts MLflow
    # Ray rejects what it does not know: the validation is not vacuous
    broken = copy.deepcopy(prepared)
    broken["available_node_types"]["head"]["resources"] = {"CPU": -1}
    with pytest.raises(Exception, match="-1"):
        validate_config(broken)
    broken = copy.deepcopy(prepared)
    broken["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(broken)


def test_every_entry_point_says_the_same_thing_offline(tmp_path, capsys):
    from ess.search.cli import main as search_main
    from ess.train import main as train_main

    for main in (search_main, train_main):
        assert main(["--smoke-test", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "ESS_OFFLINE=1 forbids downloading it" in err and str(tmp_path) in err
        assert not (tmp_path / "run").exists()   # nothing announced or written before the data is there
    with pytest.raises(DataError, match="ESS_OFFLINE=1 forbids downloading it"):
        ensure_corpus("ptb", str(tmp_path))
