"""Safe defaults (issue #7, part 5): nothing read from a user's file is ever run as code, servers bind to
127.0.0.1 unless asked otherwise, downloads are checked by sha256.

A static scan (by AST, so ``model.eval()`` or a docstring is not a hit) of ``ess/``, ``analysis/`` and
``tune_jobs/`` forbids unpickling (``pickle.load``, ``numpy.load(allow_pickle=True)``, ``pandas.read_pickle``),
``eval``/``exec``, ``yaml.load`` without a safe loader (and ``unsafe_load``/``full_load``), ``torch.load``
without ``weights_only=True``, ``shell=True`` and ``0.0.0.0`` as a default bind address. Behavioural tests
feed the loaders hostile files whose payload would leave a marker directory behind if it ran.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ess.adapters.mlflow import ui_command, ui_hint
from ess.checkpoint import load_checkpoint, save_checkpoint
from ess.config import config_from_mapping, load_yaml, parse_yaml
from ess.data import CORPORA, SPLITS, CorpusSpec, DownloadSpec, download_corpus, register_corpus, unregister_corpus
from ess.errors import CheckpointError, ConfigError, DataError, GenotypeError
from ess.search import SearchConfig
from ess.space.refs import load_genotype

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("ess", "analysis", "tune_jobs")
SAFE_LOADER_NAMES = ("SafeLoader", "CSafeLoader", "BaseLoader", "SafeUniqueKeyLoader")


# --------------------------------------------------------------------------------------------------
# Static scan


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a Name/Attribute chain (empty for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe construct in ``source`` as ``file:line: what``."""
    tree = ast.parse(source, filename)
    found = []

    def hit(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                hit(node, f"{name}() of a string")
            elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
                          "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads", "marshal.load",
                          "marshal.loads", "shelve.open", "pd.read_pickle", "pandas.read_pickle", "joblib.load"):
                hit(node, f"{name}() unpickles")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                loader_name = _dotted(loader) if loader is not None else ""
                if not any(loader_name.endswith(safe) for safe in SAFE_LOADER_NAMES):
                    hit(node, f"{name}() without a safe loader")
            elif name.startswith("yaml.") and last in ("unsafe_load", "unsafe_load_all", "full_load",
                                                         "full_load_all"):
                hit(node, f"{name}() constructs arbitrary objects")
            elif name in ("torch.load",) or name.endswith(".torch.load"):
                if not _is_true(_kw(node, "weights_only")):
                    hit(node, "torch.load() without weights_only=True")
            elif last == "load" and name.split(".")[0] in ("np", "numpy") and _is_true(_kw(node, "allow_pickle")):
                hit(node, f"{name}(allow_pickle=True)")
            if _is_true(_kw(node, "shell")):
                hit(node, f"{name or 'call'}(shell=True)")
            default = _kw(node, "default")
            if isinstance(default, ast.Constant) and default.value == "0.0.0.0":
                hit(node, "0.0.0.0 as a default bind address")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if isinstance(default, ast.Constant) and default.value == "0.0.0.0":
                    hit(node, f"{node.name}(): 0.0.0.0 as a default bind address")
        elif isinstance(node, ast.Attribute) and _dotted(node) in ("yaml.Loader", "yaml.UnsafeLoader",
                                                                     "yaml.FullLoader", "yaml.CLoader",
                                                                     "yaml.CUnsafeLoader", "yaml.CFullLoader"):
            hit(node, f"{_dotted(node)} constructs arbitrary objects")
    return found


def _sources() -> list[Path]:
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20, f"scan found only {len(files)} files under {ROOT}"
    return files


def test_static_scan_finds_no_unsafe_loading():
    problems = []
    for path in _sources():
        problems += unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "unsafe constructs:\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.load(open('f', 'rb'))",
    "import pickle\nx = pickle.loads(b'')",
    "eval(text)",
    "exec(code, {})",
    "import yaml\nyaml.load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.load(text, yaml.FullLoader)",
    "import yaml\nyaml.unsafe_load(text)",
    "import yaml\nyaml.full_load(text)",
    "import torch\ntorch.load('x.pt')",
    "import torch\ntorch.load('x.pt', weights_only=False)",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "import pandas as pd\npd.read_pickle('a.pkl')",
    "import subprocess\nsubprocess.run('ls', shell=True)",
    "def serve(host='0.0.0.0'):\n    pass",
    "parser.add_argument('--host', default='0.0.0.0')",
])
def test_static_scan_catches_unsafe_snippets(snippet):
    assert unsafe_calls(snippet), f"the scan misses: {snippet!r}"


@pytest.mark.parametrize("snippet", [
    "model.eval()",
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.load(text, Loader=SafeUniqueKeyLoader)",
    "import torch\ntorch.load(f, map_location='cpu', weights_only=True)",
    "import numpy as np\nnp.load('a.npy')",
    "'''pickle.load(f) in a docstring'''",
    "def ui(host='127.0.0.1'):\n    pass",
])
def test_static_scan_allows_safe_snippets(snippet):
    assert not unsafe_calls(snippet)


# --------------------------------------------------------------------------------------------------
# YAML: the safe loader refuses Python tags (and runs nothing)

HOSTILE_TAGS = [
    "!!python/object/apply:os.mkdir [{marker}]",
    "!!python/object/new:os.mkdir [{marker}]",
    "!!python/object/apply:subprocess.check_call [[mkdir, {marker}]]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:ess.search.SearchConfig {{lr: 1}}",
]


