"""constraints.txt pins what CI installs (tools/constraints.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("constraints_tool", ROOT / "tools" / "constraints.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def test_every_installed_dependency_is_pinned_at_its_installed_version():
    pins = tool._pins((ROOT / "constraints.txt").read_text())
    installed = tool.closure()
    assert {"torch", "ray", "mlflow", "optuna", "pandas", "pytest"} <= set(installed)
    missing = sorted(set(installed) - set(pins))
    assert not missing, f"not in constraints.txt: {missing} (python tools/constraints.py refresh)"
    moved = {n: (pins[n], v) for n, v in installed.items() if v.split("+")[0] != pins[n]}
    assert not moved, f"installed versions differ from constraints.txt: {moved}"


def test_readme_commands_and_ci_use_the_constraints():
    readme = (ROOT / "README.md").read_text().split("```")
    assert "-c constraints.txt" in readme[1] and "-c constraints.txt" in readme[3]
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()
