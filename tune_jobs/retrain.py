"""Retrain genotypes on Ray Tune: built-ins, JSON files, or the best runs of an MLflow experiment.

    python tune_jobs/retrain.py --genotypes DARTS_V2,my_cell.json
    python tune_jobs/retrain.py --source-experiment ess-joint_search --source-run NAME --top-k 2
    python tune_jobs/retrain.py --preset paper --genotypes best_genotype.json --train "epochs=8000"
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a fresh clone

from ess.tune import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("retrain", description=__doc__.split("\n\n")[0]))
