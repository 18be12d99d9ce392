"""What the training and search loops share: epoch reports, metrics files, resume checks, their command line."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ess.checkpoint import atomic_write_text
from ess.cli import run_main
from ess.config import add_config_arguments, config_from_mapping, load_yaml, resolve_config
from ess.data import ensure_corpus
from ess.errors import CheckpointError, ConfigError
from ess.space.genotype import ESSGenotype

C = TypeVar("C")


@dataclass
class EpochReport:
    """What a loop hands its ``on_epoch`` callback after each epoch's checkpoint is written."""

    epoch: int
    metrics: dict[str, Any]          # one flat row with prefixed keys (train/loss, valid/ppl, ...)
    run_dir: Path
    checkpoint: Path                 # the checkpoint that holds this epoch
    genotype: ESSGenotype | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)  # genotype JSON, picture, weight table ...


OnEpoch = Callable[[EpochReport], None]


def ignore_report(report: EpochReport) -> None:
    return None


def print_report(report: EpochReport) -> None:
    """The one JSON line per epoch on stdout."""
    print(json.dumps(report.metrics), flush=True)


def write_metrics(run_dir: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``metrics.jsonl``, rewritten atomically from the rows held by the checkpoint (never out of step)."""
    return atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def check_resumable(saved: dict[str, Any], cfg: Any, fixed: Sequence[str], path: Path) -> None:
    """Fields that define the model and the data must be the same as in the checkpoint."""
    for name in fixed:
        now = getattr(cfg, name)
        now = list(now) if isinstance(now, tuple) else now
        if name in saved and saved[name] != now:
            raise CheckpointError(f"{path}: field {name!r} is {saved[name]!r} in the checkpoint but {now!r} now; "
                                  "resume with the same value")


def parse_run_args(cls: type[C], argv: list[str] | None, *, prog: str, description: str, smoke: dict[str, Any],
                   presets: dict[str, dict[str, Any]] | None = None,
                   extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[C, argparse.Namespace]:
    """Base config: the saved one (``--resume``), ``smoke`` (``--smoke-test``) or a preset; then YAML, then flags."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    parser.add_argument("--smoke-test", action="store_true",
                        help="a tiny end-to-end run on a slice of the data (under a minute)")
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help="a named starting point, applied before --config and the flags")
    if extra is not None:
        extra(parser)
    add_config_arguments(parser, cls)
    args = parser.parse_args(argv)
    base = None
    if args.resume:
        run_dir = getattr(args, "run_dir", None) or cls.__dataclass_fields__["run_dir"].default
        saved = Path(run_dir) / "config.yaml"
        if not saved.exists():
            raise ConfigError(f"{saved}: no saved config to resume from")
        base = config_from_mapping(cls, load_yaml(saved), str(saved))
    elif args.smoke_test:
        base = config_from_mapping(cls, smoke, "--smoke-test")
    elif presets and args.preset:
        base = config_from_mapping(cls, presets[args.preset], f"--preset {args.preset}")
    return resolve_config(cls, args, base=base), args


def loop_command(cls: type[C], loop: Callable[..., Any], *, prog: str, description: str,
                 presets: Mapping[str, dict[str, Any]], closing: Callable[[Any], dict[str, Any]],
                 corpus: bool = True) -> Callable[[list[str] | None], int]:
    """The ``main`` of a one-process entry point (``python -m ess.search``, ``ess.train``, ``ess.transfer``).

    The config from the command line (:func:`parse_run_args`; ``presets['smoke']`` is ``--smoke-test``), the
    corpus fetched or generated when missing (``corpus``: as the Tune jobs do), the loop with one JSON line per
    epoch, then one closing JSON line: what ``closing`` takes from the loop's result, the seconds, the run directory.
    An :class:`~ess.errors.ESSError` is one line (:func:`~ess.cli.run_main`).
    """

    @run_main
    def main(argv: list[str] | None = None) -> int:
        cfg, args = parse_run_args(cls, argv, prog=prog, description=description, smoke=presets["smoke"],
                                   presets=dict(presets))
        if corpus:
            ensure_corpus(cfg.dataset, cfg.data_dir)
        start = time.perf_counter()
        result = loop(cfg, resume=args.resume, on_epoch=print_report)
        print(json.dumps({**closing(result), "seconds": round(time.perf_counter() - start, 1),
                          "run_dir": str(cfg.run_dir)}), flush=True)
        return 0

    return main
