"""A/B of the DARTS step's variants in one process: each against the default, alternating on the same batch.

Separate processes minutes apart differ on this machine by more than these variants do, so each variant is
timed interleaved with the default (train step, then evaluation step, ``--rounds`` times each; medians):

* ``per_step_weight_grads``: every step returns its own weight gradients (no :class:`ess.kernels.SequenceGrads`:
  ``T`` products of inner dimension ``B``, added up by autograd);
* ``all_nodes_grouped``: every node fed by one source in one product, however wide (no
  ``DARTS_GROUP_COLUMNS`` cap).

Before timing, each variant's loss and gradients are held to the default's (float32, ``<= 1e-5``), else exit 1.

    ESS_DATA_DIR=../shared/data python bench/retrain_variants.py                 # DARTS_V2, 300 and 850
    python bench/retrain_variants.py --smoke-test

Prints one table and one JSON line (``{"bench": "retrain_variants", ...}``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import retrain_step  # noqa: E402

from ess.kernels import DartsPlan  # noqa: E402
from ess.models.cells import DARTSCell  # noqa: E402
from ess.models.lm import RNNModel, lm_loss, regularisation  # noqa: E402


@contextlib.contextmanager
def per_step_weight_grads(cell: DARTSCell) -> Iterator[None]:
    @contextlib.contextmanager
    def sequence() -> Iterator[None]:  # the grouped weights once, but no SequenceGrads
        W0h, Wg, _ = cell._fused_weights()
        cell._sequence_weights = (W0h, Wg, None)
        try:
            yield
        finally:
            cell._sequence_weights = None

    cell.sequence = sequence
    try:
        yield
    finally:
        del cell.sequence


@contextlib.contextmanager
def all_nodes_grouped(cell: DARTSCell) -> Iterator[None]:
    plan = cell.plan
    cell.plan = DartsPlan.of(cell.genotype)
    try:
        yield
    finally:
        cell.plan = plan


VARIANTS: dict[str, Callable[[DARTSCell], contextlib.AbstractContextManager]] = {
    "per_step_weight_grads": per_step_weight_grads, "all_nodes_grouped": all_nodes_grouped}
SMOKE = dict(sizes=[16], ntoken=50, bptt=5, batch=4, rounds=1)


def _steps(model: RNNModel, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=retrain_step.LR)

    def train() -> None:
        model.train()
        out = model(x, model.init_state(x.size(1)))
        loss = lm_loss(out, y) + regularisation(out, retrain_step.ALPHA, retrain_step.BETA)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate() -> None:
        model.eval()
        lm_loss(model(x, model.init_state(x.size(1))), y).item()

    return train, evaluate


def _gradients(model: RNNModel, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.train()
    torch.manual_seed(99)
    out = model(x, model.init_state(x.size(1)))
    loss = lm_loss(out, y) + regularisation(out, retrain_step.ALPHA, retrain_step.BETA)
    return [loss, *torch.autograd.grad(loss, list(model.parameters()))]


def measure(size: int, args: argparse.Namespace) -> tuple[list[dict], dict[str, float], list[str]]:
    model = retrain_step.build("DARTS_V2", size, args.ntoken, args.seed)
    cell = model.cell.intra
    (x, y), = common.batches(args.ntoken, args.bptt, args.batch, args.data_dir, "train")[0]
    base = _gradients(model, x, y)
    diffs, failed = {}, []
    for name, variant in VARIANTS.items():
        with variant(cell):
            diffs[f"{name}/{size}"] = d = common.max_abs_diff(_gradients(model, x, y), base)
        if not d <= common.TOLERANCE:
            failed.append(f"{name}/{size}")
    if failed:
        return [], diffs, failed
    train, evaluate = _steps(model, x, y)
    rows = []
    for name, variant in VARIANTS.items():
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds + 1):  # the first round warms up
            for which in ("default", name):
                with variant(cell) if which == name else contextlib.nullcontext():
                    for kind, step in (("train", train), ("eval", evaluate)):
                        start = time.perf_counter()
                        step()
                        times.setdefault((which, kind), []).append(time.perf_counter() - start)
        tok = {k: args.bptt * args.batch / common.median(v[1:] or v) for k, v in times.items()}
        rows.append({"size": size, "variant": name, "rounds": args.rounds,
                     **{f"{which}_{kind}_tokens_per_s": t for (which, kind), t in tok.items()}})
    return rows, diffs, []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="300,850", help="comma-separated emb = hid sizes")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--rounds", type=int, default=5, help="timed alternations per variant (after one warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ntoken", type=int, default=10_000, help="vocabulary when no corpus is found")
    p.add_argument("--data-dir", default=os.environ.get("ESS_DATA_DIR"))
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, one round: a few seconds")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    if args.smoke_test:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.data_dir = None
    torch.set_num_threads(args.threads)
    info = common.machine(args.threads)
    common.corpus_info(args, info)
    rows, checks, failed = [], {}, []
    for size in args.sizes:
        r, d, f = measure(size, args)
        rows += r
        checks.update(d)
        failed += f
    if not common.report_equivalence("retrain_variants", {"variants": checks}, failed):
        return 1
    table = []
    for r in rows:
        cells = [r["size"], r["variant"]]
        for kind in ("train", "eval"):
            d, v = r[f"default_{kind}_tokens_per_s"], r[f"{r['variant']}_{kind}_tokens_per_s"]
            cells += [f"{d:,.0f}", f"{v:,.0f}", f"{d / v:.2f}"]
        table.append(cells)
    common.print_table(
        f"DARTS_V2 step variants vs default, one process, alternating, batch {args.batch}, BPTT {args.bptt}, "
        f"{args.threads} threads, median of {args.rounds} ({info.get('cpu', '?')})",
        ["size", "variant", "default train tok/s", "variant train", "default / variant", "default eval tok/s",
         "variant eval", "default / variant"], table)
    print(json.dumps({"bench": "retrain_variants", "equivalence": "passed", "tolerance": common.TOLERANCE,
                      "checks": checks, "machine": info, "bptt": args.bptt, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
