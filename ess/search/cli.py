"""The search command line: ``python -m ess.search`` (presets, YAML, flags, ``--resume``, ``--smoke-test``)."""

from __future__ import annotations

import argparse
import json
import time

from ess.cli import run_main
from ess.data import ensure_corpus
from ess.runs import parse_run_args, print_report
from ess.search.config import PRESETS, SearchConfig
from ess.search.methods import search
from ess.space.description import describe


def parse_args(argv: list[str] | None = None) -> tuple[SearchConfig, argparse.Namespace]:
    return parse_run_args(SearchConfig, argv, prog="python -m ess.search",
                          description="The differentiable ESS search: bilevel optimisation of the supernet.",
                          smoke=PRESETS["smoke"], presets=PRESETS)


@run_main
def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    ensure_corpus(cfg.dataset, cfg.data_dir)   # as the Tune jobs: fetched (or generated) when missing
    start = time.perf_counter()
    result = search(cfg, resume=args.resume, on_epoch=print_report)
    print(json.dumps({"genotype": result.genotype.to_dict(), "describe": describe(result.genotype),
                      "stability": (result.selection.get("stability") or {}).get("statement"),
                      "seconds": round(time.perf_counter() - start, 1), "run_dir": str(result.run_dir)}), flush=True)
    return 0
