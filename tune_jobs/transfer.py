"""Compare cells on the NER/chunking transfer task across seeds on Ray Tune (BiRNN-CRF tagger, span F1).

    python tune_jobs/transfer.py --smoke-test
    python tune_jobs/transfer.py --cells lstm,DARTS_V2,best_genotype.json --seeds 1,2,3 --tasks conll2003
    python tune_jobs/transfer.py --preset paper --tasks conll2003,wnut17 --transfer "epochs=30"

Writes transfer.csv (one row per trial) and transfer_summary.csv (mean/std dev and test F1 per cell).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ess.adapters.ray import jobs
from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.grid import transfer_variants
from ess.adapters.ray.trainables import transfer_trainable
from ess.space.genotype import ESSGenotype, builtin_name
from ess.space.refs import load_genotype


def sources(job: JobConfig) -> tuple[dict[str, ESSGenotype | str], dict[str, dict[str, Any]]]:
    """``{label: "lstm" | built-in name | ESSGenotype (of a file)}`` from ``job.cells``."""
    cells: dict[str, ESSGenotype | str] = {}
    info: dict[str, dict[str, Any]] = {}
    for item in job.cells:
        name = "lstm" if item.lower() == "lstm" else builtin_name(item)
        if name is not None:
            label, ref, source = name, name, "built-in"
        else:
            path = Path(item).expanduser()
            ref, label, source = load_genotype(path), path.stem, str(path.resolve())
        while label in cells:
            label += "_"
        cells[label] = ref
        info[label] = {"source": source}
    return cells, info


def run(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """One stage: task x cell x seed, each trial a tagger trained to its best dev epoch."""
    import pandas as pd  # the tune extra's: imported once ess.adapters.ray has checked it (one line when missing)

    jobs.ensure_tasks(job.tasks, job.data_dir or None)
    cells, info = sources(job)
    with jobs.experiment("transfer", job, resume=resume, corpus=False) as exp:
        job = exp.job
        exp.set_tags({"cells": ",".join(cells), "tasks": ",".join(job.tasks)})
        variants = transfer_variants(job, list(cells))
        results = exp.stage("transfer", transfer_trainable,
                            exp.spec(transfer=job.transfer, cells=cells, cell_info=info), variants,
                            callbacks=callbacks)
        done = jobs.succeeded(results, "transfer")
        table = [{"task": r["variant"].get("task"), "cell": r["variant"].get("cell_label"),
                  "seed": r["variant"].get("seed"), "dev_f1": r["metrics"].get("dev/f1"),
                  "test_f1": r["metrics"].get("test/f1"), "best_epoch": r["metrics"].get("best_epoch"),
                  "params": r["metrics"].get("params"), "mlflow_run_id": r["metrics"].get("mlflow_run_id"),
                  "checkpoint": r["checkpoint"]} for r in done]
        frame = pd.DataFrame(table)
        grouped = frame.groupby(["task", "cell"])[["dev_f1", "test_f1"]].agg(["mean", "std", "count"])
        grouped.columns = [f"{a}_{b}" for a, b in grouped.columns]
        grouped = grouped.reset_index().sort_values(["task", "dev_f1_mean"], ascending=[True, False])
        print("\ntransfer (span F1 of the best-dev model, by task and cell, over seeds):\n"
              + grouped.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
        by_cell = grouped.to_dict(orient="records")
        best = by_cell[0]
        exp.set_tags({"best_cell": str(best["cell"])})
        summary = {"trials": table, "by_cell": by_cell, "best_cell": best["cell"],
                   "best_dev_f1_mean": float(best["dev_f1_mean"]), "failed_trials": len(results) - len(done)}
        return exp.finish(summary, {"transfer.csv": frame.to_csv(index=False),
                                    "transfer_summary.csv": grouped.to_csv(index=False)})


def report(summary: dict[str, Any]) -> None:
    print(f"trials: {len(summary['trials'])} ({summary['failed_trials']} failed); best cell by mean dev F1: "
          f"{summary['best_cell']} ({summary['best_dev_f1_mean']:.4f}); table: "
          f"{summary['experiment_dir']}/transfer_summary.csv")


def main(argv: list[str] | None = None) -> int:
    return jobs.main("transfer", run, report, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
