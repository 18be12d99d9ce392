"""K seeds of one configuration in one process (a bundle) against K separate processes: aggregate tokens/s.

The prototype (:class:`Bundle`): the K models' parameters and buffers stacked on a leading dimension
(``torch.func.stack_module_state``), the model's own plain autograd code mapped over it (``torch.func.vmap`` of
``functional_call``: every product becomes a batched matmul), one data order for the bundle, each seed its own
initialisation (its model built under its seed), dropout masks (drawn per seed, outside the map, and applied by
the model's dropout functions in their call order) and architecture parameters. Its optimisers are per seed by
construction (SGD, Adam and weight decay are elementwise); gradient clipping takes each seed's own norm. A search
iteration is :meth:`ess.search.Searcher.train_epoch`'s, first order: Adam on the architecture from a validation
batch, then SGD on the weights; a retrain step is :meth:`ess.train.Trainer.train_epoch`'s.

Compared, on the same cores (``--cores``, default the first; each process one thread):

* ``bundle``: the prototype, one process, K seeds;
* ``processes``: K processes of the real single-seed path (fused kernels), started together (a barrier), the
  bundle's tokens over the time from the first start to the last end;
* ``wide``: one single-seed process at batch K x B: the same arithmetic as K seeds with the overhead of one
  model (an upper bound for a bundle that kept the fused kernels).

Before timing, one step of the bundle is held to K single models with the same data (float64, dropout off): every
seed's loss and gradients within 1e-10.

    ESS_DATA_DIR=../shared/data python bench/seed_bundle.py                  # K = 1, 2, 4, 8; 64 and 128 units
    python bench/seed_bundle.py --kinds retrain --sizes 128 --ks 1,4 --repeats 2

Prints one table and one JSON line (``{"bench": "seed_bundle", ...}``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import retrain_step  # noqa: E402
import search_step  # noqa: E402

import ess.models.cells as cells_module  # noqa: E402
import ess.models.lm as lm_module  # noqa: E402
from ess import kernels  # noqa: E402
from ess.models.lm import lm_loss, regularisation  # noqa: E402

SEARCH_LR, RETRAIN_LR, CLIP = 10.0, 20.0, 0.25  # cpu-small search lr; retrain lr; both clip
MASK_ORDER = ("dropoute", "dropouti", "dropoutx", "dropouth", "dropout")  # the order the forward draws them


def build(kind: str, size: int, ntoken: int, seed: int, dropouts: bool = True) -> nn.Module:
    """One seed's model: the joint supernet (``inter_norm`` op, the search's default) or DARTS_V2 to retrain."""
    if kind == "search":
        extra = {} if dropouts else dict(dropout=0.0, dropouth=0.0, dropoutx=0.0, dropouti=0.0, dropoute=0.0)
        return search_step.build("joint", "fast", size, ntoken, 8, 3, 3, seed, "op") if dropouts else (
            _search_model(size, ntoken, seed, extra))
    model = retrain_step.build("DARTS_V2", size, ntoken, seed)
    if not dropouts:
        for obj in (model, model.cell):
            for name in MASK_ORDER:
                if hasattr(obj, name):
                    setattr(obj, name, 0.0)
    return model


def _search_model(size: int, ntoken: int, seed: int, extra: dict[str, float]) -> nn.Module:
    from ess.supernet import build_search_model

    torch.manual_seed(seed)
    return build_search_model(ntoken, mode="joint", emsize=size, nhid=size, inter_norm="op", **extra)


# --------------------------------------------------------------------------------------------------
# The bundle


@contextlib.contextmanager
def given_masks(masks: list[Tensor]) -> Iterator[None]:
    """The model's dropout functions apply ``masks`` in their call order instead of drawing (inside ``vmap``
    each is a seed's slice of a mask drawn for every seed)."""
    queue = iter(masks)

    def embedded(embed: nn.Embedding, words: Tensor, dropout: float, training: bool) -> Tensor:
        emb = embed(words)
        return emb if not training or dropout == 0 else emb * next(queue)[words]

    def locked(x: Tensor, dropout: float, training: bool) -> Tensor:
        return x if not training or dropout == 0 else x * next(queue)

    def variational(batch: int, dim: int, dropout: float, like: Tensor) -> Tensor:
        return next(queue)

    saved = lm_module.embedded_dropout, lm_module.locked_dropout, cells_module.variational_mask
    lm_module.embedded_dropout, lm_module.locked_dropout, cells_module.variational_mask = embedded, locked, variational
    try:
        yield
    finally:
        lm_module.embedded_dropout, lm_module.locked_dropout, cells_module.variational_mask = saved


