"""The pinned versions CI tested (constraints.txt): write them from this environment, or try the newest.

    python tools/constraints.py refresh          # after a green CI on upgraded packages: pin what is installed
    python tools/constraints.py check-latest     # a fresh venv with the newest releases runs the smoke tests

``refresh`` writes the exact versions of ``ess[dev]`` and everything it pulls in (the dependency closure read
from the installed metadata), torch pinned to the CPU build's public version. ``check-latest`` installs the
project without constraints into a temporary virtual environment (torch still pinned: an unpinned torch
pulls several GB of CUDA wheels), runs the smoke tests there, and prints which packages moved and whether
the tests passed: the early warning that a new Ray, MLflow or Optuna release breaks something.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
TORCH = "torch==2.13.0"
SMOKE_TESTS = ["tests/search/test_loop.py", "tests/adapters/ray/test_jobs.py", "-k", "smoke"]


def _name(name: str) -> str:
    return name.lower().replace("_", "-")


def closure(root: str = "ess", extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    """``{name: version}`` of ``root`` (with ``extras``) and every installed package it requires, recursively
    (requirements whose markers do not hold here, or name an extra not asked for, are left out)."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[_name(dist.metadata["Name"])] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (*wanted, "")):
                continue
            if _name(req.name) not in seen:
                todo.append((req.name, tuple(req.extras)))
    seen.pop("ess", None)
    return seen


def refresh() -> int:
    pins = closure()
    lines = [f"{name}=={version.split('+')[0]}" for name, version in sorted(pins.items())]
    header = ("# The versions CI tested (python tools/constraints.py refresh writes this file; used by the README's\n"
              "# commands and .ci/run as `pip install -c constraints.txt ...`).\n")
    tmp = CONSTRAINTS.with_suffix(".tmp")
    tmp.write_text(header + "\n".join(lines) + "\n")
    tmp.replace(CONSTRAINTS)
    print(f"{CONSTRAINTS}: {len(lines)} pins")
    return 0


def _pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a constraints file or a ``pip freeze`` as ``{name: version}``."""
    return {_name(line.split("==", 1)[0]): line.split("==", 1)[1].strip() for line in text.splitlines()
            if "==" in line and not line.startswith("#")}


def check_latest() -> int:
    pinned = _pins(CONSTRAINTS.read_text())
    with tempfile.TemporaryDirectory(prefix="ess-latest-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "-q", TORCH, "-e", f"{ROOT}[dev]"], check=True)
        frozen = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
        latest = _pins(frozen)
        moved = {n: (pinned[n], latest[n]) for n in pinned if n in latest and latest[n].split("+")[0] != pinned[n]}
        for name, (old, new) in sorted(moved.items()):
            print(f"  {name}: {old} -> {new}")
        proc = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SMOKE_TESTS], cwd=ROOT)
        print(f"{len(moved)} packages newer than constraints.txt; smoke tests "
              f"{'passed' if proc.returncode == 0 else 'FAILED'} on them")
        return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/constraints.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("refresh", "check-latest"))
    args = parser.parse_args(argv)
    return refresh() if args.command == "refresh" else check_latest()


if __name__ == "__main__":
    sys.exit(main())
