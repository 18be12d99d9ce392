"""Tokens/s, peak memory and achieved FLOP/s of the full search iteration, fast path vs plain reference.

One iteration is exactly :meth:`ess.search.Searcher.train_epoch`'s: the architecture step (first or second
order, :class:`ess.search.architect.Architect`) on a validation batch, then the weight step (SGD, clipping) on a
training batch, each ``bptt x batch`` tokens; tokens/s counts the training tokens. ``fast`` is the default
implementation (fused kernels, compiled where they pay), ``reference`` the plain edge-by-edge oracle
(``implementation='reference'`` and the ``autograd`` kernel backend for the discrete cells).

Before timing, fast and reference are held to the same outputs and gradients (max abs difference
``<= 1e-5`` in float32) for each mode and batch size, on the architecture step's pass (weights frozen),
the weight step's pass (architecture frozen) and the second order's pass at the look-ahead weights (both):
on a mismatch the script prints it and exits 1 without timing. Each configuration is then timed in a fresh
process (so its peak resident memory is its own). The matmul rate of the machine (``torch.matmul`` on
square matrices) is measured in the same run, before and after; the larger is the reference.

    ESS_DATA_DIR=../shared/data python bench/search_step.py                       # full table
    python bench/search_step.py --batch 64 --modes intra --orders 1 --repeats 3
    ESS_DATA_DIR=../shared/data python bench/search_step.py --size 64 --batch 32 --threads 1 --orders 1 --rounds 3
    python bench/search_step.py --smoke-test                                       # seconds, for CI

Modes that search inter cells are timed with every inter-cell normalisation of ``--norms`` (default ``none`` and
``op``, the search's default); the table gives each one's tokens/s against ``none``'s. ``--rounds R`` times
every configuration R times, in turn (A B C, A B C, ...), and reports the median of the rounds: on a shared
machine the ratios between configurations then come from interleaved measurements; ``--interleave`` goes
further: every configuration in one process, one iteration of each in turn.

Prints one table and one JSON line (``{"bench": "search_step", ...}``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ess import kernels  # noqa: E402
from ess.models.lm import lm_loss, regularisation  # noqa: E402
from ess.search.architect import Architect, requires_grad  # noqa: E402
from ess.supernet import MODES, SearchModel, build_search_model  # noqa: E402

# The search defaults (ess.search.SearchConfig)
LR, CLIP, WDECAY, ARCH_LR, ARCH_WDECAY, ALPHA, BETA = 20.0, 0.25, 5e-7, 3e-3, 1e-3, 0.0, 1e-3
SMOKE = dict(size=16, steps=3, n_inter=2, m=2, ntoken=50, bptt=5, batches=[4], warmup=1, repeats=1, ref_repeats=1)


def build(mode: str, impl: str, size: int, ntoken: int, steps: int, n_inter: int, m: int, seed: int,
          norm: str = "none") -> SearchModel:
    torch.manual_seed(seed)
    return build_search_model(ntoken, mode=mode, emsize=size, nhid=size, steps=steps, n_inter=n_inter, m=m,
                              implementation=impl, inter_norm=norm)


def norms_of(mode: str, norms: list[str]) -> list[str]:
    """The inter-cell norms timed in ``mode``: all of ``norms`` where inter cells are searched, else ``none``."""
    return norms if MODES[mode].searches_inter else ["none"]


# --------------------------------------------------------------------------------------------------
# Equivalence


def _pass(model: SearchModel, batch, state, grads: str) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    tokens, targets = batch
    weights, arch = model.weight_parameters(), model.arch_parameters()
    with requires_grad(weights, grads in ("weights", "both")), requires_grad(arch, grads in ("arch", "both")):
        torch.manual_seed(99)  # the same dropout masks for both implementations
        out = model(tokens, state)
        loss = lm_loss(out, targets) + regularisation(out, ALPHA, BETA)
        params = [p for p in model.parameters() if p.requires_grad]
        g = torch.autograd.grad(loss, params)
    named = {id(p): gi for p, gi in zip(params, g)}
    outputs = [out.logits, loss, *out.state, *model.buffers()]
    return outputs, [named.get(id(p)) for p in model.parameters()]


def check_equivalence(mode: str, batch: int, args: argparse.Namespace, norm: str = "none"
                      ) -> tuple[dict[str, float], list[str]]:
    """Fast vs reference at the benchmark's size and batch, on the three passes an iteration runs.

    * ``f32.step``: float32, one time step: max abs difference of the outputs (logits, loss, state, batch-norm
      statistics) and of every gradient ``<= TOLERANCE``; with an inter-cell norm, which divides by row deviations
      (sigmoid's are small) so that float32 itself is not that close, as ``f32.bptt`` below on the one step;
    * ``f64.bptt``: float64, the first ``--check-bptt`` steps of the segment (default 10, 0: all of it): the
      same ``<= TOLERANCE`` (exact arithmetic, up to rounding: ~1e-12 in practice);
    * ``f32.bptt``: float32, the same steps: over many recurrent steps (batch norm in each) no two
      float32 orderings of the sums agree to 1e-5, the reference's own float32 error is ~1e-4. The fast path's
      distance to the float64 reference must not exceed twice the float32 reference's (+ ``TOLERANCE``).

    Returns the differences and the failed checks.
    """
    fast = build(mode, "fast", args.size, args.ntoken, args.steps, args.n_inter, args.m, args.seed, norm)
    models = {"fast32": fast}
    for name, impl, dtype in (("ref32", "reference", torch.float32), ("fast64", "fast", torch.float64),
                              ("ref64", "reference", torch.float64)):
        models[name] = build(mode, impl, args.size, args.ntoken, args.steps, args.n_inter, args.m, args.seed,
                             norm).to(dtype)
        models[name].load_state_dict(fast.state_dict())
    for model in models.values():
        model.train()
        with torch.no_grad():  # an architecture away from uniform, as after some search
            for p in model.arch_parameters():
                p.copy_(torch.linspace(-1, 1, p.numel()).view_as(p).roll(1))
    (x, y), = common.batches(args.ntoken, args.bptt, batch, args.data_dir, "valid")[0]
    buffers = {name: {k: v.clone() for k, v in model.named_buffers()} for name, model in models.items()}

    def run(name: str, T: int, grads: str):
        model = models[name]
        model.load_state_dict(buffers[name], strict=False)  # every pass from the same batch-norm statistics
        with kernels.backend("autograd" if name.startswith("ref") else kernels.get_backend()):
            return _pass(model, (x[:T], y[:T]), model.init_state(batch), grads)

    diffs: dict[str, float] = {}
    failed: list[str] = []
    T_check = min(args.check_bptt or args.bptt, args.bptt)
    pairs = {"f64.bptt": ("fast64", "ref64", T_check)}
    if norm == "none":
        pairs["f32.step"] = ("fast32", "ref32", 1)
    for grads in ("arch", "weights", "both"):
        if norm != "none":
            _against_float64(diffs, failed, run, f"f32.step.{grads}", 1, grads)
        for key, (a, b, T) in pairs.items():
            (out_a, g_a), (out_b, g_b) = run(a, T, grads), run(b, T, grads)
            for part, u, v in (("outputs", out_a, out_b), ("gradients", g_a, g_b)):
                diffs[f"{key}.{grads}.{part}"] = d = common.max_abs_diff(u, v)
                if not d <= common.TOLERANCE:
                    failed.append(f"{key}.{grads}.{part}")
    _against_float64(diffs, failed, run, "f32.bptt", T_check, "both")
    return diffs, failed


def _against_float64(diffs: dict[str, float], failed: list[str], run: Any, key: str, T: int, grads: str) -> None:
    """The fast path in float32 no further from the float64 reference than twice the float32 reference is (+
    ``TOLERANCE``), over ``T`` steps."""
    exact = run("ref64", T, grads)
    for name in ("fast32", "ref32"):
        out, g = run(name, T, grads)
        diffs[f"{key}.{name}_vs_ref64.outputs"] = common.max_abs_diff(out, exact[0])
        diffs[f"{key}.{name}_vs_ref64.gradients"] = common.max_abs_diff(g, exact[1])
    for part in ("outputs", "gradients"):
        ours, theirs = diffs[f"{key}.fast32_vs_ref64.{part}"], diffs[f"{key}.ref32_vs_ref64.{part}"]
        if not ours <= 2 * theirs + common.TOLERANCE:
            failed.append(f"{key}.{part}")


# --------------------------------------------------------------------------------------------------
# Timing (one configuration, in a child process)


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    with common.config_backend(cfg):
        return _run_config(cfg)


def setup(cfg: dict[str, Any]) -> tuple[Callable[[], None], SearchModel]:
    """One configuration's model and a function running one search iteration of it."""
    device = cfg.get("device", "cpu")
    impl, T, B = cfg["impl"], cfg["bptt"], cfg["batch"]
    model = build(cfg["mode"], impl, cfg["size"], cfg["ntoken"], cfg["steps"], cfg["n_inter"], cfg["m"],
                  cfg["seed"], cfg.get("norm", "none")).to(device)
    model.train()
    architect = Architect(model, ARCH_LR, ARCH_WDECAY, unrolled=cfg["order"] == 2, alpha=ALPHA, beta=BETA)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=LR, weight_decay=WDECAY)
    weights, arch = model.weight_parameters(), model.arch_parameters()
    train, valid = ([(x.to(device), y.to(device)) for x, y in common.batches(
        cfg["ntoken"], T, B, cfg["data_dir"], split, 4)[0]] for split in ("train", "valid"))
    states = {"train": model.init_state(B), "valid": model.init_state(B), "k": 0}

    def iteration() -> None:  # ess.search.Searcher.train_epoch, one batch (seq_len = bptt: lr unscaled)
        k = states["k"] % len(train)
        states["k"] += 1
        data, targets = train[k]
        state = states["train"]
        states["valid"] = architect.step((data, targets), valid[k], state, states["valid"], network_lr=LR,
                                         network_weight_decay=WDECAY, network_clip=CLIP)
        with requires_grad(arch, False):
            out = model(data, state)
            raw_loss = lm_loss(out, targets)
            loss = raw_loss + regularisation(out, ALPHA, BETA)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        nn.utils.clip_grad_norm_(weights, CLIP)
        optimizer.step()
        states["train"] = tuple(s.detach() for s in out.state)
        raw_loss.item()

    return iteration, model


