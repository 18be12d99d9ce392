"""``python -m analysis`` is ``python -m analysis.report``."""

import sys

from analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
