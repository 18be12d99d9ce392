"""``ess COMMAND``: each command is its ``python -m`` form; a missing extra or a bad command is one line."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ess import cli, extras

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_names_a_module_with_a_main_and_its_python_m_form():
    for name, command in cli.COMMANDS.items():
        assert "(python -m " in command.about, name
        assert callable(importlib.import_module(command.module).main), name
        assert command.extra is None or command.extra in extras.EXTRAS, name
    assert set(cli.COMMANDS) == {"search", "train", "transfer", "space", "data", "report", "ui"}


def test_a_command_runs_as_its_python_m_form(capsys):
    from ess.space.__main__ import main as space_main

    assert cli.main(["space", "list"]) == 0
    via_ess = capsys.readouterr().out
    assert space_main(["list"]) == 0
    assert via_ess == capsys.readouterr().out and "DARTS_V2" in via_ess


def test_help_lists_the_commands_and_a_bad_command_is_a_usage_error(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in cli.COMMANDS) and "[ess[analysis]]" in out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capsys):
    real = importlib.import_module

    def without_pandas(name, *args):
        if name == "analysis.report":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_pandas)
    monkeypatch.setattr(extras, "missing", lambda extra: [])   # the extra looks installed; one of its modules is not
    assert cli.main(["report", "--help"]) == 2
    err = capsys.readouterr().err
    assert err == "error: ess report needs the analysis extra: pip install 'ess[analysis]' (pandas is not installed)\n"

    monkeypatch.setattr(extras, "missing", lambda extra: ["mlflow"] if extra == "mlflow" else [])
    assert cli.main(["ui", "--print"]) == 2
    assert capsys.readouterr().err == \
        "error: ess ui needs the mlflow extra: pip install 'ess[mlflow]' (mlflow is not installed)\n"


def test_require_raised_at_import_time_ends_a_script_in_one_line(tmp_path):
    """A module that needs an extra may require it at import: the script that imports it ends in one line."""
    script = tmp_path / "job.py"
    script.write_text("from ess import extras\nextras.EXTRAS['x'] = ('no_such_module_here',)\n"
                      "extras.require('x', 'this job')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert done.returncode == 1
    assert done.stderr == ("error: this job needs the x extra: pip install 'ess[x]' (no_such_module_here is not "
                           "installed)\n")


def test_an_extra_is_missing_when_any_module_or_program_of_it_is(monkeypatch):
    monkeypatch.setitem(extras.EXTRAS, "x", ("json", "no_such_module_here"))
    monkeypatch.setitem(extras.PROGRAMS, "x", ("no-such-program-here", sys.executable))
    assert extras.missing("x") == ["no_such_module_here", "no-such-program-here"]
    with pytest.raises(ImportError, match=r"pip install 'ess\[x\]' \(no_such_module_here, no-such-program-here are"):
        extras.require("x", "it")
    assert extras.extra_of("pandas") == "analysis" and extras.extra_of("ray") == "tune"
    assert extras.extra_of("torch") is None
