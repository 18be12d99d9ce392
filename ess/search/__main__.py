"""``python -m ess.search``: see :mod:`ess.search.cli`."""

import sys

from ess.search.cli import main

sys.exit(main())
