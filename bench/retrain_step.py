"""Tokens/s of retraining and of evaluation: the discrete DARTS_V2 cell, an ESS cell with inter cells, LSTM.

One training step is :meth:`ess.train.Trainer.train_epoch`'s (forward, LM loss + AR/TAR, backward, clipping,
SGD step); one evaluation step is :func:`ess.evaluation.evaluate`'s (no gradient, dropout off). Cells:

* ``DARTS_V2``: the DARTS cell (``ess`` cell with identity inter cells);
* ``ESS_M3``: DARTS_V2's intra cell with a history and an input inter cell over ``m = 3`` (3 nodes each,
  defined below: a fixed, representative ESS genotype);
* ``lstm``: one ``torch.nn.LSTM`` layer at the same hidden size (the cell does ~2.5x its arithmetic).

``fast`` is the default (fused kernels), ``reference`` the cells' plain autograd code (``autograd`` kernel
backend). Before timing, fast and reference are held to the same outputs and gradients (float32, one time
step: max abs difference ``<= 1e-5``; float64 over the BPTT segment ``<= 1e-5``), else the script exits 1.
Each configuration is timed in a fresh process (its own peak memory); the matmul rate is measured in the
same run.

    ESS_DATA_DIR=../shared/data python bench/retrain_step.py                       # 300 and 850, batch 64
    python bench/retrain_step.py --sizes 850 --cells DARTS_V2,lstm
    ESS_DATA_DIR=../shared/data python bench/retrain_step.py --match DARTS_V2@128 --batch 32 --threads 1
    ESS_DATA_DIR=../shared/data python bench/retrain_step.py --match DARTS_V2@128 --batch 32 --profile DARTS_V2
    python bench/retrain_step.py --smoke-test

``--match NAME@SIZE`` sizes every cell as the study retrains it (``TrainConfig.match_params``): each at the hidden
size whose model has the parameter count of NAME at SIZE units (LSTM included: the same parameter count, not the
same width). ``--interleave`` times every configuration in one process, one step of each in turn (for ratios on a
busy machine). ``--profile CELL`` prints where one fast training step of CELL spends its time.

Prints one table and one JSON line (``{"bench": "retrain_step", ...}``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ess import kernels  # noqa: E402
from ess.models.cells import build_cell  # noqa: E402
from ess.models.lm import RNNModel, lm_loss, regularisation  # noqa: E402
from ess.space.genotype import DARTS_V2, Edge, ESSGenotype, InterGenotype, InterNode  # noqa: E402

# ess.train.TrainConfig defaults
LR, CLIP, WDECAY, ALPHA, BETA = 20.0, 0.25, 8e-7, 0.0, 1e-3
DROPOUTS = dict(dropout=0.75, dropouti=0.2, dropoute=0.1)
CELL_DROPOUTS = dict(dropoutx=0.75, dropouth=0.25)


def _inter(m: int) -> InterGenotype:
    nodes = (InterNode(Edge("tanh", 0), Edge("sigmoid", 1)), InterNode(Edge("relu", m), Edge("identity", 2)),
             InterNode(Edge("sigmoid", m + 1), Edge("tanh", 0)))
    return InterGenotype(m, nodes, "product", True)


GENOTYPES: dict[str, ESSGenotype | None] = {
    "DARTS_V2": DARTS_V2,
    "ESS_M3": ESSGenotype(DARTS_V2.intra, _inter(3), _inter(3)),
    "lstm": None,
}
SMOKE = dict(sizes=[16], ntoken=50, bptt=5, batch=4, eval_batch=4, warmup=1, repeats=1, ref_repeats=1)


def build(cell: str, size: int, ntoken: int, seed: int) -> RNNModel:
    torch.manual_seed(seed)
    kind = "lstm" if cell == "lstm" else "ess"
    return RNNModel(ntoken, size, size, build_cell(kind, size, size, GENOTYPES[cell], **CELL_DROPOUTS), **DROPOUTS)


def _pass(model: RNNModel, x: torch.Tensor, y: torch.Tensor, train: bool):
    model.train(train)
    torch.manual_seed(99)
    out = model(x, model.init_state(x.size(1)))
    loss = lm_loss(out, y) + regularisation(out, ALPHA, BETA)
    grads = torch.autograd.grad(loss, list(model.parameters())) if train else []
    return [out.logits, loss, *out.state], list(grads)


def check_equivalence(cell: str, size: int, args: argparse.Namespace) -> tuple[dict[str, float], list[str]]:
    """Fused vs plain cell (see the module docstring); the LSTM has a single implementation."""
    if cell == "lstm":
        return {}, []
    models = {}
    for name, dtype in (("fast32", torch.float32), ("ref32", torch.float32), ("fast64", torch.float64),
                        ("ref64", torch.float64)):
        models[name] = build(cell, size, args.ntoken, args.seed).to(dtype)
    (x, y), = common.batches(args.ntoken, args.bptt, args.batch, args.data_dir, "valid")[0]
    diffs, failed = {}, []
    for train in (True, False):
        for key, (a, b, T) in {"f32.step": ("fast32", "ref32", 1), "f64.bptt": ("fast64", "ref64", args.bptt)}.items():
            runs = []
            for name in (a, b):
                with kernels.backend("autograd" if name.startswith("ref") else kernels.get_backend()):
                    runs.append(_pass(models[name], x[:T], y[:T], train))
            tag = "train" if train else "eval"
            for i, part in enumerate(("outputs", "gradients")):
                diffs[f"{key}.{tag}.{part}"] = d = common.max_abs_diff(runs[0][i], runs[1][i])
                if not d <= common.TOLERANCE:
                    failed.append(f"{key}.{tag}.{part}")
    return diffs, failed


def matched_sizes(spec: str, cells: list[str], ntoken: int) -> dict[str, int]:
    """Each cell's hidden size at the parameter count of ``spec`` (``NAME@SIZE``), as ``--match-params`` sets it."""
    from ess.models.sizing import count_params, matched_size, parse_baseline

    target = count_params(*parse_baseline(spec)[:2], ntoken, parse_baseline(spec)[2])
    return {cell: matched_size("lstm" if cell == "lstm" else "ess", GENOTYPES[cell], ntoken, target)
            for cell in cells}


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    with common.config_backend(cfg):
        return _run_config(cfg)


