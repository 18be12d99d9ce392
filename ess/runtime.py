"""Device choice, thread settings and small run-time helpers shared by the loops."""

from __future__ import annotations

import math
import os
import time

import torch

from ess.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, CPU otherwise; or an explicit ``cpu`` / ``cuda[:N]``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r} (use auto, cpu or cuda[:N])") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but CUDA is not available")
    return device


def set_threads(threads: int) -> None:
    """Set the intra-op thread count once (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped so a diverged loss gives ``inf`` instead of an OverflowError."""
    return math.exp(loss) if loss < 700 else float("inf")


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
