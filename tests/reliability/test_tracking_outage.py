"""Tracking outages: a real ``mlflow server`` is killed in the middle of a real ESS search and restarted.

The search is driven the way the Tune trainable drives it (``ess.adapters.ray.trainables.run_search``): each
epoch's metrics, genotype and architecture-weight files are logged to a nested trial run under a
parent run through :func:`ess.adapters.mlflow.start_trial_run`. The server (a subprocess on 127.0.0.1, a
SQLite backend, proxied artifacts) is SIGKILLed after epoch 1 has been logged; the search goes on.

- restarted before the last epoch: the tracker notices at its next log call and uploads the spool;
- still down when the run ends: ``python -m ess.adapters.mlflow sync`` uploads it afterwards (twice: the
  second time there is nothing left).

Each test checks that every finished epoch's metrics (every key, every step) and genotype files are
in the server exactly once, that the final checkpoint is there, and that the user was told exactly
once per run that the server was unreachable (and once that it was back).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ess.adapters.mlflow import (
    PARENT_TAG,
    flat_params,
    get_or_create_experiment,
    numeric_metrics,
    start_parent_run,
    start_trial_run,
    sync,
)
from ess.search import PRESETS, SearchConfig, search

from conftest import requires_ptb

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

pytestmark = [requires_ptb, pytest.mark.slow]

DATA_DIR = os.environ.get("ESS_DATA_DIR")
#: four epochs of a toy joint search: about a second each on 2 idle cores
CFG = SearchConfig(**{**PRESETS["smoke"], "emsize": 16, "nhid": 16, "steps": 3, "n_inter": 2, "m": 2,
                      "batch_size": 8, "max_train_tokens": 1_200, "max_eval_tokens": 400, "epochs": 4,
                      "draw": False, "progress": False, "data_dir": DATA_DIR})
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


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
    monkeypatch.delenv("ESS_TRACKING_SPOOL", raising=False)
    srv = Server(server_root)
    try:
        yield srv
    finally:
        srv.stop()


def run_search(tmp_path: Path, server: Server, experiment: str, *, restart_after: int | None):
    """A real search logged like the Tune trainable; the server dies after epoch 1's records."""
    spool = tmp_path / "spool"
    cfg = dataclasses.replace(CFG, run_dir=str(tmp_path / "search"))
    search_dir = Path(cfg.run_dir)
    parent = start_parent_run(server.uri, experiment, "outage", tags={"job": "test"}, spool_dir=spool)
    experiment_id = get_or_create_experiment(server.uri, experiment)
    trial = start_trial_run(server.uri, experiment_id, parent.run_id, "t_00000", run_name="joint_s3",
                            tags={"mode": cfg.mode, "seed": cfg.seed}, params=flat_params(dataclasses.asdict(cfg)),
                            system_metrics=False, spool_dir=spool)

    def on_epoch(rep):
        trial.log_metrics(rep.metrics, step=rep.epoch)
        for key, path in rep.artifacts.items():
            trial.log_artifact(path, "genotypes" if key in ("genotype", "picture") else "arch_weights")
        trial.log_artifact(search_dir / "arch_weights.json")
        if rep.epoch == 1:
            server.stop()
        if restart_after is not None and rep.epoch == restart_after:
            server.start()

    result = search(cfg, on_epoch=on_epoch)
    for name in ("genotype.json", "metrics.jsonl"):
        trial.log_artifact(search_dir / name)
    trial.log_artifact(search_dir / "checkpoint.pt", "model")
    trial.set_tags({"ess.genotype": result.genotype.to_json(None)})
    trial.finish("FINISHED")
    parent.log_metrics({"trials": 1})
    parent.finish("FINISHED")
    return result, parent, trial, search_dir, spool


def check_server_has_everything(uri: str, experiment: str, result, search_dir: Path, tmp_path: Path) -> str:
    """Every epoch's metrics once, every genotype file, the final checkpoint; returns the trial run id."""
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
    return run.info.run_id


def messages(err: str, label: str) -> tuple[int, int]:
    lines = [x for x in err.splitlines() if x.startswith("ess: MLflow at ") and f"run {label} " in x]
    return sum("is unreachable" in x for x in lines), sum("is back: uploaded" in x for x in lines)


def test_server_killed_after_epoch_1_and_restarted_before_the_last(server, tmp_path, capfd):
    server.start()
    result, parent, trial, search_dir, spool = run_search(tmp_path, server, "ess-outage-restart", restart_after=3)
    assert len(result.rows) == CFG.epochs                          # training went on through the outage
    err = capfd.readouterr().err
    assert messages(err, "joint_s3") == (1, 1), err                # told once each way
    assert messages(err, "outage") == (0, 0)                       # the parent logged nothing while it was down
    assert trial.outages == 1 and not trial.offline
    assert trial.spooled == 2 * 4 + 1          # epochs 2 and 3 (metrics + 3 files each), epoch 4's metrics
    assert not list(spool.glob("*.jsonl")) and not list(spool.glob("*.files"))
    check_server_has_everything(server.uri, "ess-outage-restart", result, search_dir, tmp_path)


def test_server_down_until_after_the_run_then_sync_uploads_everything(server, tmp_path, capfd):
    server.start()
    result, parent, trial, search_dir, spool = run_search(tmp_path, server, "ess-outage-sync", restart_after=None)
    assert len(result.rows) == CFG.epochs
    err = capfd.readouterr().err
    assert messages(err, "joint_s3") == (1, 0), err
    assert messages(err, "outage") == (1, 0), err                  # the parent's finish found it down too
    assert trial.offline and trial.spooled == 3 * 4 + 5             # epochs 2-4, final files, tags, status
    assert parent.offline and parent.spooled == 2                   # its summary metric and status
    assert len(list(spool.glob("*.jsonl"))) == 2
    said: list[str] = []
    assert sync(spool, echo=said.append) == 2                      # still down: both files stay, untouched
    assert len(said) == 2 and all("is unreachable" in x for x in said) and len(list(spool.glob("*.jsonl"))) == 2
    server.start()
    up = subprocess.run([sys.executable, "-m", "ess.adapters.mlflow", "sync", "--spool", str(spool)],
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert "joint_s3: uploaded 17 records" in up.stdout and "outage: uploaded 2 records" in up.stdout, up.stdout
    run_id = check_server_has_everything(server.uri, "ess-outage-sync", result, search_dir, tmp_path)
    again: list[str] = []
    assert sync(spool, echo=again.append) == 0 and again == [f"nothing to upload in {spool.resolve()}"]
    assert len(MlflowClient(server.uri).get_metric_history(run_id, "valid/ppl")) == CFG.epochs
