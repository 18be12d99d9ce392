"""The command line: ``ess COMMAND`` (search, train, transfer, space, data, report, ui), each failure one line."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ess.errors import ESSError
from ess.extras import MissingExtra, extra_of, message, require


def run_main(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an entry point so that an :class:`ESSError` prints one line and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except ESSError as err:  # one line: ESSError escapes line breaks in its message
            print(f"error: {str(err) or type(err).__name__}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


@dataclass(frozen=True)
class Command:
    """``ess NAME ARGS``: ``main([*prefix, *ARGS])`` of ``module`` (imported only when NAME runs)."""

    module: str
    about: str
    extra: str | None = None          # the extra it needs beyond the core (ess.extras)
    prefix: tuple[str, ...] = ()


#: the subcommands, each also a ``python -m`` form (in the help)
COMMANDS: dict[str, Command] = {
    "search": Command("ess.search.cli", "the differentiable search in one process (python -m ess.search)"),
    "train": Command("ess.train", "retrain a genotype or an LSTM (python -m ess.train)"),
    "transfer": Command("ess.transfer", "a cell in the BiRNN-CRF tagger: NER, chunking (python -m ess.transfer)"),
    "space": Command("ess.space.__main__", "list, show, validate, export genotypes (python -m ess.space)"),
    "data": Command("ess.data.__main__", "list, download, verify, generate corpora (python -m ess.data)"),
    "report": Command("analysis.report", "tables, figures, a report of a job's runs (python -m analysis.report)",
                      "analysis"),
    "ui": Command("ess.adapters.mlflow.cli", "the MLflow UI of the jobs' store (python -m ess.adapters.mlflow ui)",
                  "mlflow", ("ui",)),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.about}" + (f" [ess[{c.extra}]]" if c.extra else "")
             for name, c in COMMANDS.items()]
    return "\n".join(["usage: ess COMMAND [ARGS ...]   (ess COMMAND --help: its options)", "",
                      "Differentiable architecture search of recurrent cells over an extended search space (ESS).",
                      "", "commands:", *lines])


@run_main
def main(argv: Sequence[str] | None = None) -> int:
    """``ess COMMAND ARGS``: the command's own ``main`` with ``ARGS``; a missing extra is one line naming it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\ness: error: unknown command {name!r}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    if command.extra:
        require(command.extra, f"ess {name}")
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as err:   # a package of an extra the command did not name
        extra = extra_of((err.name or "").partition(".")[0])
        if extra is None:
            raise
        raise MissingExtra(message(extra, f"ess {name}", [err.name or ""])) from None
    return module.main([*command.prefix, *args])


__all__ = ["COMMANDS", "Command", "main", "run_main"]
