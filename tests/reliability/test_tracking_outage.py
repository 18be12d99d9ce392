"""Tracking outages: a real ``mlflow server`` is killed in the middle of a real ESS search and restarted.

The search is shown the way a Tune job shows it: each epoch's run directory is copied as a checkpoint
(as ``tune.report`` does) and handed to the driver's :class:`ExperimentRuns`, which brings the trial's
nested run up to date from it; system metrics are sampled into the run directory meanwhile. The
server (a subprocess on 127.0.0.1, a SQLite backend, proxied artifacts) is SIGKILLed after epoch 1
has been shown; the search goes on.

- restarted before the last epoch: the driver notices at a later checkpoint and brings the run up to date;
- still down when the run ends: ``python -m ess.adapters.mlflow sync EXPERIMENT_DIR`` does it afterwards
  (twice: the second time there is nothing left to send).

Each test checks that every finished epoch's metrics (every key, every step) and genotype files are
in the server exactly once, that the final checkpoint is there, that the system metrics sampled during
the outage are there (they used to be lost), and that the user was told exactly once that the server
was unreachable (and once that it was back).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ess.adapters.mlflow import PARENT_TAG, numeric_metrics
from ess.adapters.mlflow.experiment_runs import ExperimentRuns
from ess.adapters.mlflow.sync import LocalCheckpoint, sync_directory
from ess.adapters.mlflow.system import SystemSampler
from ess.adapters.ray.grid import trial_identity
from ess.config import config_to_dict
from ess.search import PRESETS, SearchConfig, search

from conftest import requires_ptb

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

pytestmark = [requires_ptb, pytest.mark.slow]

DATA_DIR = os.environ.get("ESS_DATA_DIR")
#: four epochs of a toy joint search: about a second each on 2 idle cores
CFG = SearchConfig(**{**PRESETS["smoke"], "max_train_tokens": 1_200, "max_eval_tokens": 400, "epochs": 4,
                      "draw": False, "data_dir": DATA_DIR})
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
TRIAL = "t_00000"
SYSTEM_KEY = "system/cpu_utilization_percentage"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1:<port> over one SQLite file and artifact directory (restartable).

    Its job runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``: a dozen extra processes in MLflow 3) is off.
    """

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = f"sqlite:///{root / 'server.db'}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 120.0) -> None:
        self.starts += 1
        command = shlex.join([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                              str(self.port), "--backend-store-uri", self.db, "--artifacts-destination",
                              str(self.root / "artifacts"), "--workers", "1"])
        # a watchdog shell leads the process group: it kills the server if this test process dies
        # without its fixtures running (SIGTERM, SIGKILL), so no server is ever left behind
        watchdog = f"{command} & while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill -9 0"
        log = open(self.root / f"server-{self.port}-{self.starts}.log", "w")
        self.proc = subprocess.Popen(["sh", "-c", watchdog], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.root,
                                     env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        log.close()
        deadline = time.monotonic() + timeout
        import requests

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: see {self.root}/server-{self.port}-{self.starts}.log")
            try:
                if requests.get(self.uri + "/health", timeout=1).status_code == 200:
                    return
            except requests.exceptions.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {timeout} s")

    def stop(self) -> None:
        """SIGKILL the server and its workers (a crash, not a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def server_root(tmp_path_factory):
    """The server's SQLite file, migrated in-process once (the server would take ~3x longer to do it)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    MlflowClient(f"sqlite:///{root / 'server.db'}").search_experiments()
    return root


@pytest.fixture
def server(server_root, monkeypatch):
    for key, value in HTTP_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ESS_TRACKING_RETRY_S", "0.5")
    srv = Server(server_root)
    try:
        yield srv
    finally:
        srv.stop()


def run_search(tmp_path: Path, server: Server, experiment: str, *, restart_after: int | None):
    """A real search shown the way a Tune job shows it; the server dies after epoch 1 has been shown."""
    exp, run = tmp_path / "exp", tmp_path / "run"
    trial_dir = exp / "search" / f"joint_s3_{TRIAL}"
    trial_dir.mkdir(parents=True)
    (exp / "job.yaml").write_text(f"job: joint_search\nname: outage\nexperiment: {experiment}\n"
                                  f"tracking_uri: {server.uri}\n")
    cfg = dataclasses.replace(CFG, run_dir=str(run / "search"))
    config = {"ess": {"job": "joint_search", "experiment_name": "outage", "mlflow_experiment": experiment,
                      "search": config_to_dict(cfg), "train": None}, "variant": {"mode": "joint", "seed": 3}}
    (trial_dir / "params.json").write_text(json.dumps(config))
    run.mkdir()
    (run / "trial.json").write_text(json.dumps({**trial_identity(config, TRIAL, f"joint_s3_{TRIAL}"),
                                                "started": time.time()}))
    runs = ExperimentRuns(server.uri, experiment, "outage", str(exp))
    runs.open_parent(tags={"job": "test"}, params={}, resume=False)
    runs.started(TRIAL, trial_identity(config, TRIAL, f"joint_s3_{TRIAL}"))
    outage: dict[str, float] = {}

    def report(epoch: int) -> None:   # what tune.report with a checkpoint does, then the driver's callback
        copy = trial_dir / f"checkpoint_{epoch:06d}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy)
        with open(trial_dir / "result.json", "a") as f:
            f.write(json.dumps({"epoch": epoch, "trial_id": TRIAL}) + "\n")
        runs.checkpoint(TRIAL, LocalCheckpoint(copy))

    def on_epoch(rep):
        report(rep.epoch)
        if rep.epoch == 1:
            server.stop()
            outage["start"] = time.time() * 1000
            time.sleep(1.0)                 # system samples taken while the server is down
        if restart_after is not None and rep.epoch == restart_after:
            outage["end"] = time.time() * 1000
            server.start()

    sampler = SystemSampler(run, 0.2, time.time()).start()
    result = search(cfg, on_epoch=on_epoch)
    sampler.stop()
    report(cfg.epochs + 1)                # the last checkpoint: what the run directory holds at the end
    outage.setdefault("end", time.time() * 1000)
    (exp / "search" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(
        {"trial_data": [[json.dumps({"trial_id": TRIAL, "status": "TERMINATED"}), "{}"]]}))
    runs.ended(TRIAL, "FINISHED")
    runs.log_parent(metrics={"trials": 1}, status="FINISHED")
    runs.end()
    return result, runs, run / "search", exp, outage


def check_server_has_everything(uri: str, experiment: str, result, search_dir: Path, tmp_path: Path,
                                outage: dict[str, float]) -> str:
    """Every epoch's metrics once, every genotype file, the final checkpoint, the system samples taken
    during the outage; returns the trial run id."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ess.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get(PARENT_TAG)]
    assert len(parents) == 1 and len(trials) == 1, [r.data.tags for r in runs]
    run = trials[0]
    assert run.data.tags[PARENT_TAG] == parents[0].info.run_id
    assert run.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics == {"trials": 1.0}
    assert run.data.tags["ess.genotype"] == result.genotype.to_json(None)
    expected: dict[str, list[tuple[int, float]]] = {}
    for epoch, row in enumerate(result.rows, 1):
        for key, value in numeric_metrics(row).items():
            expected.setdefault(key, []).append((epoch, value))
    assert len(expected) >= 8
    for key, values in expected.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert got == values, key                      # every step of every key, exactly once
    for folder in ("genotypes", "arch_weights"):
        listed = sorted(f.path for f in client.list_artifacts(run.info.run_id, folder))
        assert listed == [f"{folder}/epoch_{e:03d}.json" for e in range(1, CFG.epochs + 1)]
    dst = tmp_path / "downloaded"
    for epoch in range(1, CFG.epochs + 1):
        name = f"genotypes/epoch_{epoch:03d}.json"
        got = Path(client.download_artifacts(run.info.run_id, name, str(dst)))
        assert json.loads(got.read_text()) == json.loads((search_dir / name).read_text())
    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"genotype.json", "metrics.jsonl", "arch_weights.json", "model"} <= top
    model = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, "model")}
    assert model == {"model/checkpoint.pt": (search_dir / "checkpoint.pt").stat().st_size}
    samples = client.get_metric_history(run.info.run_id, SYSTEM_KEY)
    assert [m for m in samples if outage["start"] < m.timestamp < outage["end"]], "system metrics of the outage"
    steps = [m.step for m in samples]
    assert len(steps) == len(set(steps))                # once each
    return run.info.run_id


def messages(err: str) -> tuple[int, int, int]:
    lines = [x for x in err.splitlines() if x.startswith("ess: MLflow at ")]
    return (sum("is unreachable" in x for x in lines), sum("is back:" in x for x in lines),
            sum("is still unreachable" in x for x in lines))


def test_server_killed_after_epoch_1_and_restarted_before_the_last(server, tmp_path, capfd):
    server.start()
    result, runs, search_dir, exp, outage = run_search(tmp_path, server, "ess-outage-restart", restart_after=3)
    assert len(result.rows) == CFG.epochs                          # training went on through the outage
    err = capfd.readouterr().err
    assert messages(err) == (1, 1, 0), err                         # told once each way
    assert not runs.down
    check_server_has_everything(server.uri, "ess-outage-restart", result, search_dir, tmp_path, outage)


def test_server_down_until_after_the_run_then_sync_shows_everything(server, tmp_path, capfd):
    server.start()
    result, runs, search_dir, exp, outage = run_search(tmp_path, server, "ess-outage-sync", restart_after=None)
    assert len(result.rows) == CFG.epochs
    err = capfd.readouterr().err
    assert messages(err) == (1, 0, 1), err                         # down, and still down at the end: how to sync
    assert f"python -m ess.adapters.mlflow sync {exp}" in err
    said: list[str] = []
    assert not sync_directory(exp, say=said.append)                # still down: nothing changes, one line
    assert len(said) == 1 and "is unreachable" in said[0]
    server.start()
    up = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "sync", str(exp)],
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"outage: 1 trial runs and the parent run are up to date in {server.uri}", up.stdout
    run_id = check_server_has_everything(server.uri, "ess-outage-sync", result, search_dir, tmp_path, outage)
    before = {key: len(MlflowClient(server.uri).get_metric_history(run_id, key))
              for key in MlflowClient(server.uri).get_run(run_id).data.metrics}
    assert sync_directory(exp, say=lambda line: None)               # again: nothing left to send
    after = {key: len(MlflowClient(server.uri).get_metric_history(run_id, key)) for key in before}
    assert after == before and after["valid/ppl"] == CFG.epochs