def _row(cfg: dict[str, Any], model: SearchModel, times: list[float], warm: float) -> dict[str, Any]:
    T, B, device = cfg["bptt"], cfg["batch"], cfg.get("device", "cpu")
    flops = common.search_iteration_flops(model, T, B, cfg["order"])
    med = common.median(times)
    return {**{k: cfg[k] for k in ("mode", "order", "batch", "impl")}, "norm": cfg.get("norm", "none"),
            "threads": cfg["threads"], "size": cfg["size"], "tokens_per_s": T * B / med,
            "tokens_per_s_best": T * B / min(times), "seconds": times, "warmup_seconds": warm,
            "flops_per_iteration": flops, "flop_per_s": flops / med, "peak_rss_gb": common.peak_rss_gb(),
            "peak_device_gb": common.peak_device_gb(device),
            "backend": "autograd" if cfg["impl"] == "reference" else cfg.get("backend") or kernels.get_backend()}


def _run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(cfg["threads"])
    device = cfg.get("device", "cpu")
    iteration, model = setup(cfg)
    if cfg.get("profile"):  # one iteration under torch.profiler after the warm-up: where the time goes
        from torch.profiler import ProfilerActivity, profile

        common.timed(iteration, cfg["warmup"], 0, device)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            iteration()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40),
              flush=True)
        return {}
    times, warm = common.timed(iteration, cfg["warmup"], cfg["repeats"], device)
    return _row(cfg, model, times, warm)


