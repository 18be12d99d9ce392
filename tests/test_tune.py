"""The Ray adapter: job configs, variants, corpus check, restart after a killed worker, two nodes, cluster.yaml."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ess.errors import ConfigError, DataError
from ess.tune import (
    JOB_PRESETS,
    Experiment,
    check_resources,
    ensure_corpus,
    job_base,
    parse_job_args,
    ray_session,
    search_config_dict,
    search_variants,
    train_config_dict,
    variant_label,
)

from conftest import DATA_DIR, TINY_SEARCH, requires_ptb, tiny_job

ROOT = Path(__file__).resolve().parent.parent
TINY = TINY_SEARCH


# -- configs -----------------------------------------------------------------------------------------


def test_presets_have_the_documented_sizes():
    paper = job_base("joint_search", "paper")
    search = search_config_dict(paper)
    assert (search["emsize"], search["nhid"], search["batch_size"], search["epochs"]) == (300, 300, 256, 50)
    assert train_config_dict(paper)["emsize"] == 850 and train_config_dict(paper)["nhid"] == 850
    assert paper.gpus_per_trial == 1.0 and paper.seeds == (1, 2, 3, 4)
    small = job_base("joint_search", "cpu-small")
    assert small == job_base("joint_search", "cpu-small") and small.seeds == (3, 4) and small.modes == ("joint",)
    assert search_config_dict(small)["epochs"] == 4 and search_config_dict(small)["mode"] == "joint"
    assert job_base("ablation", "smoke").modes == ("intra", "inter", "joint")
    assert job_base("ablation", "smoke").seeds == (1,)
    hp = job_base("hparam_search", "smoke")
    assert hp.search["emsize"] == 16 and hp.search["draw"] is False and not hp.retrain
    assert set(JOB_PRESETS) == {"smoke", "cpu-small", "paper"}


def test_layering_preset_yaml_flags(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("seeds: [7, 8, 9]\nsearch: {lr: 10.0}\ntrain: {epochs: 2}\ncpus_per_trial: 0.5\n")
    cfg, args = parse_job_args("joint_search", ["--smoke-test", "--config", str(cfg_file), "--search", "epochs=3,m=1",
                                                "--gpus-per-trial", "0.25", "--name", "x"])
    assert cfg.seeds == (7, 8, 9) and cfg.cpus_per_trial == 0.5 and cfg.gpus_per_trial == 0.25
    # overrides merge: the smoke sizes stay, YAML adds lr, the flag adds epochs and m
    assert cfg.search["emsize"] == 16 and cfg.search["lr"] == 10.0 and cfg.search["epochs"] == 3
    assert cfg.search["m"] == 1 and cfg.train["epochs"] == 2 and cfg.train["emsize"] == 16
    assert args.smoke_test and cfg.name == "x"
    default, _ = parse_job_args("joint_search", [])
    assert default.search_preset == "cpu-small" and default.name.startswith("joint_search-cpu-small-")


@pytest.mark.parametrize("argv, message", [
    (["--search", "bogus=1"], "unknown key 'bogus'"),
    (["--search", "dropout=2"], "dropout"),
    (["--train", "cell=gru"], "unknown cell"),
    (["--modes", "both"], "unknown mode 'both'"),
    (["--gpus-per-trial", "1.5"], "whole number"),
    (["--resume"], "--name"),
    (["--resume", "--name", "nothing-here", "--storage-path", "/nonexistent/x"], "no saved job config"),
    (["--search", "lr"], "key=value"),
])
def test_bad_configs_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_job_args("joint_search", argv)


def test_cli_error_is_one_line():
    out = subprocess.run([sys.executable, str(ROOT / "tune_jobs" / "joint_search.py"), "--search", "bogus=1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "bogus" in out.stderr


def test_variants_grid_and_collapse():
    job = dataclasses.replace(job_base("ablation", "smoke"), seeds=(1, 2), steps=(2, 3), n_inter=(1, 2), m=(2,))
    variants = search_variants(job)
    by_mode = {mode: [v for v in variants if v["mode"] == mode] for mode in job.modes}
    assert len(by_mode["joint"]) == 2 * 2 * 2          # seeds x steps x n_inter
    assert len(by_mode["intra"]) == 2 * 2              # inter cells are the identity: n_inter, m do not matter
    assert len(by_mode["inter"]) == 2 * 2              # the intra cell is fixed: steps does not matter
    assert len({json.dumps(v, sort_keys=True) for v in variants}) == len(variants)
    assert variant_label({"mode": "joint", "seed": 3, "steps": 8, "n_inter": 3, "m": 2}) == "joint_s3_n8-3-2"
    assert variant_label({"genotype_label": "DARTS_V2"}) == "retrain_DARTS_V2"


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
    assert exp.parent.run_id is None          # tracking off: the no-op tracker
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


def test_mlflow_server_uri_as_trials_see_it(local_ray):
    import ray

    from ess.tune import _reachable_uri

    assert _reachable_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"      # one local node: unchanged
    ip = ray.util.get_node_ip_address()
    assert _reachable_uri("http://127.0.0.1:5000", cluster=True) == f"http://{ip}:5000"   # --address: workers
    assert _reachable_uri("http://localhost:5000/", cluster=True) == f"http://{ip}:5000/"
    assert _reachable_uri("http://mlflow.example:5000", cluster=True) == "http://mlflow.example:5000"
    assert _reachable_uri("sqlite:////x/mlflow.db", cluster=True) == "sqlite:////x/mlflow.db"
    assert _reachable_uri(None) is None


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
        from ess.tune import run_joint_search

        summary = run_joint_search(job)
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
