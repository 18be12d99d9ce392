"""One Tune trial around a core loop: restore first, write its record, report each epoch, end once.

Runs inside the Ray actor process and never talks to MLflow: the trial's record is its run directory
(the loops' files, ``trial.json`` naming the trial, ``system_metrics.jsonl``), which is also each of
its checkpoints; the driver shows it in MLflow (:mod:`ess.adapters.ray.tracking`). Paths are relative
to the trial's working directory, so a trial restarted on another node continues with the same config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune

from ess.adapters.mlflow.record import TRIAL_FILE
from ess.adapters.mlflow.system import SystemSampler
from ess.adapters.ray.config import RUN_DIR
from ess.adapters.ray.grid import trial_identity, variant_of
from ess.adapters.ray.spec import TrialSpec
from ess.checkpoint import atomic_write_text
from ess.errors import DivergenceError

SEARCH_METRIC = "valid/ppl"
RETRAIN_METRIC = "retrain/valid/best_ppl"
TRANSFER_METRIC = "dev/f1"


def _trial_root() -> Path:
    """The trial's own working directory (Ray changes into it unless RAY_CHDIR_TO_TRIAL_DIR=0)."""
    if os.environ.get("RAY_CHDIR_TO_TRIAL_DIR", "1") == "0":
        root = Path(tune.get_context().get_trial_dir()) / "working"
        root.mkdir(parents=True, exist_ok=True)
        os.chdir(root)
    return Path.cwd()


def _node_id() -> str:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""


class Trial:
    """What a trainable does around the core loops: restore, record, per-epoch report, the end."""

    def __init__(self, config: dict[str, Any]):
        self.checkpoint = tune.get_checkpoint()   # restore first
        self.config = config
        ctx = tune.get_context()
        self.trial_id, self.trial_name = ctx.get_trial_id(), ctx.get_trial_name()
        #: the stage's spec, typed again (it crossed the Ray boundary as plain data)
        self.spec = TrialSpec.from_config(config["ess"], f"trial {self.trial_name}")
        self.root = _trial_root()
        self.run = Path(RUN_DIR)                 # relative: stable across restarts on other nodes
        if self.checkpoint is not None:   # a clean copy: no files of a later, lost epoch survive
            shutil.rmtree(self.root / self.run, ignore_errors=True)
            self.checkpoint.to_directory(str(self.root / self.run))
        self.run.mkdir(parents=True, exist_ok=True)
        self.restored = self.checkpoint is not None
        path = self.run / TRIAL_FILE
        #: the typed run configs (search, train, transfer): rebuilt once, from the spec and the trial's values
        self.configs = self.spec.run_configs(self.variant(), f"trial {self.trial_name}")
        self.identity = json.loads(path.read_text()) if path.exists() else {
            **trial_identity(config, self.trial_id, self.trial_name, self.configs), "started": time.time()}
        atomic_write_text(path, json.dumps(self.identity, indent=1) + "\n")
        self.phase = self.identity["phase"]
        self.node_id = _node_id()
        self.carry: dict[str, Any] = {}         # values every later row repeats (final search metrics ...)
        self.stopped = False                    # Tune stopped the trial (ASHA, max_t) at a report

    def variant(self) -> dict[str, Any]:
        """The trial's own values: the ``variant`` dict plus tuned top-level keys (Optuna, grid)."""
        return variant_of(self.config)

    def report(self, row: dict[str, Any], *, checkpoint: bool = True, last: bool = False) -> None:
        """``tune.report`` one flat row (and the run directory as checkpoint).

        When Tune stops the trial (a scheduler decision) the report raises ``SystemExit``: it
        propagates, unless this was the ``last`` row of the loop anyway, in which case the loop may
        finish (final genotype, artifacts) and nothing more is reported.
        """
        if self.stopped:
            return
        row = {**self.carry, **row, "phase": self.phase, "node_id": self.node_id}
        ckpt = tune.Checkpoint.from_directory(str(self.run.resolve())) if checkpoint else None
        try:
            tune.report(row, checkpoint=ckpt)
        except SystemExit:
            self.stopped = True
            if not last:
                raise

    def wants_checkpoint(self, epoch: int, last: int) -> bool:
        return epoch % self.spec.checkpoint_every == 0 or epoch >= last

    @contextmanager
    def running(self) -> Iterator[None]:
        """The body of a trainable, with its system metrics sampled; a divergence ends the trial here.

        A diverged trial returns instead of raising: Tune would otherwise restart it from the same
        checkpoint (``max_failures``), where it would diverge again. Its last row says why; the
        driver marks its run FAILED from that row.
        """
        sampler = None
        if self.spec.system_metrics:
            sampler = SystemSampler(self.run, self.spec.system_metrics_interval, self.identity["started"]).start()
        try:
            yield
        except DivergenceError as err:
            self._end_diverged(err)
        finally:
            if sampler is not None:
                sampler.stop()

    def _end_diverged(self, err: DivergenceError) -> None:
        """The last row: the reason, the search metric (``inf`` when no search epoch finished, so schedulers
        and searchers accept the row), no genotype and no checkpoint."""
        reason = str(err).splitlines()[0]
        print(f"trial {self.trial_name}: {reason}", file=sys.stderr, flush=True)
        row = {"diverged": 1, "failure": reason}
        if SEARCH_METRIC not in self.carry and self.phase != "transfer":
            row[SEARCH_METRIC] = math.inf
        self.carry.pop("genotype", None)
        self.report(row, checkpoint=False, last=True)


__all__ = ["RETRAIN_METRIC", "RUN_DIR", "SEARCH_METRIC", "TRANSFER_METRIC", "Trial"]
