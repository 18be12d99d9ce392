"""Every entry point answers --help: the modules run with ``python -m``, the scripts, the console commands
(``ess`` and each of its commands)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:   # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _has_main_guard(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.If) and ast.unparse(node.test) in ("__name__ == '__main__'",
                                                                       '__name__ == "__main__"')
               for node in tree.body)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__main__" else parts)


def entry_points() -> dict[str, list[str]]:
    """``{name: command}`` of every entry point, found rather than listed, so a new one is held to it too."""
    found: dict[str, list[str]] = {}
    for package in ("ess", "analysis"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py" or _has_main_guard(path):
                module = _module(path)
                found[f"python -m {module}"] = [sys.executable, "-m", module, "--help"]
    for folder in ("tune_jobs", "tools", "bench"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if _has_main_guard(path):
                found[f"python {folder}/{path.name}"] = [sys.executable, str(path), "--help"]
    from ess.cli import COMMANDS

    for name in COMMANDS:   # ess COMMAND, as python -m ess COMMAND runs it
        found[f"ess {name}"] = [sys.executable, "-m", "ess", name, "--help"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"].get("scripts", {})
    for name, target in scripts.items():   # what the installed command runs, whether or not this tree is installed
        module, func = target.split(":")
        found[name] = [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; "
                                             f"sys.exit({func}())", "--help"]
    return found


ENTRY_POINTS = entry_points()


def test_the_entry_points_are_found():
    assert {"python -m ess.search", "python -m ess.train", "python -m ess.transfer", "python -m ess.space",
            "python -m ess.data", "python tune_jobs/joint_search.py", "ess", "ess search",
            "ess ui"} <= ENTRY_POINTS.keys()


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_help_prints_the_usage_and_exits_0(name):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(ENTRY_POINTS[name], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} --help: exit {done.returncode}\n{done.stderr[-2000:]}"
    assert "usage:" in done.stdout, f"{name} --help printed no usage:\n{done.stdout[:500]}"
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