def setup(cfg: dict[str, Any]) -> tuple[Any, Any, RNNModel]:
    """One configuration's model and two functions: one training step, one evaluation step."""
    device, T, B, Be = cfg.get("device", "cpu"), cfg["bptt"], cfg["batch"], cfg["eval_batch"]
    model = build(cfg["cell"], cfg["size"], cfg["ntoken"], cfg["seed"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WDECAY)
    train, valid = ([(x.to(device), y.to(device)) for x, y in common.batches(
        cfg["ntoken"], T, b, cfg["data_dir"], split, 4)[0]] for b, split in ((B, "train"), (Be, "valid")))
    state = {"train": model.init_state(B), "valid": model.init_state(Be), "k": 0}

    def train_step() -> None:  # ess.train.Trainer.train_epoch, one batch
        k = state["k"] % len(train)
        state["k"] += 1
        data, targets = train[k]
        model.train()
        out = model(data, state["train"])
        state["train"] = tuple(s.detach() for s in out.state)
        raw_loss = lm_loss(out, targets)
        loss = raw_loss + regularisation(out, ALPHA, BETA)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        raw_loss.item()

    @torch.no_grad()
    def eval_step() -> None:  # ess.evaluation.evaluate, one batch
        k = state["k"] % len(valid)
        state["k"] += 1
        data, targets = valid[k]
        model.eval()
        out = model(data, state["valid"])
        state["valid"] = out.state
        lm_loss(out, targets).item()

    return train_step, eval_step, model


def _run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(cfg["threads"])
    device = cfg.get("device", "cpu")
    train_step, eval_step, model = setup(cfg)
    if cfg.get("profile"):  # one training step under torch.profiler after the warm-up: where the time goes
        from torch.profiler import ProfilerActivity, profile

        common.timed(train_step, cfg["warmup"], 0, device)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            train_step()
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40), flush=True)
        return {}
    train_times, warm = common.timed(train_step, cfg["warmup"], cfg["repeats"], device)
    eval_times, warm_eval = common.timed(eval_step, cfg["warmup"], cfg["repeats"], device)
    return _row(cfg, model, train_times, eval_times, warm + warm_eval)


