"""Hyperparameter search of the ESS search on Ray Tune: OptunaSearch (TPE; the study persisted in
an RDB so optuna-dashboard can watch it) with the ASHA scheduler, metric valid perplexity, over the
learning rates, dropouts, m and n_inter (or --config with a `space:` mapping).

    python tune_jobs/hparam_search.py --smoke-test
    python tune_jobs/hparam_search.py --num-samples 16
    optuna-dashboard sqlite:///runs/tune/NAME/optuna.db
    python tune_jobs/hparam_search.py --resume --name NAME   # Tuner.restore, searcher state included
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a fresh clone

from ess.tune import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("hparam_search", description=__doc__.split("\n\n")[0]))
