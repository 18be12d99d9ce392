"""One Tune trial around a core loop: restore first, report each epoch, end its tracked run once.

Runs inside the Ray actor process. Paths are relative to the trial's working directory, so a trial
restarted on another node continues with the same config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ess.checkpoint import atomic_write_text
from ess.errors import DivergenceError

RUN_DIR = "run"                     # inside the trial's working directory; the checkpoint is this directory
TRIAL_STATE = "trial.json"
SEARCH_METRIC = "valid/ppl"
RETRAIN_METRIC = "retrain/valid/best_ppl"
TRANSFER_METRIC = "dev/f1"


def _trial_root() -> Path:
    """The trial's own working directory (Ray changes into it unless RAY_CHDIR_TO_TRIAL_DIR=0)."""
    from ray import tune

    if os.environ.get("RAY_CHDIR_TO_TRIAL_DIR", "1") == "0":
        root = Path(tune.get_context().get_trial_dir()) / "working"
        root.mkdir(parents=True, exist_ok=True)
        os.chdir(root)
    return Path.cwd()


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""


class Trial:
    """What a trainable does around the core loops: restore, tracker, per-epoch report, final status."""

    def __init__(self, config: dict[str, Any], phase: str):
        from ray import tune

        self.checkpoint = tune.get_checkpoint()   # restore first
        self.spec: dict[str, Any] = config["ess"]
        self.config = config
        self.phase = phase
        ctx = tune.get_context()
        self.trial_id, self.trial_name = ctx.get_trial_id(), ctx.get_trial_name()
        self.root = _trial_root()
        self.run = Path(RUN_DIR)                 # relative: stable across restarts on other nodes
        if self.checkpoint is not None:   # a clean copy: no files of a later, lost epoch survive
            shutil.rmtree(self.root / self.run, ignore_errors=True)
            self.checkpoint.to_directory(str(self.root / self.run))
        self.run.mkdir(parents=True, exist_ok=True)
        state_path = self.run / TRIAL_STATE
        self.state = json.loads(state_path.read_text()) if state_path.exists() else {}
        self.restored = self.checkpoint is not None
        self.node_id = _node_id()
        self.tracker = None
        self.carry: dict[str, Any] = {}         # values every later row repeats (final search metrics ...)
        self.stopped = False                    # Tune stopped the trial (ASHA, max_t) at a report

    def variant(self) -> dict[str, Any]:
        """The trial's own values: the ``variant`` dict plus tuned top-level keys (Optuna, grid)."""
        out = dict(self.config.get("variant") or {})
        out.update({k: v for k, v in self.config.items() if k not in ("ess", "variant")})
        return out

    def open_tracker(self, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        from ess.adapters.mlflow import PHASE_TAG, start_trial_run

        t = self.spec.get("tracking") or {}
        self.tracker = start_trial_run(
            t.get("uri"), t.get("experiment_id", ""), t.get("parent_run_id"), self.trial_id, run_name=run_name,
            tags={PHASE_TAG: self.phase, "job": self.spec.get("job"), "ray.trial_name": self.trial_name,
                  "ray.experiment": self.spec.get("experiment_name"), **tags},
            params=params, run_id=self.state.get("mlflow_run_id"),
            system_metrics=bool(t.get("system_metrics", True)),
            system_metrics_interval=float(t.get("system_metrics_interval", 10.0)),
            experiment_name=t.get("experiment_name"), spool_dir=t.get("spool_dir"))
        self.state.update({"trial_id": self.trial_id, "mlflow_run_id": self.tracker.run_id})
        atomic_write_text(self.run / TRIAL_STATE, json.dumps(self.state, indent=1) + "\n")

    def report(self, row: dict[str, Any], *, checkpoint: bool = True, last: bool = False) -> None:
        """``tune.report`` one flat row (and the run directory as checkpoint).

        When Tune stops the trial (a scheduler decision) the report raises ``SystemExit``: it
        propagates, unless this was the ``last`` row of the loop anyway, in which case the loop may
        finish (final genotype, artifacts) and nothing more is reported.
        """
        from ray import tune

        if self.stopped:
            return
        row = {**self.carry, **row, "phase": self.phase, "node_id": self.node_id,
               "mlflow_run_id": (self.tracker.run_id if self.tracker else None) or ""}
        ckpt = tune.Checkpoint.from_directory(str(self.run.resolve())) if checkpoint else None
        try:
            tune.report(row, checkpoint=ckpt)
        except SystemExit:
            self.stopped = True
            if not last:
                raise

    def wants_checkpoint(self, epoch: int, last: int) -> bool:
        every = int(self.spec.get("checkpoint_every", 1))
        return epoch % every == 0 or epoch >= last

    @contextmanager
    def running(self) -> Iterator[None]:
        """The body of a trainable: its run ends FINISHED, FAILED (re-raised), KILLED, or diverged (returned).

        A divergence ends the trial here instead of raising: Tune would otherwise restart it from the
        same checkpoint (``max_failures``), where it would diverge again.
        """
        try:
            yield
        except DivergenceError as err:
            self._end_diverged(err)
            return
        except BaseException as err:
            self._close(err)
            raise
        self._close(None)

    def _close(self, err: BaseException | None) -> None:
        """The run's final status: stopped by Tune (SystemExit from a report) is not a failure."""
        if err is None or isinstance(err, SystemExit) and err.code in (0, None):
            if self.stopped:
                self.tracker.set_tags({"ess.stopped_by_tune": "true"})
            self.tracker.finish("FINISHED")
        else:
            self.tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")

    def _end_diverged(self, err: DivergenceError) -> None:
        """The run failed with its reason in MLflow and in the last row, which keeps the search metric (as
        ``inf`` when no search epoch finished, so schedulers and searchers accept the row) and carries no
        genotype and no checkpoint."""
        reason = str(err).splitlines()[0]
        print(f"trial {self.trial_name}: {reason}", file=sys.stderr, flush=True)
        self.tracker.set_tags({"ess.failure": "diverged", "ess.failure_reason": reason[:5000]})
        self.tracker.finish("FAILED")
        row = {"diverged": 1, "failure": reason}
        if SEARCH_METRIC not in self.carry and self.phase != "transfer":
            row[SEARCH_METRIC] = math.inf
        self.carry.pop("genotype", None)
        self.report(row, checkpoint=False, last=True)


__all__ = ["RETRAIN_METRIC", "RUN_DIR", "SEARCH_METRIC", "TRANSFER_METRIC", "TRIAL_STATE", "Trial"]
