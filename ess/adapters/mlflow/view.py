"""One MLflow run kept as a view of a run directory: each metric point, each file, logged once.

:meth:`RunView.sync` compares the record (:class:`~ess.adapters.mlflow.record.RunRecord`) with what
the run already holds and sends only the difference, so it is safe to repeat: after a restart, a
resume, an outage, or by hand (``python -m ess.adapters.mlflow sync``). What the run holds is read
from MLflow when the view opens (the metric history of each key, the per-epoch files), so a point
is written once per (key, step) whatever process wrote it before. An unreachable store raises; the
caller decides when to try again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ess.adapters.mlflow.client import connect, retry
from ess.adapters.mlflow.record import EPOCH_FOLDERS, PICTURE_FILE, File, RunRecord
from ess.space.refs import load_genotype

METRICS_PER_BATCH = 1000   # MLflow's log_batch limit
PARAMS_PER_BATCH = 100


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RunView:
    """The MLflow run ``run_id`` of a store, brought up to date with a run directory by :meth:`sync`."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = connect(uri)
        run = retry(lambda: self.client.get_run(run_id), "get_run")
        self.params = dict(run.data.params)
        self.tags = dict(run.data.tags)
        self.steps: dict[str, set[int]] = {
            key: {int(m.step) for m in retry(lambda key=key: self.client.get_metric_history(run_id, key),
                                             "get_metric_history")}
            for key in run.data.metrics}
        self.kept: set[str] = set()
        for folder in EPOCH_FOLDERS:
            self.kept |= {f.path for f in retry(lambda folder=folder: self.client.list_artifacts(run_id, folder),
                                                "list_artifacts")}
        self.sent: dict[str, str] = {}   # artifact path -> digest of the copy this view sent

    def sync(self, record: RunRecord, *, final: bool = False) -> dict[str, int]:
        """Send what ``record`` holds and the run does not; ``final``: the weights and end-of-trial tags too.

        Returns how many metric points, params and files were sent.
        """
        from mlflow.entities import Metric, Param  # the mlflow extra: this package is imported without it too

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), stamp or now, step) for k, v, stamp, step in record.points()
                  if step not in self.steps.get(k, ())]
        seen: set[tuple[str, int]] = set()
        points = [m for m in points if (m.key, m.step) not in seen and not seen.add((m.key, m.step))]
        for start in range(0, len(points), METRICS_PER_BATCH):
            chunk = points[start:start + METRICS_PER_BATCH]
            retry(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk), "log_batch")
            for m in chunk:
                self.steps.setdefault(m.key, set()).add(m.step)
        params = [Param(k, v[:6000]) for k, v in record.params().items() if k not in self.params]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            chunk = params[start:start + PARAMS_PER_BATCH]
            retry(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk), "log_batch")
            self.params.update({p.key: p.value for p in chunk})
        files = sum(self._send(f) for f in record.files() if final or not f.final)
        if final:
            self._final(record)
        return {"metrics": len(points), "params": len(params), "files": files}

    def _send(self, f: File) -> int:
        if f.kept and f.artifact in self.kept:
            return 0
        digest = _digest(f.path)
        if self.sent.get(f.artifact) == digest:
            return 0
        retry(lambda: self.client.log_artifact(self.run_id, str(f.path), f.folder), "log_artifact")
        self.sent[f.artifact] = digest
        if f.kept:
            self.kept.add(f.artifact)
        return 1

    def _final(self, record: RunRecord) -> None:
        """The end-of-trial extras: the genotype tag, the pictures of phases that drew none (a retraining's
        genotype) and the long table of the last architecture weights."""
        self.set_tags(record.final_tags())
        with tempfile.TemporaryDirectory() as tmp:
            for genotype, folder, title in record.pictures():
                picture = Path(tmp) / (folder or "") / PICTURE_FILE
                if File(picture, folder).artifact not in self.sent:   # the genotype of a trial never changes
                    # matplotlib: 0.5 s at start, paid only where a picture is drawn
                    from ess.space.draw import render_genotype

                    picture.parent.mkdir(parents=True, exist_ok=True)
                    picture.write_bytes(render_genotype(load_genotype(genotype), "png", title=title))
                    self._send(File(picture, folder))
            rows = record.weight_table()
            if not rows:
                return
            # the format MlflowClient.log_table writes, but replacing the file (log_table appends to it)
            path = Path(tmp) / "arch_weights_table.json"
            columns = list(rows[0])
            path.write_text(json.dumps({"columns": columns, "data": [[r[c] for c in columns] for r in rows]}))
            self._send(File(path, None))
        self._mark_table("arch_weights_table.json")

    def _mark_table(self, name: str) -> None:
        # the mlflow extra: this package is imported without it too
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        tables = json.loads(self.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        entry = {"path": name, "type": "table"}
        if entry not in tables:
            self.set_tags({MLFLOW_LOGGED_ARTIFACTS: json.dumps([*tables, entry])})

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag  # the mlflow extra: this package is imported without it too

        new = {str(k): str(v)[:8000] for k, v in tags.items() if v is not None and self.tags.get(k) != str(v)}
        if new:
            retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in new.items()]),
                  "log_batch")
            self.tags.update(new)

    def finish(self, status: str) -> None:
        """The run's final status (MLflow sets the end time)."""
        retry(lambda: self.client.set_terminated(self.run_id, status), "set_terminated")


__all__ = ["RunView"]