@pytest.mark.parametrize("tag", HOSTILE_TAGS)
def test_yaml_python_tags_are_rejected_and_not_run(tmp_path, tag):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"lr: 10\nrun_dir: {tag.format(marker=marker)}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"evil\.yaml: YAML tag '!!python/.*' at line 2, column \d+ is not allowed"):
        load_yaml(path)
    assert not marker.exists()


def test_yaml_os_system_tag_in_a_config_gives_one_line_cli_error(tmp_path):
    from ess.search.cli import main

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"epochs: !!python/object/apply:os.system ['mkdir {marker}']\n", encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--config", str(path), "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and not marker.exists()
    lines = err.getvalue().rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: YAML tag '!!python/object/apply:os.system'")


def test_yaml_plain_data_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 5}\n", encoding="utf-8")
    assert parse_yaml("a: &x [1, 2]\nb: *x\nc: {<<: {d: 1}, d: 2}\n", "s") == {"a": [1, 2], "b": [1, 2], "c": {"d": 2}}
    assert config_from_mapping(SearchConfig, parse_yaml("lr: 5\nmode: intra\n", "s"), "s").lr == 5.0


# --------------------------------------------------------------------------------------------------
# Checkpoints: weights_only=True refuses pickled objects


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@dataclass
class _Arbitrary:
    value: int = 3


def test_checkpoint_with_code_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "epoch": 1, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a readable checkpoint") as info:
        load_checkpoint(path)
    assert not marker.exists()
    assert len(str(info.value).splitlines()) == 1


def test_checkpoint_with_arbitrary_object_is_refused(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"config": _Arbitrary(), "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"object\.pt: not a readable checkpoint"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_of_plain_data_loads(tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "epoch": 3, "rows": [{"a": 1.0}]})
    state = load_checkpoint(path, required=("model", "epoch"))
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))


# --------------------------------------------------------------------------------------------------
# Genotype JSON is data, never code


def test_genotype_json_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.json"
    path.write_text(f'{{"intra": {{"recurrent": [["__import__(\'os\').mkdir(\'{marker}\')", 0]]}}}}',
                    encoding="utf-8")
    with pytest.raises(GenotypeError, match=r"evil\.json: intra\.recurrent\[0\]\.op: unknown op"):
        load_genotype(path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# MLflow UI / server: 127.0.0.1 unless asked


def test_mlflow_ui_binds_localhost_by_default():
    cmd = ui_command("sqlite:///runs/tune/mlflow.db")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "0.0.0.0" not in " ".join(cmd)
    assert "127.0.0.1" in ui_hint("sqlite:///runs/tune/mlflow.db")


def test_mlflow_ui_binds_elsewhere_only_when_asked():
    cmd = ui_command("sqlite:///x.db", host="0.0.0.0", port=5001)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "5001"


def test_tracking_cli_ui_defaults_to_localhost(tmp_path):
    from ess.adapters.mlflow.cli import main

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["ui", "--tracking-uri", f"sqlite:///{db}", "--print"])
    assert rc == 0
    assert "--host 127.0.0.1" in out.getvalue() and "0.0.0.0" not in out.getvalue()


# --------------------------------------------------------------------------------------------------
# Downloads: every registered source is pinned by sha256 and fetched over https; a mismatch is refused


def test_registered_downloads_are_https_and_pinned():
    for name, spec in CORPORA.items():
        if spec.download is None:
            continue
        assert spec.download.url.startswith("https://"), f"{name}: {spec.download.url}"
        pinned = spec.download.sha256 is not None or all(spec.digest(s) for s in SPLITS)
        assert pinned, f"{name}: neither the archive nor every split has a registered sha256"
        assert all(spec.digest(s) for s in SPLITS), f"{name}: a split without a sha256"


def test_download_with_wrong_archive_sha256_is_refused(tmp_path):
    """The real PTB spec pins its archive: a local file with other bytes is refused, nothing installed."""
    fake = tmp_path / "ptb.zip"
    members = {f"ptb/ptb.{s}.txt": b" the cat\n" for s in SPLITS}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    fake.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"ptb\.zip: archive sha256 mismatch: got [0-9a-f]{64}, corpus 'ptb' "
                                        r"expects 6957baa6"):
        download_corpus("ptb", tmp_path / "data", url=str(fake), progress=False)
    assert not (tmp_path / "data" / "ptb").exists()


def test_download_with_wrong_member_sha256_is_refused(tmp_path):
    """A spec without an archive hash (like WikiText-2's) still checks each member's sha256."""
    good = b" the cat sat\n"
    bad = b" the dog sat\n"  # same size, same UTF-8-ness, other bytes
    name = "reliability-member-sha"
    register_corpus(CorpusSpec(
        name=name, files={s: f"{s}.txt" for s in SPLITS},
        sizes={s: len(good) for s in SPLITS}, sha256={s: hashlib.sha256(good).hexdigest() for s in SPLITS},
        download=DownloadSpec(url="https://example.invalid/x.zip", members={s: f"{s}.tokens" for s in SPLITS})),
        overwrite=True)
    try:
        archive = tmp_path / "x.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for s in SPLITS:
                zf.writestr(f"{s}.tokens", bad if s == "valid" else good)
        with pytest.raises(DataError, match=r"x\.zip!valid\.tokens: sha256 mismatch"):
            download_corpus(name, tmp_path / "data", url=str(archive), progress=False)
        assert not (tmp_path / "data" / name).exists()
    finally:
        unregister_corpus(name)
