"""Ablation on Ray Tune: search mode {intra, inter, joint} x seeds x node counts, each trial a full
search followed by an optional retrain of its genotype; all trials are nested MLflow runs with the
same metric names and mode/seed/steps/n_inter/m tags, so they compare side by side.

    python tune_jobs/ablation.py --smoke-test
    python tune_jobs/ablation.py --seeds 1,2,3 --steps 4,8 --n-inter 2,3 --m 2,3
    python tune_jobs/ablation.py --no-retrain --modes intra,joint
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a fresh clone

from ess.tune import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("ablation", description=__doc__.split("\n\n")[0]))
