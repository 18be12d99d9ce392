"""Architecture-gradient balance of the ops at initialisation, per part, for each inter-branch normalisation.

The question (issue "A search that can say no", item 4): at initialisation, does any op's architecture
gradient dwarf the others' for reasons that have nothing to do with the data? Projections start small, so
``sigmoid(s W) ~ 0.5`` is a constant while ``tanh``, ``relu`` and ``identity`` are ~0: without a
normalisation the inter cells' ``sigmoid`` logits get the largest gradients. For each ``inter_norm`` this
script builds freshly initialised supernets (``--seeds``), takes the first-order architecture gradient
``dL_val/dalpha`` on real PTB validation batches (``--batches`` per seed), and reports per part and op the
mean ``|gradient|`` over the op's logits, and the balance: the largest non-``none`` op mean over the
smallest. One table and one JSON line.

    ESS_DATA_DIR=../shared/data python bench/inter_balance.py              # cpu-small sizes, joint mode
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ess.checkpoint import seed_everything  # noqa: E402
from ess.data import batchify, get_batch, load_corpus  # noqa: E402
from ess.search.architect import Architect  # noqa: E402
from ess.space.ops import PRIMITIVES  # noqa: E402
from ess.supernet import build_search_model  # noqa: E402
from ess.supernet.base import INTER_NORMS  # noqa: E402


def balance(norm: str, seeds: list[int], batches: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    corpus = load_corpus("ptb", args.data_dir)
    source = batchify(corpus.valid[: batches * args.batch_size * (args.bptt + 1) + 1], args.batch_size)
    sums: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        seed_everything(seed)
        model = build_search_model(len(corpus.vocab), mode=args.mode, emsize=args.nhid, nhid=args.nhid, m=args.m,
                                   n_inter=args.n_inter, inter_norm=norm)
        architect = Architect(model, beta=1e-3)
        model.train()
        for b in range(batches):
            data, targets = get_batch(source, b * args.bptt, args.bptt)
            grads, _ = architect.arch_gradient(None, (data, targets), None, model.init_state(args.batch_size))
            for (name, _), g in zip(model.named_arch_parameters(), grads):
                part = name.split(".", 1)[1]
                if "_" in part:          # the combination logits
                    continue
                per_op = sums.setdefault(part, {op: [] for op in PRIMITIVES})
                for k, op in enumerate(PRIMITIVES):
                    per_op[op].append(float(g[:, k].abs().mean()))
    out = {}
    for part, per_op in sums.items():
        means = {op: statistics.fmean(v) for op, v in per_op.items()}
        nonzero = [means[op] for op in PRIMITIVES if op != "none"]
        out[part] = {**means, "balance": max(nonzero) / min(nonzero),
                     "top": max((op for op in PRIMITIVES if op != "none"), key=means.get)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/inter_balance.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--mode", default="joint", choices=("joint", "inter"))
    parser.add_argument("--nhid", type=int, default=64, help="cpu-small: 64; paper: 300")
    parser.add_argument("--m", type=int, default=3)
    parser.add_argument("--n-inter", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--norms", default=",".join(INTER_NORMS))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    result = {norm: balance(norm, seeds, args.batches, args) for norm in args.norms.split(",")}
    header = f"{'norm':<7} {'part':<8} " + " ".join(f"{op:>9}" for op in PRIMITIVES) + "   balance (max/min non-none)"
    print(f"mean |dL/dalpha| per op at initialisation: {args.mode} mode, {args.nhid}-d, m={args.m}, "
          f"{len(seeds)} seeds x {args.batches} PTB valid batches of {args.batch_size}x{args.bptt}")
    print(header)
    for norm, parts in result.items():
        for part, row in parts.items():
            print(f"{norm:<7} {part:<8} " + " ".join(f"{row[op]:9.2e}" for op in PRIMITIVES)
                  + f"   {row['balance']:.2f} ({row['top']} largest)")
    print(json.dumps({"mode": args.mode, "nhid": args.nhid, "seeds": seeds, "batches": args.batches,
                      "seconds": round(time.perf_counter() - start, 1), "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
