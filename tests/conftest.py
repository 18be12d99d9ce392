"""Shared fixtures: the real corpora come from $ESS_DATA_DIR and are never copied into the repo."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from ess.search import PRESETS as SEARCH_PRESETS

DATA_DIR = os.environ.get("ESS_DATA_DIR")
if DATA_DIR:   # the README's `ESS_DATA_DIR=../shared/data`: entry points the tests start run in other folders
    DATA_DIR = os.environ["ESS_DATA_DIR"] = os.path.abspath(DATA_DIR)
os.environ["ESS_OFFLINE"] = "1"   # no test downloads anything: an entry point with a missing corpus says where


def has_corpus(name: str) -> bool:
    return bool(DATA_DIR) and all((Path(DATA_DIR) / name / f"{s}.txt").is_file() for s in ("train", "valid", "test"))


requires_ptb = pytest.mark.skipif(not has_corpus("ptb"), reason="needs PTB in $ESS_DATA_DIR/ptb (set ESS_DATA_DIR)")
requires_wikitext2 = pytest.mark.skipif(
    not has_corpus("wikitext-2"), reason="needs WikiText-2 in $ESS_DATA_DIR/wikitext-2 (set ESS_DATA_DIR)")


# The tests' models are tiny: one intra-op thread is faster than two, and beside another busy process two threads
# spin on each other (a smoke search: 15 s at one thread, 286 s at two beside a two-trial study on 2 cores).
# Subprocesses (entry points, benchmarks) inherit it. The kernel tests run two, so that the C++ steps' parallel
# loops split their rows.
os.environ.setdefault("OMP_NUM_THREADS", "1")
TESTS = Path(__file__).resolve().parent
KERNEL_TESTS = TESTS / "kernels"


@pytest.fixture(autouse=True)
def _few_threads(request):
    torch.set_num_threads(2 if KERNEL_TESTS in Path(request.node.path).parents else 1)
    yield


# -- Two test processes (pytest -n 2 --dist loadgroup, pyproject.toml) -------------------------------
# A module's tests stay in one process, so its module fixtures (a smoke job, a store) are built once. The tests
# that start a Ray cluster share one process: one cluster at a time, each with the two CPUs it asks for.
RAY_TESTS = ("adapters/ray/", "adapters/test_adapter_benches.py", "reliability/test_faults.py",
             "test_analysis_report.py")


def xdist_group(path: Path) -> str:
    """The process group of the tests in ``path``: ``ray`` for the files that start a Ray cluster, else the file."""
    name = path.resolve().relative_to(TESTS).as_posix()
    return "ray" if name.startswith(RAY_TESTS) else name


@pytest.hookimpl(tryfirst=True)   # before xdist reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(Path(item.path))))


# -- Ray Tune jobs at toy sizes (shared by the orchestration and fault tests) -------------------------

#: SearchConfig's smoke preset (a trial takes seconds on 2 cores), without the pictures
TINY_SEARCH = {**SEARCH_PRESETS["smoke"], "draw": False}


@pytest.fixture
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_job(tmp_path, **changes):
    """The smoke joint-search job at :data:`TINY_SEARCH` sizes, stored under ``tmp_path``."""
    from ess.adapters.ray.config import JobConfig, job_base
    from ess.config import config_from_mapping

    changes = {"storage_path": str(tmp_path / "tune"), "data_dir": DATA_DIR or "", "system_metrics": False,
               "verbose": 0, **changes, "search": {**TINY_SEARCH, **changes.get("search", {})}}
    return config_from_mapping(JobConfig, changes, "tiny_job", base=job_base("joint_search", "smoke"))


def load_job(name: str):
    """The module of ``tune_jobs/<name>.py`` (a script, not a package: loaded from its file)."""
    path = Path(__file__).resolve().parent.parent / "tune_jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tune_jobs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_record(root, epochs=(1, 2), *, trial_id="t_00000", experiment="exp", mlflow_experiment="ess-test",
                final=False, system=()):
    """A trial's run directory as a search trial writes it (``ess.adapters.mlflow.record``), by hand:
    ``valid/ppl`` = 100 / epoch, genotype files per epoch, ``system`` rows, and (``final``) its weights."""
    import json

    import yaml

    from ess.space.genotype import DARTS_V2

    root = Path(root)
    search = root / "search"
    for sub in ("genotypes", "arch_weights"):
        (search / sub).mkdir(parents=True, exist_ok=True)
    (root / "trial.json").write_text(json.dumps({
        "trial_id": trial_id, "trial_name": f"joint_s1_{trial_id}", "experiment": experiment,
        "mlflow_experiment": mlflow_experiment, "phase": "search", "run_name": "joint_s1",
        "tags": {"mode": "joint", "seed": "1", "ess.phase": "search"}, "started": 0.0}))
    (search / "config.yaml").write_text(yaml.safe_dump({"mode": "joint", "lr": 20.0, "seeds": [1, 2]}))
    (search / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "valid/ppl": 100.0 / e, "genotype": "x"})
                                                  + "\n" for e in epochs))
    weights = {"intra": {"searched": True, "columns": ["none", "tanh"], "rows": ["1<-0"], "weights": [[0.3, 0.7]]}}
    for e in epochs:
        (search / "genotypes" / f"epoch_{e:03d}.json").write_text(json.dumps({"epoch": e}) + "\n")
        (search / "arch_weights" / f"epoch_{e:03d}.json").write_text(json.dumps(weights) + "\n")
    (search / "arch_weights.json").write_text(json.dumps(weights) + "\n")
    (search / "genotype.json").write_text(DARTS_V2.to_json() + "\n")
    if final:
        (search / "checkpoint.pt").write_bytes(b"weights")
    if system:
        (root / "system_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in system))
    return root