class Bundle:
    """K models of one configuration as one: stacked parameters, the model's plain code mapped over them."""

    def __init__(self, models: list[nn.Module]):
        self.K, self.base = len(models), copy.deepcopy(models[0])
        params, buffers = stack_module_state(models)
        self.params = params
        self.shared = {n for n in buffers if n.rsplit(".", 1)[-1].startswith("_dropped")}  # op masks: not per seed
        self.buffers = {n: b[0] if n in self.shared else b for n, b in buffers.items()}
        self.arch = [p for n, p in params.items() if n.startswith("alphas.")]
        self.weights = [p for n, p in params.items() if not n.startswith("alphas.")]
        self.rates = {name: getattr(obj, name) for name in MASK_ORDER
                      for obj in (self.base, self.base.cell) if getattr(obj, name, 0.0)}
        in_dims = (0, {n: None if n in self.shared else 0 for n in self.buffers}, 0, None, None, 0)
        self.mapped = vmap(self._one, in_dims=in_dims)

    def _one(self, params, buffers, state, tokens, targets, masks) -> tuple[Tensor, tuple[Tensor, ...]]:
        with given_masks(list(masks)):
            out = functional_call(self.base, (params, buffers), (tokens, state))
        return lm_loss(out, targets) + regularisation(out, 0.0, 1e-3), tuple(out.state)

    def masks(self, B: int, training: bool) -> tuple[Tensor, ...]:
        """Every seed's dropout masks for one forward pass, in the order the forward applies them."""
        if not training:
            return ()
        V, d = self.base.ntoken, self.base.nhid
        shapes = {"dropoute": (V, 1), "dropouti": (1, B, d), "dropoutx": (B, d), "dropouth": (B, d),
                  "dropout": (1, B, d)}
        w = self.weights[0]
        return tuple(torch.empty(self.K, *shapes[name], dtype=w.dtype).bernoulli_(1 - rate).div_(1 - rate)
                     for name, rate in self.rates.items())

    def init_state(self, B: int) -> tuple[Tensor, ...]:
        return tuple(torch.stack([s] * self.K) for s in self.base.init_state(B))

    def loss(self, state, tokens, targets, training: bool = True) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Every seed's loss ``[K]`` and next state."""
        self.base.train(training)
        with kernels.backend("autograd"):
            return self.mapped(self.params, self.buffers, state, tokens, targets, self.masks(tokens.size(1), training))


def clip_per_seed(grads: list[Tensor], clip: float) -> None:
    """``clip_grad_norm_`` with each seed's own norm (dim 0 is the seed)."""
    norms = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()
    scale = (clip / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))


