"""The import structure: no circle between modules, and each package imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: each package's layer; a package may import only packages of a lower layer (and itself).
#: A new package gets its place here.
LAYERS: dict[str, int] = {
    "ess.errors": 0,
    "ess.checkpoint": 1, "ess.extras": 1, "ess.runtime": 1,
    "ess.cli": 2,   # `ess COMMAND` names its commands' modules (imported by name when one runs)
    "ess.__main__": 3,   # python -m ess: the same command
    "ess.space": 3, "ess.guard": 3,
    "ess.config": 4, "ess.kernels": 4, "ess.data": 4,
    "ess.models": 5, "ess.runs": 5,
    "ess.supernet": 6, "ess.evaluation": 6, "ess.tagging": 6,
    "ess.search": 7, "ess.train": 7, "ess.transfer": 7,
    "ess.study": 8,
    # each adapter its own layer: what the adapters share (storage paths, Tune's files read as JSON), MLflow,
    # then Ray, whose jobs show their trials in MLflow (never the other way round)
    "ess.adapters": 9,
    "ess.adapters.mlflow": 10,
    "ess.adapters.ray": 11,
    "analysis": 12,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for folder in ("ess", "analysis") for p in (ROOT / folder).rglob("*.py")}


def _package(module: str) -> str:
    """The layer a module belongs to: ``ess.<package>``, ``ess.adapters.<adapter>`` for a module of an adapter
    (the modules directly in ``ess/adapters`` are ``ess.adapters``), else its top-level package."""
    parts = module.split(".")
    adapter = ".".join(parts[:3])
    if parts[:2] == ["ess", "adapters"] and MODULES.get(adapter, Path()).name == "__init__.py":
        return adapter
    return ".".join(parts[:2]) if parts[0] == "ess" and len(parts) > 1 else parts[0]


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports anywhere (functions too), except under ``if TYPE_CHECKING``;
    ``from package import module`` is an edge to the module."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            submodules = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            found.update(submodules if len(submodules) == len(node.names) else {target, *submodules})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    # a package's own __init__ always runs before its modules, so an import of an ancestor is no edge
    return {name for name in found if name in MODULES and not module.startswith(name + ".") and name != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_circle_finder_finds_a_circle_and_a_self_contained_chain():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_relative_and_function_level_imports():
    assert "ess.space.genotype" in GRAPH["ess.space.derive"]
    assert any(name.startswith("ess.kernels") for name in GRAPH["ess.models.cells"])


def test_each_adapter_is_a_layer_of_its_own():
    assert _package("ess.adapters.mlflow.cli") == "ess.adapters.mlflow"
    assert _package("ess.adapters.ray.experiment") == "ess.adapters.ray"
    assert _package("ess.adapters.tune_files") == _package("ess.adapters") == "ess.adapters"
    assert LAYERS["ess.adapters"] < LAYERS["ess.adapters.mlflow"] < LAYERS["ess.adapters.ray"]


def test_no_import_circle_between_modules():
    assert circles(GRAPH) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_lower_layers(module):
    own = _package(module)
    assert own in LAYERS or own == "ess", f"{module}: package {own!r} has no layer in tests/test_layout.py"
    for target in sorted(GRAPH[module]):
        other = _package(target)
        if other == own or own == "ess":
            continue
        assert other in LAYERS, f"{target}: package {other!r} has no layer in tests/test_layout.py"
        assert LAYERS[other] < LAYERS[own], \
            f"{module} (layer {LAYERS[own]}) imports up: {target} (layer {LAYERS[other]})"


def test_every_test_file_that_starts_ray_runs_in_the_ray_process_group():
    """Under ``pytest -n 2`` one process runs the tests that start a Ray cluster (conftest ``RAY_TESTS``)."""
    from conftest import xdist_group

    tests = ROOT / "tests"
    starts_ray = ("local_ray", "ray.init(", "cluster_utils", "tune.Tuner(")
    files = [p for p in tests.rglob("test_*.py")
             if p != Path(__file__).resolve() and any(s in p.read_text() for s in starts_ray)]
    assert tests / "reliability" / "test_faults.py" in files   # the scan sees what it looks for
    assert [p.relative_to(tests).as_posix() for p in files if xdist_group(p) != "ray"] == []
    assert xdist_group(tests / "search" / "test_loop.py") == "search/test_loop.py"
