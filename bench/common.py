"""Shared pieces of the benchmark scripts: matmul FLOP counting, the machine's matmul rate, child processes.

FLOP counting (:func:`pass_flops`, :func:`search_iteration_flops`, :func:`retrain_flops`) counts the matmul
arithmetic a pass *needs*, ``2 M N K`` per product with a network weight matrix, read off the model's
structure:

* forward: every product (input projection, node-0 recurrence, one per intra edge, inter-cell projections,
  the tied decoder);
* backward: ``dW = X^T dY`` for every product when the network weights need gradients, ``dX = dY W^T``
  when the product's input depends on something that needs a gradient (the architecture step of the
  search freezes the weights, so only the products downstream of an architecture weight count there).

Elementwise work (activations, the softmax-weighted sums over ops, batch norm, the loss) is not counted,
nor are the boundary products of the first time step (they read the detached initial state), which are
below 0.1% of a step. The tests hold the count to the matmuls the fused path actually runs
(``torch.utils.flop_counter``), so the achieved FLOP/s is never inflated by an overcount.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

from ess.models.cells import DARTSCell, ESSCell, InterCell, LSTMCell  # noqa: E402
from ess.models.lm import RNNModel  # noqa: E402
from ess.supernet import MixedInterCell, MixedIntraCell  # noqa: E402
from ess.supernet.reference import ReferenceMixedInterCell, ReferenceMixedIntraCell  # noqa: E402

TOLERANCE = 1e-5  # max abs difference of fast vs reference outputs and gradients (float32)


# --------------------------------------------------------------------------------------------------
# FLOP counting


@dataclass(frozen=True)
class Product:
    """A product ``X W`` done once per token and time step: ``flops`` = ``2 K N`` per row (forward).

    ``x_arch``: ``X`` depends on an architecture weight (its ``dX`` is needed by the architecture step);
    ``skip``: the first ``skip`` time steps need no ``dX`` (``X`` is still the detached initial state).
    """

    name: str
    flops: int
    x_arch: bool
    skip: int = 0


def _inter_products(cell: Any, prefix: str, inputs_arch: bool, recurrent: bool) -> list[Product]:
    """Products of an inter cell; ``inputs_arch``: its inputs depend on an architecture weight;
    ``recurrent``: it reads the hidden-state queue (the first steps' inputs are the initial state)."""
    if isinstance(cell, (MixedInterCell, ReferenceMixedInterCell)):
        d, m, k = cell.dim, cell.m, cell.n_nodes
        # the fused cell stacks its m inputs: dX of all of them once any has a gradient (t >= 1)
        products = [Product(f"{prefix}.inputs", 2 * m * 2 * d * d, inputs_arch, int(recurrent))]
        if k > 1:
            products.append(Product(f"{prefix}.nodes", 2 * (k - 1) * 2 * d * d, True))
        return products
    assert isinstance(cell, InterCell), type(cell)
    if cell.is_identity:
        return []
    d, m = cell.dim, cell.m
    keys = {(side, edge.pred) for node in cell.genotype.nodes for side, edge in (("a", node.a), ("b", node.b))}
    products = []
    for j in range(m):  # input j at step t is h_{t-1-j}: the initial state while t <= j
        count = sum(pred == j for _, pred in keys)
        if count:
            products.append(Product(f"{prefix}.input{j}", count * 2 * d * d, inputs_arch, (j + 1) * recurrent))
    n_nodes = sum(pred >= m for _, pred in keys)
    if n_nodes:
        products.append(Product(f"{prefix}.nodes", n_nodes * 2 * d * d, inputs_arch))
    return products


def model_products(model: RNNModel) -> list[Product]:
    """The weight products of one token and time step of ``model`` (an :class:`ess.models.lm.RNNModel`)."""
    cell = model.cell
    d, V = model.nhid, model.ntoken
    decoder = Product("decoder", 2 * d * V, True)
    if isinstance(cell, LSTMCell):  # torch.nn.LSTM: input and hidden products of the 4 gates
        return [Product("lstm.input", 2 * cell.ninp * 4 * d, False), Product("lstm.hidden", 2 * d * 4 * d, True, 1),
                decoder]
    assert isinstance(cell, ESSCell), type(cell)
    intra, history, inputs = cell.intra, cell.history, cell.inputs
    searched = {name: isinstance(part, (MixedIntraCell, ReferenceMixedIntraCell, MixedInterCell,
                                        ReferenceMixedInterCell))
                for name, part in (("intra", intra), ("history", history), ("input", inputs))}
    any_arch = any(searched.values())
    if isinstance(intra, (MixedIntraCell, ReferenceMixedIntraCell)):
        pairs = intra.steps * (intra.steps + 1) // 2
    else:
        assert isinstance(intra, DARTSCell), type(intra)
        pairs = len(intra.genotype.recurrent)
    ninp, nhid = intra.ninp, intra.nhid
    history_has_weights = bool(list(history.parameters()))
    products = _inter_products(inputs, "input", False, recurrent=False)
    products += _inter_products(history, "history", any_arch, recurrent=True)
    products += [
        Product("intra.x_projection", 2 * ninp * 2 * nhid, searched["input"]),
        # node 0 reads h^_{t-1}: at t = 0 the detached initial state unless the history cell has weights
        Product("intra.node0", 2 * nhid * 2 * nhid, any_arch, 0 if history_has_weights else 1),
        Product("intra.edges", pairs * 2 * nhid * 2 * nhid, any_arch),
        decoder,
    ]
    return products


def pass_flops(model: RNNModel, T: int, B: int, grads: str | None) -> int:
    """Matmul FLOPs of one forward (and backward) pass over ``T x B`` tokens.

    ``grads``: ``None`` (forward only), ``'weights'`` (architecture frozen: the weight step), ``'arch'``
    (weights frozen: the first-order architecture step) or ``'both'``.
    """
    total = 0
    for p in model_products(model):
        total += p.flops * T * B  # forward
        if grads is None:
            continue
        if grads in ("weights", "both"):
            total += p.flops * T * B  # dW
        if grads in ("weights", "both") or p.x_arch:  # every X depends on the (trainable) embedding
            total += p.flops * max(T - p.skip, 0) * B
    return total


def search_iteration_flops(model: RNNModel, T: int, B: int, order: int) -> int:
    """Matmul FLOPs of one search iteration (:class:`ess.search.Searcher`): architecture step + weight step."""
    weight_step = pass_flops(model, T, B, "weights")
    if order == 1:
        return pass_flops(model, T, B, "arch") + weight_step
    # look-ahead gradient (arch frozen), dalpha and v at w' (both), dalpha at w+ and w- (arch), weight step
    return (pass_flops(model, T, B, "weights") + pass_flops(model, T, B, "both") + 2 * pass_flops(model, T, B, "arch")
            + weight_step)


def retrain_flops(model: RNNModel, T: int, B: int, train: bool) -> int:
    """Matmul FLOPs of one retraining step (forward + backward) or one evaluation forward."""
    return pass_flops(model, T, B, "weights" if train else None)


# --------------------------------------------------------------------------------------------------
# The machine


def matmul_rate(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32,
                device: str = "cpu") -> float:
    """Best FLOP/s of ``torch.matmul`` on ``n x n`` square matrices (at the current thread count)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    torch.matmul(a, b, out=out)
    best = float("inf")
    reps = max(1, int(2e10 // (2 * n**3)))  # ~0.1-0.2 s a repeat at CPU speeds
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        sync(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine(threads: int, device: str = "cpu") -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "threads": threads,
                            "cpus": os.cpu_count(), "device": device, "date": time.strftime("%Y-%m-%d %H:%M"),
                            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def peak_rss_gb() -> float:
    """Peak resident memory of this process's own address space (GB).

    ``VmHWM`` from ``/proc/self/status`` where there is one: ``ru_maxrss`` is not usable in a child started
    by a big parent, as Linux carries the forked copy's high-water mark across ``exec`` into it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux, bytes on macOS


def peak_device_gb(device: str) -> float | None:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**30
    return None


# --------------------------------------------------------------------------------------------------
# Running configurations in fresh processes


def run_child(script: str | Path, config: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``script --child JSON`` in a fresh interpreter; returns the JSON object of its last stdout line."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(config.get("threads", 1)))
    proc = subprocess.run([sys.executable, str(script), "--child", json.dumps(config)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {config} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed(fn: Callable[[], Any], warmup: int, repeats: int, device: str = "cpu") -> tuple[list[float], float]:
    """``(seconds of each timed call, seconds of the warm-up calls)``."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, warm


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def max_abs_diff(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x is None and y is None:
            continue
        if x is None or y is None:
            return float("inf")
        worst = max(worst, (x.detach().double() - y.detach().double()).abs().max().item() if x.numel() else 0.0)
    return worst


def batches(ntoken: int, T: int, B: int, data_dir: str | None, split: str, count: int = 1
            ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """``count`` consecutive ``[T, B]`` batches with their targets: real PTB (``split``) when ``data_dir`` holds
    it, else uniform ids in ``[0, ntoken)``; and the source (``'ptb'`` or ``'random'``)."""
    if data_dir and (Path(data_dir) / "ptb" / "train.txt").is_file():
        from ess.data import batchify, get_batch, load_corpus

        data = batchify(getattr(load_corpus("ptb", data_dir), split), B)
        span = max(1, data.size(0) - T - 1)
        return [get_batch(data, (k * T) % span, T) for k in range(count)], "ptb"
    g = torch.Generator().manual_seed(1234)
    x = torch.randint(0, ntoken, (count * T + 1, B), generator=g)
    return [(x[k * T: (k + 1) * T], x[k * T + 1: (k + 1) * T + 1]) for k in range(count)], "random"


def config_backend(cfg: dict[str, Any]) -> Any:
    """The kernel backend a timed configuration runs under: ``autograd`` for the reference, else the one
    asked for (``cfg["backend"]``) or the current one."""
    from ess import kernels

    return kernels.backend("autograd" if cfg["impl"] == "reference" else cfg.get("backend") or kernels.get_backend())


def corpus_info(args: Any, info: dict[str, Any]) -> None:
    """Use PTB's vocabulary when ``args.data_dir`` holds it (``info["data"]`` says which data the run used)."""
    if args.data_dir and (Path(args.data_dir) / "ptb" / "train.txt").is_file():
        from ess.data import load_corpus

        args.ntoken = len(load_corpus("ptb", args.data_dir).vocab)
        info["data"] = "ptb"
    else:
        info["data"] = f"random ids, vocabulary {args.ntoken}"


def report_equivalence(bench: str, checks: dict[str, dict[str, float]], failed: list[Any]) -> bool:
    """Print every check's differences; on a failure also say so and print the refusing JSON line."""
    print(f"# equivalence fast vs reference (tolerance {TOLERANCE:g}; see check_equivalence):")
    for key, diffs in checks.items():
        print(f"#   {key}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if failed:
        print(f"# REFUSED: fast and reference differ: {failed}", file=sys.stderr)
        print(json.dumps({"bench": bench, "equivalence": "failed", "checks": checks}))
    return not failed


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |")


__all__ = ["TOLERANCE", "Product", "machine", "matmul_rate", "max_abs_diff", "median", "model_products",
           "pass_flops", "peak_device_gb", "peak_rss_gb", "print_table", "retrain_flops", "run_child",
           "search_iteration_flops", "sync", "timed", "batches"]
