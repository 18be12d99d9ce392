"""The kernels' command line: ``build`` the C++ CPU module on purpose, ``info`` on what runs on this machine.

    python -m ess.kernels build [--force] [--verbose]
    python -m ess.kernels info
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import torch

from ess.cli import run_main
from ess.kernels import cpu, inter, policy

ENVIRONMENT = {
    "ESS_KERNELS": "the initial backend",
    "ESS_CPU_KERNELS": "0: never build or use the C++ module",
    "ESS_FAST_TANH": "0: compiled float32 kernels keep torch.tanh",
    "ESS_MALLOC_TRIM": "0: leave glibc's allocator alone",
}


def build(force: bool, verbose: bool) -> int:
    where = cpu.build_directory()
    if force and where.exists():
        shutil.rmtree(where)
    state = "up to date" if cpu.is_built() else "building (about a minute)"
    print(f"ess.kernels: C++ CPU kernels from {cpu.SOURCE} in {where}: {state} ...", flush=True)
    start = time.perf_counter()
    try:
        cpu.build(verbose=verbose)
    except Exception as err:  # noqa: BLE001 - the compiler's own output says why; then one line
        print(str(err).strip(), file=sys.stderr)
        print(f"ess.kernels: the C++ CPU kernels could not be built ({type(err).__name__}, output above); the cells "
              "will use the Python kernels", file=sys.stderr)
        return 1
    print(f"ess.kernels: {cpu.library_path()} ready in {time.perf_counter() - start:.1f} s")
    if not cpu.enabled():
        print("ess.kernels: note: ESS_CPU_KERNELS=0 is set here, so the cells will not use it")
    return 0


def _columns() -> list[tuple[str, str, torch.dtype, int]]:
    """``(heading, device, dtype, elements)`` of each column: one size on each side of each threshold."""
    cpp, comp = policy.CPP_MIN_ELEMENTS, policy.COMPILE_MIN_ELEMENTS
    return [(f"CPU f32 <{cpp:,}", "cpu", torch.float32, cpp - 1), (f"CPU f32 {cpp:,}+", "cpu", torch.float32, cpp),
            (f"CPU f32 {comp:,}+", "cpu", torch.float32, comp), (f"CPU f64 <{comp:,}", "cpu", torch.float64, comp - 1),
            (f"CPU f64 {comp:,}+", "cpu", torch.float64, comp), (f"CUDA <{comp:,}", "cuda", torch.float32, comp - 1),
            (f"CUDA {comp:,}+", "cuda", torch.float32, comp)]


def table() -> list[str]:
    """The decision table as :func:`ess.kernels.policy.select` decides it here (C++ module assumed loadable
    unless it is turned off; its state is on a line of its own)."""
    cols = _columns()
    cpp_ready = cpu.enabled()
    compile_ok = not policy._state["compile_broken"]
    rows = [["backend", *[c[0] for c in cols]]]
    for name in policy.BACKENDS:
        if name == "autograd":
            rows.append([name, *["autograd"] * len(cols)])
        else:
            rows.append([name, *[policy.select(name, dev, dt, n, lambda: cpp_ready, compile_ok)
                                 for _, dev, dt, n in cols]])
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines


def info() -> int:
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, CUDA {'available' if cuda else 'not available'}")
    print(f"backend in force: {policy.get_backend()}")
    print()
    print("step of a cell on [batch, nhid], by elements = batch * nhid (rows: backend):")
    for line in table():
        print(f"  {line}")
    print("  (autograd: the cells' plain code, no fused step or loss; every other backend also fuses the loss)")
    print()
    print(f"thresholds: CPP_MIN_ELEMENTS = {policy.CPP_MIN_ELEMENTS:,}, COMPILE_MIN_ELEMENTS = "
          f"{policy.COMPILE_MIN_ELEMENTS:,}, CPP_MAX_INTER_NODES = {inter.CPP_MAX_INTER_NODES} (inter cell)")
    if not cpu.enabled():
        module = "off (ESS_CPU_KERNELS=0): cpp cells above run as float64"
    elif cpu.is_built():
        module = f"built, cached at {cpu.library_path()}"
    else:
        module = (f"not built yet: the first float32 CPU step that uses it builds it (about a minute) into "
                  f"{cpu.build_directory()}, or run: python -m ess.kernels build")
    print(f"C++ CPU module: {module}")
    print("environment:")
    for name, meaning in ENVIRONMENT.items():
        value = os.environ.get(name)
        print(f"  {name}={value if value is not None else '(unset)'}  ({meaning})")
    return 0


@run_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ess.kernels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build the C++ CPU module now (where, how long; why not, on failure)")
    p_build.add_argument("--force", action="store_true", help="remove the cached build first")
    p_build.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    sub.add_parser("info", help="which implementation each backend runs here, the module's state, the switches")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build(args.force, args.verbose)
    return info()


if __name__ == "__main__":
    sys.exit(main())
