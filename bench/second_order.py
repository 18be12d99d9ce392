"""Magnitudes of the second-order architecture gradient's two terms on real batches, DARTS-style vs exact.

``dalpha = dalpha L_val(w') - xi * c * H v`` (ess.search.architect): the direct term and the Hessian term.
The DARTS form clips ``v`` to the weights' clip norm first (as the public code does), the exact form does not;
their Hessian terms differ by ``clip / ||v||`` when ``||v||`` is larger. For each form this prints the norms
of the first-order gradient, the direct term and the Hessian term, and ``||v||``, over a few PTB batches at
the cpu-small search sizes (lr 10 as that preset, or ``--lr``). One table and one JSON line.

    ESS_DATA_DIR=../shared/data python bench/second_order.py
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ess.checkpoint import seed_everything  # noqa: E402
from ess.data import batchify, get_batch, load_corpus  # noqa: E402
from ess.search.architect import Architect  # noqa: E402
from ess.supernet import build_search_model  # noqa: E402


def _norm(ts) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/second_order.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--mode", default="joint")
    parser.add_argument("--nhid", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=10.0)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    corpus = load_corpus("ptb", args.data_dir)
    train = batchify(corpus.train[:200_000], args.batch_size)
    valid = batchify(corpus.valid[:50_000], args.batch_size)
    seed_everything(args.seed)
    model = build_search_model(len(corpus.vocab), mode=args.mode, emsize=args.nhid, nhid=args.nhid)
    model.train()
    rows: dict[str, list[dict[str, float]]] = {"darts": [], "exact": []}
    for b in range(args.batches):
        tb, vb = get_batch(train, b * 35, 35), get_batch(valid, b * 35, 35)
        state = model.init_state(args.batch_size)
        first, _ = Architect(model).arch_gradient(None, vb, None, state)
        for form in rows:
            architect = Architect(model, unrolled=True, second_order=form, beta=1e-3)
            torch.manual_seed(100 + b)
            architect.arch_gradient(tb, vb, state, state, args.lr, 5e-7, args.clip)
            last = architect.last
            rows[form].append({"first_order": _norm(first), "direct": last["direct_norm"],
                               "hessian": last["hessian_norm"], "v_norm": last["v_norm"],
                               "v_used": last["v_norm_used"]})
    print(f"second-order architecture gradient, {args.mode} mode, {args.nhid}-d, batch {args.batch_size}, "
          f"lr {args.lr}, clip {args.clip}: norms, mean over {args.batches} PTB batches")
    print(f"{'form':<6} {'first-order':>12} {'direct':>10} {'hessian':>10} {'hess/direct':>12} "
          f"{'||v||':>8} {'v used':>8}")
    summary = {}
    for form, rs in rows.items():
        mean = {k: statistics.fmean(r[k] for r in rs) for k in rs[0]}
        mean["ratio"] = statistics.fmean(r["hessian"] / r["direct"] for r in rs)
        summary[form] = mean
        print(f"{form:<6} {mean['first_order']:12.3e} {mean['direct']:10.3e} {mean['hessian']:10.3e} "
              f"{mean['ratio']:12.3f} {mean['v_norm']:8.3f} {mean['v_used']:8.3f}")
    summary["exact_over_darts_hessian"] = summary["exact"]["hessian"] / summary["darts"]["hessian"]
    print(json.dumps({"args": vars(args), "summary": summary, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
