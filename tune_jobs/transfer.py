"""Compare cells on the NER/chunking transfer task across seeds on Ray Tune (BiRNN-CRF tagger, span F1).

    python tune_jobs/transfer.py --smoke-test
    python tune_jobs/transfer.py --cells lstm,DARTS_V2,best_genotype.json --seeds 1,2,3 --tasks conll2003
    python tune_jobs/transfer.py --preset paper --tasks conll2003,wnut17 --transfer "epochs=30"
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a fresh clone

from ess.tune import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("transfer", description=__doc__.split("\n\n")[0]))
