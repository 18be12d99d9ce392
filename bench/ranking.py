"""Shared-weight ranking speed: genotypes per second on their paths, by group size, against the whole supernet.

Times :func:`ess.search.ranking.path_losses` on the first ``--tokens`` PTB validation tokens (batch ``--batch``)
for ``--genotypes`` random joint genotypes, with the genotypes evaluated ``group`` at a time for each
``--groups`` value, and the naive way (the whole supernet under one-hot weights, one genotype at a time,
``--naive`` genotypes). Variants alternate (``--rounds`` rounds) so that a shared machine's load falls on all of
them. Before timing, the batched losses are held to the one-at-a-time losses (float32, relative 1e-4).
Reports seconds per genotype (median over rounds), the projected time to rank 1,000 genotypes, and the share
of the time the decoder takes (the loss of the same hidden states alone). Successive halving (``--screen``,
``--keep``: every genotype on the leading share of the tokens, the best ``keep`` of 1,000 on all of them) is
timed as its screen and projected to 1,000 genotypes; the agreement of the screen's order with the full order
over the bench's genotypes is Kendall's tau. Give ``--supernet RUN_DIR`` (a search's run directory) to rank on a
trained supernet: an untrained one ranks on noise.

    ESS_DATA_DIR=../shared/data python bench/ranking.py --threads 2
    python bench/ranking.py --smoke-test

Prints one table and one JSON line (``{"bench": "ranking", ...}``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ess.data import batchify, load_corpus, valid_part  # noqa: E402
from ess.evaluation import evaluate  # noqa: E402
from ess.search import load_search  # noqa: E402
from ess.search.evidence import rank_agreement  # noqa: E402
from ess.search.ranking import mean_loss, path_losses, samples, space_of  # noqa: E402
from ess.supernet import build_search_model  # noqa: E402
from ess.supernet.path import one_hot_probs  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/ranking.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--genotypes", type=int, default=64)
    p.add_argument("--groups", default="1,8,32,64")
    p.add_argument("--naive", type=int, default=2, help="genotypes evaluated the naive way (0: skip)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", default="joint")
    p.add_argument("--inter-norm", default="op")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--screen", type=float, default=0.2, help="successive halving: the screen's share of the tokens")
    p.add_argument("--keep", type=int, default=100, help="successive halving: genotypes of 1,000 scored on all")
    p.add_argument("--supernet", default=None, help="a search's run directory: rank on its trained supernet")
    p.add_argument("--smoke-test", action="store_true")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.size, args.tokens, args.genotypes, args.groups, args.naive, args.rounds = 16, 1_200, 4, "1,4", 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    corpus = load_corpus("ptb", args.data_dir)
    source = batchify(valid_part(corpus.valid, "search")[: args.tokens], args.batch)
    torch.manual_seed(0)
    if args.supernet:
        run = load_search(Path(args.supernet))
        model, args.mode, args.size = run.model.eval(), run.cfg.mode, run.cfg.nhid
        torch.set_num_threads(args.threads)   # the search's own thread count was applied on loading
    else:
        model = build_search_model(len(corpus.vocab), mode=args.mode, emsize=args.size, nhid=args.size,
                                   inter_norm=args.inter_norm).eval()
    genotypes = samples(0, args.genotypes, space_of(model))
    groups = [int(g) for g in args.groups.split(",")]
    alone = path_losses(model, genotypes[:4], source, group=1)
    batched = path_losses(model, genotypes[:4], source, group=max(groups))
    worst = max(abs(a - b) / abs(a) for a, b in zip(alone, batched))
    if worst > 1e-4:
        print(f"batched and one-at-a-time losses differ (relative {worst:.2e})", file=sys.stderr)
        return 1
    seconds: dict[str, list[float]] = {f"group {g}": [] for g in groups}
    if args.naive:
        seconds["whole supernet, one-hot"] = []
    rows_screen = max(2, int(round((source.size(0) - 1) * args.screen)) + 1)
    screen_name = f"screen {args.screen:.0%}, group {max(groups)}"
    seconds[screen_name] = []
    screened: list[float] = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        screened = path_losses(model, genotypes, source[:rows_screen], group=max(groups))
        seconds[screen_name].append((time.perf_counter() - start) / len(genotypes))
        for g in groups:
            start = time.perf_counter()
            full = path_losses(model, genotypes, source, group=g)
            seconds[f"group {g}"].append((time.perf_counter() - start) / len(genotypes))
        if args.naive:
            start = time.perf_counter()
            for genotype in genotypes[: args.naive]:
                with model.overridden(one_hot_probs(model, genotype)):
                    evaluate(model, source)
            seconds["whole supernet, one-hot"].append((time.perf_counter() - start) / args.naive)
    hidden, targets = torch.randn(source.numel(), args.size), source.reshape(-1)
    weight, bias = model.decoder.weight, model.decoder.bias
    with torch.no_grad():   # the ranking's own loss: the decoder fused into it
        decoder = common.median(common.timed(lambda: mean_loss(hidden, weight, bias, targets), 1, 3)[0])
    tokens = (source.size(0) - 1) * source.size(1)
    rows, out = [], {}
    for name, values in seconds.items():
        per = common.median(values)
        share = min(1.0, decoder * ((rows_screen - 1) / (source.size(0) - 1) if name == screen_name else 1) / per)
        out[name] = {"seconds_per_genotype": per, "minutes_for_1000": 1000 * per / 60, "decoder_share": share}
        rows.append([name, f"{per:.3f}", f"{1000 * per / 60:.1f}", f"{share:.0%}"])
    per_full, per_screen = common.median(seconds[f"group {max(groups)}"]), common.median(seconds[screen_name])
    halving = (1000 * per_screen + min(args.keep, 1000) * per_full) / 60
    agreement = rank_agreement(screened, full)
    out["halving"] = {"screen": args.screen, "keep": args.keep, "minutes_for_1000": halving,
                      "screen_vs_full_tau": agreement.tau, "tau_ci": agreement.interval,
                      "genotypes": len(genotypes), "supernet": args.supernet or "untrained"}
    rows.append([f"halving: 1000 on {args.screen:.0%}, best {args.keep} on all", f"{60 * halving / 1000:.3f}",
                 f"{halving:.1f}", "-"])
    common.print_table(f"ranking {args.genotypes} {args.mode} genotypes on {tokens:,} tokens, {args.size} units, "
                       f"batch {args.batch}, {args.threads} thread(s)",
                       ["variant", "s / genotype", "min / 1000 genotypes", "decoder share"], rows)
    print(f"screen against full order over {len(genotypes)} genotypes "
          f"({args.supernet or 'untrained supernet'}): {agreement.statement()}")
    print(json.dumps({"bench": "ranking", "machine": common.machine(args.threads), "tokens": tokens,
                      "size": args.size, "batch": args.batch, "mode": args.mode, "results": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
