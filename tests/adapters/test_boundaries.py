"""The adapters' boundary: only ess/adapters imports Ray, MLflow or Optuna; its modules stay small and say
what they are in one line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ESS = Path(__file__).resolve().parents[2] / "ess"
ADAPTERS = ESS / "adapters"
FOREIGN = ("ray", "mlflow", "optuna")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


CORE = sorted(p for p in ESS.rglob("*.py") if ADAPTERS not in p.parents)
MODULES = sorted(ADAPTERS.rglob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ESS)))
def test_the_core_imports_no_ray_mlflow_or_optuna(path):
    assert not _imports(path) & set(FOREIGN), f"{path} imports {_imports(path) & set(FOREIGN)}"


def test_the_adapters_are_the_ones_that_do():
    """(Optuna is imported by the one job that uses it, tune_jobs/hparam_search.py, next to its Tuner.)"""
    assert {"ray", "mlflow"} <= set().union(*(_imports(p) for p in MODULES))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ESS)))
def test_each_adapter_module_is_small_and_says_what_it_is_in_one_line(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 500, f"{path}: {len(text.splitlines())} lines"
    doc = ast.get_docstring(ast.parse(text)) or ""
    first = doc.splitlines()[0] if doc else ""
    assert first and not re.search(r"\band\b", first), f"{path}: {first!r}"