def run_interleaved(cfgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every configuration in this process, one iteration of each in turn (after each one's warm-up): their
    ratios then come from measurements taken seconds apart. Peak memory is the process's, not each one's."""
    torch.set_num_threads(cfgs[0]["threads"])
    runs = []
    for cfg in cfgs:
        iteration, model = setup(cfg)
        with common.config_backend(cfg):
            warm = common.timed(iteration, cfg["warmup"], 0, cfg.get("device", "cpu"))[1]
        runs.append((cfg, iteration, model, warm, []))
    for r in range(max(cfg["repeats"] for cfg in cfgs)):
        for cfg, iteration, _, _, times in runs:
            if r < cfg["repeats"]:
                with common.config_backend(cfg):
                    times += common.timed(iteration, 0, 1, cfg.get("device", "cpu"))[0]
    return [_row(cfg, model, times, warm) for cfg, _, model, warm, times in runs]


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's row over its rounds: the round of median tokens/s, with every round's tokens/s."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["tokens_per_s_rounds"] = [r["tokens_per_s"] for r in runs]
    return row


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="64,256", help="comma-separated batch sizes")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated search modes")
    p.add_argument("--orders", "--order", dest="orders", default="1,2", help="1 (first order), 2 (second), or both")
    p.add_argument("--impls", default="fast,reference", help="fast, reference or both")
    p.add_argument("--norms", default="none,op", help="inter-cell norms timed in inter and joint modes")
    p.add_argument("--rounds", type=int, default=1, help="time every configuration this many times, in turn")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations of the fast path")
    p.add_argument("--ref-repeats", type=int, default=2, help="timed iterations of the reference")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (the first compiles)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=300, help="emb = hid")
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--check-bptt", type=int, default=10,
                   help="time steps of the segment the recurrent equivalence checks run over (0: all of it)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--n-inter", type=int, default=3)
    p.add_argument("--m", type=int, default=3)
    p.add_argument("--ntoken", type=int, default=10_000, help="vocabulary when no corpus is found")
    p.add_argument("--data-dir", default=os.environ.get("ESS_DATA_DIR"), help="PTB here gives real batches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--profile", default=None, metavar="MODE:BATCH:ORDER[:NORM]",
                   help="profile one fast iteration of this configuration (e.g. intra:64:1, joint:32:1:op) and exit")
    p.add_argument("--inline", action="store_true", help="time in this process (no per-configuration memory)")
    p.add_argument("--interleave", action="store_true",
                   help="all configurations in this process, one iteration of each in turn (no per-configuration "
                        "memory): for ratios on a busy machine")
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, one repeat, inline: a few seconds")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke_test:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.inline, args.data_dir = True, None
    else:
        args.batches = [int(b) for b in args.batch.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_config(json.loads(args.child))), flush=True)
        return 0
    torch.set_num_threads(args.threads)
    if args.profile:
        mode, batch, order, *norm = args.profile.split(":")
        run_config(dict(mode=mode, order=int(order), batch=int(batch), impl="fast", norm=norm[0] if norm else "none",
                        size=args.size, bptt=args.bptt,
                        steps=args.steps, n_inter=args.n_inter, m=args.m, ntoken=args.ntoken, data_dir=None,
                        threads=args.threads, device=args.device, seed=args.seed, warmup=args.warmup, repeats=0,
                        profile=True))
        return 0
    modes = args.modes.split(",")
    orders = [int(o) for o in args.orders.split(",")]
    impls = args.impls.split(",")
    norms = args.norms.split(",")
    info = common.machine(args.threads, args.device)
    common.corpus_info(args, info)
    rate_before = common.matmul_rate(256 if args.smoke_test else 2048, device=args.device)

    # 1. equivalence, before any timing
    checks, failed = {}, []
    for mode in modes:
        for norm in norms_of(mode, norms):
            for batch in args.batches:
                diffs, bad = check_equivalence(mode, batch, args, norm)
                checks[f"{mode}/{batch}" + (f"/{norm}" if norm != "none" else "")] = diffs
                if bad:
                    failed.append((mode, norm, batch, bad))
    if not common.report_equivalence("search_step", checks, failed):
        return 1

    # 2. timing, each configuration in its own process; with --rounds, every configuration once per round
    configs = []
    for batch in args.batches:
        for mode in modes:
            for order in orders:
                for norm in norms_of(mode, norms):
                    for impl in impls:
                        configs.append(dict(
                            mode=mode, order=order, batch=batch, impl=impl, norm=norm, size=args.size, bptt=args.bptt,
                            steps=args.steps, n_inter=args.n_inter, m=args.m, ntoken=args.ntoken,
                            data_dir=args.data_dir, threads=args.threads, device=args.device, seed=args.seed,
                            warmup=args.warmup, repeats=args.repeats if impl == "fast" else args.ref_repeats))
    runs: list[list[dict[str, Any]]] = [[] for _ in configs]
    for _ in range(args.rounds):
        done_now = run_interleaved(configs) if args.interleave else [
            run_config(cfg) if args.inline else common.run_child(__file__, cfg) for cfg in configs]
        for cfg, row, done in zip(configs, done_now, runs):
            done.append(row)
            print(f"# {cfg['mode']} order {cfg['order']} batch {cfg['batch']} {cfg['norm']} {cfg['impl']}: "
                  f"{row['tokens_per_s']:.0f} tok/s, peak {row['peak_rss_gb']:.2f} GB", flush=True)
    rows = [_median_row(done) for done in runs]
    rate_after = common.matmul_rate(256 if args.smoke_test else 2048, device=args.device)
    rate = max(rate_before, rate_after)

    # 3. the table
    by_key = {(r["mode"], r["order"], r["batch"], r["norm"], r["impl"]): r for r in rows}
    intra_per_token = {(r["order"], r["batch"]): 1 / r["tokens_per_s"] for r in rows
                       if r["mode"] == "intra" and r["impl"] == "fast"}
    table = []
    for r in rows:
        if r["impl"] != "fast":
            continue
        ref = by_key.get((r["mode"], r["order"], r["batch"], r["norm"], "reference"))
        unnormed = by_key.get((r["mode"], r["order"], r["batch"], "none", "fast"))
        base = intra_per_token.get((r["order"], r["batch"]))
        r["fraction_of_matmul"] = r["flop_per_s"] / rate
        r["speedup_vs_reference"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
        r["cost_vs_intra"] = (1 / r["tokens_per_s"]) / base if base else None
        r["vs_norm_none"] = r["tokens_per_s"] / unnormed["tokens_per_s"] if unnormed else None
        table.append([r["mode"], r["norm"], r["order"], r["batch"], f"{r['tokens_per_s']:,.0f}",
                      f"{ref['tokens_per_s']:,.0f}" if ref else "-",
                      f"{r['speedup_vs_reference']:.2f}x" if ref else "-",
                      f"{r['flop_per_s'] / 1e9:.1f}", f"{100 * r['fraction_of_matmul']:.0f}%",
                      f"{r['cost_vs_intra']:.2f}" if base else "-",
                      f"{r['vs_norm_none']:.2f}" if unnormed else "-",
                      f"{r['peak_rss_gb']:.2f}", f"{ref['peak_rss_gb']:.2f}" if ref else "-"])
    common.print_table(
        f"Search iteration (arch step + weight step), emb = hid = {args.size}, BPTT {args.bptt}, "
        f"{args.threads} threads, median of {args.rounds} round(s); matmul {rate / 1e9:.0f} GFLOP/s "
        f"({info.get('cpu', '?')})",
        ["mode", "inter norm", "order", "batch", "fast tok/s", "ref tok/s", "speed-up", "fast GFLOP/s", "of matmul",
         "cost vs intra", "vs norm none", "fast peak GB", "ref peak GB"], table)
    print(json.dumps({"bench": "search_step", "equivalence": "passed", "tolerance": common.TOLERANCE,
                      "checks": checks, "machine": info, "matmul_flop_per_s": rate,
                      "matmul_flop_per_s_before_after": [rate_before, rate_after], "size": args.size,
                      "bptt": args.bptt, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
