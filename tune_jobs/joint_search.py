"""Joint ESS search over several seeds on Ray Tune, then a short retrain of the best genotypes.

    python tune_jobs/joint_search.py                      # cpu-small preset, local Ray, MLflow in runs/tune/mlflow.db
    python tune_jobs/joint_search.py --smoke-test         # about a minute
    python tune_jobs/joint_search.py --preset paper --address auto --storage-path /mnt/shared/tune \\
        --tracking-uri http://127.0.0.1:5000             # on the cluster of cluster.yaml
    python tune_jobs/joint_search.py --resume --name NAME # continue an interrupted experiment

Prints the best genotype, where its artifacts are, and the `mlflow ui` command.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a fresh clone

from ess.tune import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("joint_search", description=__doc__.split("\n\n")[0]))