def bundle_iteration(kind: str, bundle: Bundle, data: dict[str, Any]) -> Callable[[], None]:
    """One search iteration (first order) or retrain step of every seed at once."""
    states = {"train": bundle.init_state(data["B"]), "valid": bundle.init_state(data["B"]), "k": 0}
    adam = torch.optim.Adam(bundle.arch, lr=3e-3, betas=(0.9, 0.999), weight_decay=1e-3) if bundle.arch else None
    lr, wd = (SEARCH_LR, 5e-7) if kind == "search" else (RETRAIN_LR, 8e-7)

    def iteration() -> None:
        k = states["k"] % len(data["train"])
        states["k"] += 1
        x, y = data["train"][k]
        if adam is not None:
            vx, vy = data["valid"][k]
            loss, vstate = bundle.loss(states["valid"], vx, vy)
            grads = torch.autograd.grad(loss.sum(), bundle.arch)
            for p, g in zip(bundle.arch, grads):
                p.grad = g
            adam.step()
            states["valid"] = tuple(s.detach() for s in vstate)
        loss, state = bundle.loss(states["train"], x, y)
        grads = list(torch.autograd.grad(loss.sum(), bundle.weights))
        clip_per_seed(grads, CLIP)
        with torch.no_grad():
            for p, g in zip(bundle.weights, grads):
                p.add_(g + wd * p, alpha=-lr)
        states["train"] = tuple(s.detach() for s in state)

    return iteration


def check_equivalence(kind: str, size: int, K: int, ntoken: int, T: int, B: int) -> dict[str, float]:
    """The bundle's losses and gradients against K single models (float64, dropout off, plain code)."""
    models = [build(kind, size, ntoken, seed, dropouts=False).double() for seed in range(K)]
    bundle = Bundle(models)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, ntoken, (T, B), generator=g), torch.randint(0, ntoken, (T, B), generator=g)
    loss, _ = bundle.loss(bundle.init_state(B), x, y)
    wrt = list(bundle.params.values())
    grads = torch.autograd.grad(loss.sum(), wrt)
    worst = {"loss": 0.0, "gradients": 0.0}
    with kernels.backend("autograd"):
        for k, model in enumerate(models):
            out = model(x, model.init_state(B))
            single = lm_loss(out, y) + regularisation(out, 0.0, 1e-3)
            single_grads = torch.autograd.grad(single, list(model.parameters()))
            worst["loss"] = max(worst["loss"], abs(single.item() - loss[k].item()))
            worst["gradients"] = max(worst["gradients"], common.max_abs_diff([gr[k] for gr in grads], single_grads))
    return worst


# --------------------------------------------------------------------------------------------------
# Timing, each variant in fresh processes pinned to the same cores


def _data(cfg: dict[str, Any], B: int) -> dict[str, Any]:
    train, valid = (common.batches(cfg["ntoken"], cfg["bptt"], B, cfg["data_dir"], split, 4)[0]
                    for split in ("train", "valid"))
    return {"train": train, "valid": valid, "B": B}


def _single_iteration(cfg: dict[str, Any], B: int) -> Callable[[], None]:
    """The real single-seed path (fused kernels) at batch ``B``."""
    base = dict(size=cfg["size"], bptt=cfg["bptt"], ntoken=cfg["ntoken"], data_dir=cfg["data_dir"], threads=1,
                seed=cfg["seed"], batch=B)
    if cfg["kind"] == "search":
        return search_step.setup({**base, "mode": "joint", "impl": "fast", "norm": "op", "order": 1, "steps": 8,
                                  "n_inter": 3, "m": 3})[0]
    return retrain_step.setup({**base, "cell": "DARTS_V2", "impl": "fast", "eval_batch": B})[0]


def _child(cfg: dict[str, Any], variant: str, barrier: Any, results: Any) -> None:
    os.sched_setaffinity(0, cfg["cores"])
    torch.set_num_threads(1)
    K, B = cfg["K"], cfg["batch"]
    if variant == "bundle":
        models = [build(cfg["kind"], cfg["size"], cfg["ntoken"], cfg["seed"] + k) for k in range(K)]
        iteration = bundle_iteration(cfg["kind"], Bundle(models), _data(cfg, B))
    else:
        iteration = _single_iteration(cfg, B * K if variant == "wide" else B)
    for _ in range(cfg["warmup"]):
        iteration()
    barrier.wait()
    start = time.time()
    for _ in range(cfg["repeats"]):
        iteration()
    results.put((start, time.time(), common.peak_rss_gb()))


