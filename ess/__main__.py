"""``python -m ess COMMAND``: the ``ess`` command (:mod:`ess.cli`)."""

import sys

from ess.cli import main

sys.exit(main())