def run_interleaved(cfgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every configuration in this process, one training step of each in turn, then one evaluation step of each
    in turn (after each one's warm-up). Peak memory is the process's."""
    torch.set_num_threads(cfgs[0]["threads"])
    runs = []
    for cfg in cfgs:
        train_step, eval_step, model = setup(cfg)
        with common.config_backend(cfg):
            warm = common.timed(train_step, cfg["warmup"], 0)[1] + common.timed(eval_step, cfg["warmup"], 0)[1]
        runs.append((cfg, train_step, eval_step, model, warm, [], []))
    for r in range(max(cfg["repeats"] for cfg in cfgs)):
        for k in (1, 2):
            for run in runs:
                if r < run[0]["repeats"]:
                    with common.config_backend(run[0]):
                        run[k + 4].extend(common.timed(run[k], 0, 1, run[0].get("device", "cpu"))[0])
    return [_row(cfg, model, tt, et, warm) for cfg, _, _, model, warm, tt, et in runs]


def _row(cfg: dict[str, Any], model: RNNModel, train_times: list[float], eval_times: list[float],
         warm: float) -> dict[str, Any]:
    device, T, B, Be = cfg.get("device", "cpu"), cfg["bptt"], cfg["batch"], cfg["eval_batch"]
    flops_train, flops_eval = common.retrain_flops(model, T, B, True), common.retrain_flops(model, T, Be, False)
    t_train, t_eval = common.median(train_times), common.median(eval_times)
    return {**{k: cfg[k] for k in ("cell", "size", "batch", "eval_batch", "impl")},
            "train_tokens_per_s": T * B / t_train, "eval_tokens_per_s": T * Be / t_eval,
            "train_seconds": train_times, "eval_seconds": eval_times, "warmup_seconds": warm,
            "train_flop_per_s": flops_train / t_train, "eval_flop_per_s": flops_eval / t_eval,
            "flops_per_train_step": flops_train, "peak_rss_gb": common.peak_rss_gb(),
            "peak_device_gb": common.peak_device_gb(device), "threads": cfg["threads"],
            "params": sum(p.numel() for p in model.parameters()),
            "backend": "autograd" if cfg["impl"] == "reference" else cfg.get("backend") or kernels.get_backend()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=",".join(GENOTYPES), help="comma-separated: DARTS_V2, ESS_M3, lstm")
    p.add_argument("--sizes", default="300,850", help="comma-separated emb = hid sizes")
    p.add_argument("--match", default=None, metavar="NAME@SIZE",
                   help="instead of --sizes: each cell at the hidden size of NAME@SIZE's parameter count")
    p.add_argument("--interleave", action="store_true", help="all configurations in one process, in turn")
    p.add_argument("--profile", default=None, metavar="CELL", help="profile one fast training step of CELL, exit")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=None, help="evaluation batch (default: --batch)")
    p.add_argument("--impls", default="fast,reference")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--ntoken", type=int, default=10_000, help="vocabulary when no corpus is found")
    p.add_argument("--data-dir", default=os.environ.get("ESS_DATA_DIR"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--inline", action="store_true", help="time in this process (no per-configuration memory)")
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, one repeat, inline: a few seconds")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    if args.smoke_test:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.inline, args.data_dir = True, None
    if args.eval_batch is None:
        args.eval_batch = args.batch
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_config(json.loads(args.child))), flush=True)
        return 0
    torch.set_num_threads(args.threads)
    cells = args.cells.split(",")
    impls = args.impls.split(",")
    info = common.machine(args.threads, args.device)
    common.corpus_info(args, info)
    # groups of cells compared with each other (the LSTM of the group is their baseline): one per size, or the
    # cells matched to one parameter count
    groups = ({args.match: matched_sizes(args.match, cells, args.ntoken)} if args.match else
              {str(size): {cell: size for cell in cells} for size in args.sizes})
    if args.profile:
        size = next(iter(groups.values()))[args.profile]
        run_config(dict(cell=args.profile, size=size, batch=args.batch, eval_batch=args.eval_batch,
                        impl="torch" if args.profile == "lstm" else "fast", bptt=args.bptt, ntoken=args.ntoken,
                        data_dir=args.data_dir, threads=args.threads, device=args.device, seed=args.seed,
                        warmup=args.warmup, repeats=0, profile=True))
        return 0
    rate_before = common.matmul_rate(256 if args.smoke_test else 2048, device=args.device)

    checks, failed = {}, []
    for sizes in groups.values():
        for cell, size in sizes.items():
            diffs, bad = check_equivalence(cell, size, argparse.Namespace(**{**vars(args), "size": size}))
            if diffs:
                checks[f"{cell}/{size}"] = diffs
            if bad:
                failed.append((cell, size, bad))
    if not common.report_equivalence("retrain_step", checks, failed):
        return 1

    configs = []
    for group, sizes in groups.items():
        for cell, size in sizes.items():
            for impl in (["torch"] if cell == "lstm" else impls):
                configs.append(dict(cell=cell, size=size, group=group, batch=args.batch, eval_batch=args.eval_batch,
                                    impl=impl, bptt=args.bptt, ntoken=args.ntoken, data_dir=args.data_dir,
                                    threads=args.threads, device=args.device, seed=args.seed, warmup=args.warmup,
                                    repeats=args.ref_repeats if impl == "reference" else args.repeats))
    rows = run_interleaved(configs) if args.interleave else [
        run_config(cfg) if args.inline else common.run_child(__file__, cfg) for cfg in configs]
    for cfg, row in zip(configs, rows):
        row["group"] = cfg["group"]
        print(f"# {cfg['cell']} {cfg['size']} {cfg['impl']}: train {row['train_tokens_per_s']:.0f} tok/s, eval "
              f"{row['eval_tokens_per_s']:.0f} tok/s, peak {row['peak_rss_gb']:.2f} GB", flush=True)
    rate_after = common.matmul_rate(256 if args.smoke_test else 2048, device=args.device)
    rate = max(rate_before, rate_after)

    lstm = {r["group"]: r for r in rows if r["cell"] == "lstm"}
    refs = {(r["cell"], r["group"]): r for r in rows if r["impl"] == "reference"}
    table = []
    for r in rows:
        if r["impl"] == "reference":
            continue
        ref, base = refs.get((r["cell"], r["group"])), lstm.get(r["group"])
        r["train_fraction_of_matmul"] = r["train_flop_per_s"] / rate
        r["eval_fraction_of_matmul"] = r["eval_flop_per_s"] / rate
        r["train_vs_lstm"] = r["train_tokens_per_s"] / base["train_tokens_per_s"] if base else None
        r["train_speedup_vs_reference"] = r["train_tokens_per_s"] / ref["train_tokens_per_s"] if ref else None
        table.append([r["cell"], r["size"], f"{r['params'] / 1e6:.2f}M", r["impl"], f"{r['train_tokens_per_s']:,.0f}",
                      f"{ref['train_tokens_per_s']:,.0f}" if ref else "-",
                      f"{r['train_flop_per_s'] / 1e9:.1f}", f"{100 * r['train_fraction_of_matmul']:.0f}%",
                      f"{r['train_vs_lstm']:.2f}" if base else "-", f"{r['eval_tokens_per_s']:,.0f}",
                      f"{ref['eval_tokens_per_s']:,.0f}" if ref else "-",
                      f"{100 * r['eval_fraction_of_matmul']:.0f}%", f"{r['peak_rss_gb']:.2f}"])
    common.print_table(
        f"Retraining step and evaluation, batch {args.batch} (eval {args.eval_batch}), BPTT {args.bptt}, "
        f"{args.threads} threads{f', sized as {args.match}' if args.match else ''}; matmul {rate / 1e9:.0f} "
        f"GFLOP/s ({info.get('cpu', '?')})",
        ["cell", "size", "params", "impl", "train tok/s", "ref train tok/s", "train GFLOP/s", "of matmul", "vs LSTM",
         "eval tok/s", "ref eval tok/s", "eval of matmul", "peak GB"], table)
    print(json.dumps({"bench": "retrain_step", "equivalence": "passed", "tolerance": common.TOLERANCE,
                      "checks": checks, "machine": info, "matmul_flop_per_s": rate,
                      "matmul_flop_per_s_before_after": [rate_before, rate_after], "bptt": args.bptt, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