def run_variant(cfg: dict[str, Any], variant: str) -> dict[str, Any]:
    """Aggregate tokens/s of one variant: every process's timed iterations, from the first start to the last end."""
    ctx = mp.get_context("spawn")
    n = cfg["K"] if variant == "processes" else 1
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(cfg, variant, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    spans = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{variant} {cfg} failed ({p.exitcode})")
    seconds = max(s[1] for s in spans) - min(s[0] for s in spans)
    tokens = cfg["K"] * cfg["repeats"] * cfg["bptt"] * cfg["batch"]
    return {"variant": variant, "kind": cfg["kind"], "size": cfg["size"], "K": cfg["K"], "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_rss_gb": sum(s[2] for s in spans)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", default="search,retrain")
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--ks", default="1,2,4,8", help="seeds per bundle")
    p.add_argument("--variants", default="bundle,processes,wide")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cores", default="0", help="comma-separated CPUs every variant runs on")
    p.add_argument("--ntoken", type=int, default=10_000, help="vocabulary when no corpus is found")
    p.add_argument("--data-dir", default=os.environ.get("ESS_DATA_DIR"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, K = 1, 2: seconds")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.sizes, args.ks, args.bptt, args.batch, args.repeats, args.warmup = "8", "1,2", 4, 3, 1, 0
        args.ntoken, args.data_dir = 40, None
    info = common.machine(1)
    common.corpus_info(args, info)
    kinds, sizes = args.kinds.split(","), [int(s) for s in args.sizes.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    checks = {f"{kind}/{size}": check_equivalence(kind, size, 3, args.ntoken if args.smoke_test else 200, 4, 3)
              for kind in kinds for size in sizes}
    print("# equivalence, bundle of 3 vs 3 single models (float64, dropout off): " +
          ", ".join(f"{k} loss {v['loss']:.1e} gradients {v['gradients']:.1e}" for k, v in checks.items()))
    failed = [k for k, v in checks.items() if not max(v.values()) <= 1e-10]
    if failed:
        print(json.dumps({"bench": "seed_bundle", "equivalence": "failed", "checks": checks}))
        return 1
    cores = {int(c) for c in args.cores.split(",")}
    rows = []
    for kind in kinds:
        for size in sizes:
            for K in ks:
                cfg = dict(kind=kind, size=size, K=K, batch=args.batch, bptt=args.bptt, ntoken=args.ntoken,
                           data_dir=args.data_dir, seed=args.seed, repeats=args.repeats, warmup=args.warmup,
                           cores=cores)
                for variant in args.variants.split(","):
                    row = run_variant(cfg, variant)
                    rows.append(row)
                    print(f"# {kind} {size} K={K} {variant}: {row['tokens_per_s']:,.0f} tok/s", flush=True)
    by = {(r["kind"], r["size"], r["K"], r["variant"]): r for r in rows}
    table = []
    for kind in kinds:
        for size in sizes:
            for K in ks:
                got = {v: by.get((kind, size, K, v)) for v in ("bundle", "processes", "wide")}
                proc = got["processes"]
                table.append([kind, size, K] + [f"{got[v]['tokens_per_s']:,.0f}" if got[v] else "-" for v in got] + [
                    f"{got[v]['tokens_per_s'] / proc['tokens_per_s']:.2f}" if got[v] and proc else "-"
                    for v in ("bundle", "wide")])
    common.print_table(
        f"K seeds on {len(cores)} core(s), one thread per process, batch {args.batch} per seed, BPTT {args.bptt} "
        f"(aggregate tokens/s over the K seeds)",
        ["kind", "size", "K", "bundle tok/s", "K processes tok/s", "wide tok/s", "bundle / processes",
         "wide / processes"], table)
    print(json.dumps({"bench": "seed_bundle", "equivalence": "passed", "checks": checks, "machine": info,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
