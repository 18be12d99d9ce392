"""Faults on Ray Tune: a killed trial worker, a lost worker node, a killed driver, a diverging trial.

Each test checks that no finished epoch's metrics row or checkpoint is lost: every trial ends with
all its epochs, in the Tune results and in MLflow, and (where the fault allows a comparison) with the
same genotype as an uninterrupted trial with the same seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray import tune

from ess.adapters.ray.experiment import Experiment, ray_session

from conftest import DATA_DIR, TINY_SEARCH, load_job, requires_ptb, tiny_job

ROOT = Path(__file__).resolve().parents[2]
search_stage = load_job("joint_search").search_stage   # the job's own Tuner, on the variants given here
pytestmark = [requires_ptb, pytest.mark.slow]


def _epochs_in_mlflow(store: str, run_id: str, key: str = "valid/ppl") -> set[int]:
    from mlflow import MlflowClient

    return {m.step for m in MlflowClient(store).get_metric_history(run_id, key)}


def _points_written_twice(store: str, experiment: str) -> dict[str, list[tuple[str, int]]]:
    """Per run of the experiment, the (key, step) pairs MLflow holds more than once (none, whatever restarts)."""
    from collections import Counter

    from mlflow import MlflowClient

    client = MlflowClient(store)
    twice = {}
    for run in client.search_runs([client.get_experiment_by_name(experiment).experiment_id]):
        counts = Counter((key, m.step) for key in run.data.metrics for m in client.get_metric_history(run.info.run_id,
                                                                                                      key))
        twice[run.info.run_name] = sorted(k for k, n in counts.items() if n > 1)
    return {name: pairs for name, pairs in twice.items() if pairs}


# -- a SIGKILLed trial worker ----------------------------------------------------------------------------


class KillAfterFirstCheckpoint(tune.Callback):
    """SIGKILLs the worker of the trial labelled ``killed`` once its epoch-1 checkpoint is registered."""

    def __init__(self, log: str):
        self.log = log

    def _write(self, event: dict) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(event) + "\n")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._write({"event": "result", "label": trial.config["variant"]["label"], "epoch": result["epoch"]})

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        label = trial.config["variant"]["label"]
        marker = Path(self.log).with_suffix(".killed")
        if label == "killed" and not marker.exists():
            marker.touch()
            pid = trial.last_result["pid"]
            self._write({"event": "kill", "label": label, "epoch": trial.last_result["epoch"], "pid": pid})
            os.kill(pid, signal.SIGKILL)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._write({"event": "recover", "label": trial.config["variant"]["label"]})


def test_killed_worker_restarts_from_checkpoint_with_the_same_genotype(tmp_path, local_ray):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = tiny_job(tmp_path, name="kill", tracking_uri=store, max_failures=1, keep_checkpoints=1,
                   search={**TINY_SEARCH, "epochs": 3, "max_train_tokens": 2000})
    log = tmp_path / "events.jsonl"
    variant = dict(mode="joint", seed=5, steps=3, n_inter=2, m=2)
    with ray_session(job):
        exp = Experiment("joint_search", job)
        rows = search_stage(exp, job, [{**variant, "label": "killed"}, {**variant, "label": "clean"}],
                            callbacks=[KillAfterFirstCheckpoint(str(log))])
    events = [json.loads(line) for line in log.read_text().splitlines()]
    killed = [e for e in events if e["label"] == "killed"]
    kill = next(i for i, e in enumerate(killed) if e["event"] == "kill")
    assert killed[kill]["epoch"] == 1
    assert any(e["event"] == "recover" for e in killed[kill:])
    after = [e["epoch"] for e in killed[kill:] if e["event"] == "result"]
    assert after[0] == 2 and after[-1] == 3           # continued from the epoch-1 checkpoint, not from scratch
    by_label = {r["variant"]["label"]: r for r in rows}
    assert all(r["error"] is None for r in rows)
    k, c = by_label["killed"]["metrics"], by_label["clean"]["metrics"]
    assert k["epoch"] == c["epoch"] == 3
    assert k["genotype"] == c["genotype"]              # the same genotype as the uninterrupted trial
    assert k["valid/ppl"] == pytest.approx(c["valid/ppl"], rel=1e-6)
    assert k["arch/entropy"] == pytest.approx(c["arch/entropy"], rel=1e-6)
    # one MLflow run for the killed trial, reattached after the restart, with every epoch once or more
    client = MlflowClient(store)
    run = client.get_run(k["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ess.restarts"] == "1"
    assert {m.step for m in client.get_metric_history(run.info.run_id, "valid/ppl")} == {1, 2, 3}
    experiment_id = client.get_experiment_by_name(exp.mlflow_experiment).experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = "
                                                                 f"'{exp.parent_run_id}'")
    assert len(children) == 2




# -- a lost worker node --------------------------------------------------------------------------------


_LIVE: dict[str, object] = {}   # the cluster handle: Tune pickles its callbacks, a Cluster does not pickle


class RemoveNodeAfterFirstResult(tune.Callback):
    """Removes the worker node (not the head) as soon as a trial running there reports epoch 1."""

    def __init__(self, worker_id: str, log: str):
        self.worker_id, self.log, self.done = worker_id, log, False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        event = {"label": trial.config["variant"]["label"], "epoch": result["epoch"], "node": result["node_id"]}
        if not self.done and result["node_id"] == self.worker_id:
            self.done = True
            _LIVE["cluster"].remove_node(_LIVE["worker"], allow_graceful=False)
            event["removed"] = True
        with open(self.log, "a") as f:
            f.write(json.dumps(event) + "\n")


def test_trials_of_a_lost_worker_node_finish_on_the_remaining_node(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                           "health_check_failure_threshold": 3}})
    try:
        worker = cluster.add_node(num_cpus=1)
        _LIVE.update(cluster=cluster, worker=worker)
        ray.init(address=cluster.address, log_to_driver=False)
        head_id = next(n["NodeID"] for n in ray.nodes() if n["NodeID"] != worker.node_id)
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
        job = tiny_job(tmp_path, name="node", tracking_uri=store, max_failures=3, keep_checkpoints=1,
                       search={**TINY_SEARCH, "epochs": 3, "max_train_tokens": 2000}, address=cluster.address)
        log = tmp_path / "events.jsonl"
        variant = dict(mode="joint", seed=5, steps=3, n_inter=2, m=2)
        exp = Experiment("joint_search", job)
        rows = search_stage(exp, job, [{**variant, "label": "a"}, {**variant, "label": "b"}],
                            callbacks=[RemoveNodeAfterFirstResult(worker.node_id, str(log))])
    finally:
        _LIVE.clear()
        ray.shutdown()
        cluster.shutdown()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    removed = next(e for e in events if e.get("removed"))
    moved = [e for e in events if e["label"] == removed["label"]]
    assert moved[-1]["node"] == head_id and moved[-1]["epoch"] == 3        # finished on the head node
    by_label = {r["variant"]["label"]: r for r in rows}
    assert all(r["error"] is None and r["metrics"]["epoch"] == 3 for r in rows)
    assert by_label["a"]["metrics"]["genotype"] == by_label["b"]["metrics"]["genotype"]   # same seed, same result
    for r in rows:                                                          # no finished epoch lost
        assert _epochs_in_mlflow(store, r["metrics"]["mlflow_run_id"]) == {1, 2, 3}


# -- a killed driver, resumed with Tuner.restore ---------------------------------------------------------


def _job_cmd(storage: Path, store: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "tune_jobs" / "joint_search.py"), "--smoke-test", "--name", "drv",
            "--storage-path", str(storage), "--tracking-uri", store, "--no-retrain", "--num-cpus", "2",
            "--max-concurrent-trials", "1", "--no-system-metrics", "--data-dir", DATA_DIR,
            "--search", "epochs=3 emsize=16 nhid=16 steps=3 n_inter=2 m=2 batch_size=8 max_train_tokens=3000 "
                        "max_eval_tokens=1200 draw=false", *extra]


def test_a_killed_driver_resumes_with_tuner_restore_and_loses_nothing(tmp_path):
    storage, store = tmp_path / "tune", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "ESS_DATA_DIR": DATA_DIR, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.Popen(_job_cmd(storage, store), cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, progressed = time.time() + 300, False
    try:
        while time.time() < deadline and proc.poll() is None:
            results = list((storage / "drv" / "search").glob("*/result.json"))
            if any(len(p.read_text().splitlines()) >= 2 for p in results):   # a trial is past epoch 2
                progressed = True
                break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)        # the driver and its local Ray die at once
        output = proc.communicate(timeout=60)[0]
    assert progressed, output[-3000:]
    assert not (storage / "drv" / "summary.json").exists()
    from mlflow import MlflowClient

    client = MlflowClient(store)
    killed = client.search_runs([client.get_experiment_by_name("ess-joint_search").experiment_id])
    assert killed and {r.info.status for r in killed} == {"RUNNING"}      # what a killed driver leaves
    # the next start of any job on this host marks them KILLED (gap: they stayed RUNNING until a resume)
    other = Experiment("joint_search", tiny_job(tmp_path, name="next", tracking_uri=store))
    assert {client.get_run(r.info.run_id).info.status for r in killed} == {"KILLED"}
    other.runs.log_parent(status="FINISHED")
    done = subprocess.run(_job_cmd(storage, store, "--resume"), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "restoring" in done.stderr
    summary = json.loads((storage / "drv" / "summary.json").read_text())
    assert len(summary["searched"]) == 2 and all(s["epochs"] == 3 for s in summary["searched"])
    for s in summary["searched"]:                                           # no finished epoch lost
        assert _epochs_in_mlflow(store, s["mlflow_run_id"]) == {1, 2, 3}
    for result in (storage / "drv" / "search").glob("*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines()]
        assert sorted(set(epochs)) == [1, 2, 3]
    # each metric point once per (key, step), though the epoch after the last saved state ran twice (gap)
    assert _points_written_twice(store, "ess-joint_search") == {}
    assert {r.info.status for r in client.search_runs([client.get_experiment_by_name("ess-joint_search")
                                                       .experiment_id]) if r.info.run_name != "next"} == {"FINISHED"}


# -- a diverging trial -----------------------------------------------------------------------------------


def test_a_diverging_trial_fails_with_its_reason_and_logs_no_genotype(tmp_path, local_ray):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = tiny_job(tmp_path, name="nan", tracking_uri=store, max_failures=2,
                   search={**TINY_SEARCH, "epochs": 2, "max_train_tokens": 2000, "max_rollbacks": 1})
    variant = dict(mode="joint", seed=5, steps=3, n_inter=2, m=2)
    exp = Experiment("joint_search", job)
    # an unreachable perplexity bound: every epoch of "bad" fails the check, however it trains
    rows = search_stage(exp, job, [{**variant, "label": "bad", "max_ppl": 1.0}, {**variant, "label": "good"}])
    by_label = {r["variant"]["label"]: r for r in rows}
    bad, good = by_label["bad"], by_label["good"]
    assert good["error"] is None and good["metrics"]["epoch"] == 2
    assert bad["error"].startswith("search diverged: valid perplexity") and "gave up after 1 rollback" in bad["error"]
    assert bad["metrics"]["diverged"] == 1 and "genotype" not in bad["metrics"]
    assert bad["metrics"]["valid/ppl"] == float("inf")
    client = MlflowClient(store)
    run = client.get_run(bad["metrics"]["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["ess.failure"] == "diverged"
    assert "ess.genotype" not in run.data.tags
    assert not [a for a in client.list_artifacts(run.info.run_id)]             # no genotype, no model
    assert client.get_metric_history(run.info.run_id, "valid/ppl") == []      # nothing from a diverged state
