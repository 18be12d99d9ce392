"""Wall time of one study cell (a search, then the retrain of a genotype) on two checkouts, run in turn.

A cell of the study (``tune_jobs`` ``--preset study-cpu``) is one trial of ``python -m ess.search --preset cpu-small``
(joint by default) and one of ``python -m ess.train --preset cpu-small --match-params DARTS_V2@128`` on the genotype
found, each on one thread. This script runs exactly those commands, through each checkout's own CLIs, at
``1/--scale`` of the preset's training and evaluation tokens (one epoch carrying the preset's tokens of all its
epochs divided by the scale, so that search and retrain keep their shares of the cell's time), alternating the
checkouts (A B, B A, A B, ...) so that both see the same machine. Every retrain trains the genotype found by the
first search of the run (the same model on both checkouts: only the code differs).

    ESS_DATA_DIR=../shared/data python bench/study_cell.py --old ../wt-old --new . --scale 20 --rounds 2

Prints one table and one JSON line (``{"bench": "study_cell", ...}``): per checkout and round, the seconds of the
search and of the retrain, and the ratio old / new of the cell's time (> 1: the new checkout is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# The study's presets (ess.search.config.PRESETS["cpu-small"], ess.train.PRESETS["cpu-small"], JOB_PRESETS
# "study-cpu"): epochs and the token limits a scaled cell divides.
SEARCH = dict(epochs=4, max_train_tokens=100_000, max_eval_tokens=20_000)
RETRAIN = dict(epochs=3, max_train_tokens=200_000, max_eval_tokens=20_000)
MATCH = "DARTS_V2@128"


def scaled(preset: dict[str, int], scale: float) -> dict[str, int]:
    """One epoch with ``1/scale`` of the preset's training and evaluation tokens over all its epochs."""
    return {"epochs": 1, "max_train_tokens": int(preset["epochs"] * preset["max_train_tokens"] / scale),
            "max_eval_tokens": int(preset["epochs"] * preset["max_eval_tokens"] / scale)}


def _flags(values: dict[str, Any]) -> list[str]:
    return [item for k, v in values.items() for item in (f"--{k.replace('_', '-')}", str(v))]


def timed_run(checkout: Path, module: str, args: list[str], threads: int) -> tuple[float, str]:
    """Seconds of ``python -m module args`` run from ``checkout`` (its own ``ess``), and its stdout."""
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{module} in {checkout} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def search(checkout: Path, args: argparse.Namespace, run_dir: Path) -> float:
    cmd = ["--preset", "cpu-small", "--mode", args.mode, "--threads", str(args.threads), "--seed", str(args.seed),
           "--run-dir", str(run_dir), "--no-draw", "--no-progress", *_flags(scaled(SEARCH, args.scale))]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return timed_run(checkout, "ess.search", cmd, args.threads)[0]


def retrain(checkout: Path, args: argparse.Namespace, genotype: Path, run_dir: Path) -> float:
    cmd = ["--preset", "cpu-small", "--match-params", MATCH, "--genotype", str(genotype), "--threads",
           str(args.threads), "--seed", str(args.seed), "--run-dir", str(run_dir), "--no-progress",
           *_flags(scaled(RETRAIN, args.scale))]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return timed_run(checkout, "ess.train", cmd, args.threads)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the checkout measured against (its ess/ and CLIs)")
    p.add_argument("--new", default=str(common.ROOT), help="the checkout measured (default: this one)")
    p.add_argument("--mode", default="joint", help="search mode of the cell")
    p.add_argument("--scale", type=float, default=20.0, help="run 1/scale of the preset's tokens")
    p.add_argument("--rounds", type=int, default=2, help="cells per checkout, alternating")
    p.add_argument("--threads", type=int, default=1, help="threads per trial (the study: 1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-dir", default=os.environ.get("ESS_DATA_DIR"))
    args = p.parse_args(argv)
    checkouts = {"old": Path(args.old).resolve(), "new": Path(args.new).resolve()}
    info = common.machine(args.threads)
    rows: list[dict[str, Any]] = []
    genotype: Path | None = None
    with tempfile.TemporaryDirectory(prefix="ess-study-cell-") as tmp:
        for r in range(args.rounds):
            for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                base = Path(tmp) / f"{name}-{r}"
                s = search(checkouts[name], args, base / "search")
                if genotype is None:
                    genotype = Path(tmp) / "genotype.json"
                    genotype.write_bytes((base / "search" / "genotype.json").read_bytes())
                t = retrain(checkouts[name], args, genotype, base / "train")
                rows.append({"checkout": name, "round": r, "search_s": s, "retrain_s": t, "cell_s": s + t,
                             "load_average": os.getloadavg()[0]})
                print(f"# round {r} {name}: search {s:.1f} s, retrain {t:.1f} s", flush=True)
        described = json.loads(genotype.read_text()) if genotype else None
    ratios = []
    table = []
    for r in range(args.rounds):
        by = {row["checkout"]: row for row in rows if row["round"] == r}
        ratio = {k: by["old"][k] / by["new"][k] for k in ("search_s", "retrain_s", "cell_s")}
        ratios.append(ratio)
        table.append([r, f"{by['old']['search_s']:.1f}", f"{by['new']['search_s']:.1f}", f"{ratio['search_s']:.2f}",
                      f"{by['old']['retrain_s']:.1f}", f"{by['new']['retrain_s']:.1f}", f"{ratio['retrain_s']:.2f}",
                      f"{by['old']['cell_s']:.1f}", f"{by['new']['cell_s']:.1f}", f"{ratio['cell_s']:.2f}"])
    medians = {k: common.median([ratio[k] for ratio in ratios]) for k in ("search_s", "retrain_s", "cell_s")}
    table.append(["median", "", "", f"{medians['search_s']:.2f}", "", "", f"{medians['retrain_s']:.2f}", "", "",
                  f"{medians['cell_s']:.2f}"])
    common.print_table(
        f"One study cell ({args.mode} search + retrain at {MATCH}'s parameter count, cpu-small presets at "
        f"1/{args.scale:g} of their tokens, {args.threads} thread(s)): old = {checkouts['old']}, "
        f"new = {checkouts['new']}",
        ["round", "old search s", "new search s", "old / new", "old retrain s", "new retrain s", "old / new",
         "old cell s", "new cell s", "old / new"], table)
    print(json.dumps({"bench": "study_cell", "machine": info, "scale": args.scale, "mode": args.mode,
                      "search": scaled(SEARCH, args.scale), "retrain": scaled(RETRAIN, args.scale), "match": MATCH,
                      "checkouts": {k: str(v) for k, v in checkouts.items()}, "genotype": described, "rows": rows,
                      "ratios": ratios, "median_ratios": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
