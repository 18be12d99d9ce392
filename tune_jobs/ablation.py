"""Ablation on Ray Tune: search mode {intra, inter, joint} x seeds x node counts, each trial a full
search followed by an optional retrain of its genotype; all trials are nested MLflow runs with the
same metric names and mode/seed/steps/n_inter/m tags, so they compare side by side.

    python tune_jobs/ablation.py --smoke-test
    python tune_jobs/ablation.py --seeds 1,2,3 --steps 4,8 --n-inter 2,3 --m 2,3
    python tune_jobs/ablation.py --no-retrain --modes intra,joint

Writes ablation.csv (one row per trial) and ablation_summary.csv (mean/std per mode and node counts).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ess.adapters.ray import jobs
from ess.adapters.ray.config import JobConfig
from ess.adapters.ray.grid import search_variants
from ess.adapters.ray.trainables import search_trainable
from ess.adapters.ray.trial import RETRAIN_METRIC, SEARCH_METRIC

ARM = ("mode", "seed", "steps", "n_inter", "m")


def run(job: JobConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """One stage: every variant a search trial that (``job.retrain``) goes on to retrain its genotype."""
    import pandas as pd  # the tune extra's: imported once ess.adapters.ray has checked it (one line when missing)

    with jobs.experiment("ablation", job, resume=resume) as exp:
        job = exp.job
        variants = search_variants(job)
        trials = exp.stage("ablation", search_trainable,
                           exp.spec(search=job.search, train=job.train if job.retrain else None), variants,
                           callbacks=callbacks)

        table = [{**{k: r["variant"].get(k) for k in ARM},
                  "search_valid_ppl": r["metrics"].get(SEARCH_METRIC),
                  "identity_share": r["metrics"].get("genotype/identity_share"),
                  "retrain_valid_ppl": r["metrics"].get(RETRAIN_METRIC),
                  "retrain_test_ppl": r["metrics"].get("retrain/test/ppl"), "error": r["error"],
                  "mlflow_run_id": r["metrics"].get("mlflow_run_id"), "checkpoint": r["checkpoint"],
                  "genotype": r["metrics"].get("genotype")} for r in trials]
        frame = pd.DataFrame(table)
        value = "retrain_valid_ppl" if job.retrain else "search_valid_ppl"
        ok = frame[frame["error"].isna()]
        grouped = (ok.groupby(["mode", "steps", "n_inter", "m"])[value].agg(["mean", "std", "count"]).reset_index()
                   if len(ok) else pd.DataFrame())
        print(f"\nablation ({value}, by mode and node counts):\n"
              + (grouped.to_string(index=False) if len(grouped) else "(no finished trials)"), flush=True)
        summary = {"trials": table, "by_mode": grouped.to_dict(orient="records"), "value": value,
                   "failed_trials": int(frame["error"].notna().sum())}
        return exp.finish(summary, {"ablation.csv": frame.to_csv(index=False),
                                    "ablation_summary.csv": grouped.to_csv(index=False)})


def report(summary: dict[str, Any]) -> None:
    print(f"trials: {len(summary['trials'])} ({summary['failed_trials']} failed); table: "
          f"{summary['experiment_dir']}/ablation.csv")


def main(argv: list[str] | None = None) -> int:
    return jobs.main("ablation", run, report, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
