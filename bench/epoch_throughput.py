"""Tokens/s and peak memory of one search epoch (each mode) or one retraining epoch, on real PTB.

Each measurement runs in a fresh process so the peak resident memory (ru_maxrss) is its own.

    ESS_DATA_DIR=../shared/data python bench/epoch_throughput.py search --modes intra,inter,joint
    ESS_DATA_DIR=../shared/data python bench/epoch_throughput.py train --cells DARTS_V2,lstm
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

import torch


def _one(kind: str, name: str, size: int, batch: int, tokens: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    common = dict(emsize=size, nhid=size, batch_size=batch, epochs=1, max_train_tokens=tokens,
                  max_eval_tokens=2_000, progress=False, threads=threads, run_dir=f"/tmp/ess-bench-{kind}-{name}")
    if kind == "search":
        from ess.search import SearchConfig, search

        rows = search(SearchConfig(mode=name, draw=False, **common)).rows
    else:
        from ess.train import TrainConfig, train

        cfg = TrainConfig(cell="lstm" if name == "lstm" else "ess", genotype="DARTS_V2" if name == "lstm" else name,
                          max_rollbacks=0, **common)
        train(cfg)
        from ess.checkpoint import load_checkpoint

        rows = load_checkpoint(f"/tmp/ess-bench-{kind}-{name}/checkpoint.pt")["rows"]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"kind": kind, "name": name, "size": size, "batch": batch, "threads": threads,
            "tokens_per_s": round(rows[-1]["train/tokens_per_s"], 1), "peak_rss_gb": round(peak_gb, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["search", "train"])
    parser.add_argument("--modes", default="intra,inter,joint")
    parser.add_argument("--cells", default="DARTS_V2,lstm")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64 * 35 * 6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one(args.kind, args.child, args.size, args.batch, args.tokens, args.threads)))
        return
    names = (args.modes if args.kind == "search" else args.cells).split(",")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"{'name':>10} {'size':>5} {'batch':>5} {'tok/s':>9} {'peak GB':>8}")
    results = []
    for name in names:
        out = subprocess.run([sys.executable, __file__, args.kind, "--child", name, "--size", str(args.size),
                              "--batch", str(args.batch), "--tokens", str(args.tokens), "--threads",
                              str(args.threads)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"{name:>10} {row['size']:>5} {row['batch']:>5} {row['tokens_per_s']:>9.1f} {row['peak_rss_gb']:>8.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
