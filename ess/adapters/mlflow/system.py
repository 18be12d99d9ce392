"""System metrics sampled into a run directory by MLflow's own monitors (CPU, memory, disk, network, GPU).

The samples go to ``system_metrics.jsonl`` in the run directory, not to MLflow, so they are kept
while the store is down and shown with the rest of the record. Their step is the number of sampling
intervals since the trial first started (``t0``), so a restarted trial goes on numbering where the
first run of it would have been, instead of reusing steps.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from ess.adapters.mlflow.record import SYSTEM_FILE


def _monitors() -> list[Any]:
    # the mlflow extra (psutil with it): imported here, as this package is imported without it too
    import psutil  # noqa: F401  (MLflow's monitors need it; say so instead of failing silently)
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception:  # no nvidia-ml-py, or no GPU
        pass
    return monitors


class SystemSampler:
    """A daemon thread appending one row of ``system/...`` values every ``interval`` seconds."""

    def __init__(self, run_dir: str | Path, interval: float, t0: float):
        self.path = Path(run_dir) / SYSTEM_FILE
        self.interval, self.t0 = float(interval), float(t0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitors: list[Any] = []

    def start(self) -> SystemSampler:
        try:
            self._monitors = _monitors()
        except ImportError as err:
            warnings.warn(f"system metrics are off: {err} (pip install psutil; nvidia-ml-py for GPUs)",
                          RuntimeWarning, stacklevel=2)
            return self
        self._thread = threading.Thread(target=self._run, name="ess-system-metrics", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> dict[str, Any]:
        """One row: the step, the time in ms, and every monitor's value under ``system/``."""
        values: dict[str, Any] = {}
        for monitor in self._monitors:
            monitor.collect_metrics()
            values.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        now = time.time()
        return {"step": int((now - self.t0) / self.interval), "timestamp": int(now * 1000),
                **{f"system/{k}": v for k, v in values.items()}}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                line = json.dumps(self.sample()) + "\n"
                with open(self.path, "a", encoding="utf-8") as fh:   # one write: a reader sees whole lines
                    fh.write(line)
            except Exception as err:  # sampling is best effort: never stop the trial
                warnings.warn(f"system metrics: {err}", RuntimeWarning, stacklevel=1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)


__all__ = ["SystemSampler"]
