"""Command line for genotypes: ``python -m ess.space {show,list,validate,export}``.

* ``show FILE_OR_NAME [--out cell.png] [--title T]``: print the one-line description and, with
  ``--out``, draw the cells (``.png``, ``.svg``, or no suffix for both) and print the written paths.
  A description (``"intra[...] history[...] input[...]"``) names a genotype too.
* ``list``: the built-in genotypes.
* ``validate FILE``: ``OK ...`` or the one-line error (exit status 2).
* ``export NAME [--out FILE.json]``: write a built-in (or a file) as JSON, or print it.

Every user error (a malformed or missing file, an unknown name) is one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ess.cli import run_main
from ess.space.description import describe
from ess.space.genotype import BUILTINS, save_genotype
from ess.space.refs import load_genotype


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ess.space", description="Inspect, check, draw and export "
                                     "ESS genotypes (JSON files or the built-ins " + ", ".join(BUILTINS) + ").")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser("show", help="describe a genotype and optionally draw it")
    show.add_argument("genotype", metavar="FILE_OR_NAME",
                      help="a genotype JSON file, a built-in name or a description (intra[...] history[...] ...)")
    show.add_argument("--out", help="drawing to write: .png, .svg, or no suffix for both")
    show.add_argument("--title", help="title of the drawing (default: the genotype's name)")
    commands.add_parser("list", help="list the built-in genotypes")
    validate = commands.add_parser("validate", help="check a genotype file")
    validate.add_argument("genotype", metavar="FILE", help="a genotype JSON file (or a built-in name)")
    export = commands.add_parser("export", help="write a genotype as JSON")
    export.add_argument("genotype", metavar="NAME", help="a built-in name (or a genotype JSON file)")
    export.add_argument("--out", help="JSON file to write (default: print to stdout)")
    return parser


def _show(args: argparse.Namespace) -> int:
    genotype = load_genotype(args.genotype)
    if args.out:
        from ess.space.draw import draw_genotype, output_paths  # matplotlib is only needed to draw

        output_paths(Path(args.out), None)  # a bad suffix fails before anything is printed
    print(describe(genotype))
    if args.out:
        for path in draw_genotype(genotype, args.out, title=args.title or str(args.genotype)):
            print(path)
    return 0


def _list(_: argparse.Namespace) -> int:
    width = max(map(len, BUILTINS))
    for name, genotype in BUILTINS.items():
        print(f"{name:<{width}}  {describe(genotype)}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    genotype = load_genotype(args.genotype)
    print(f"OK {args.genotype}: {describe(genotype)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    genotype = load_genotype(args.genotype)
    if args.out:
        print(save_genotype(genotype, args.out))
    else:
        print(genotype.to_json())
    return 0


_COMMANDS = {"show": _show, "list": _list, "validate": _validate, "export": _export}


@run_main
def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; an :class:`~ess.errors.ESSError` becomes one stderr line and status 2."""
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
