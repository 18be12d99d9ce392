"""``python -m ess.adapters.mlflow``: see :mod:`ess.adapters.mlflow.cli`."""

import sys

from ess.adapters.mlflow.cli import main

sys.exit(main())
