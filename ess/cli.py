"""Helpers shared by the command-line entry points."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from ess.errors import ESSError


def run_main(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an entry point so that an :class:`ESSError` prints one line and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except ESSError as err:  # one line: ESSError escapes line breaks in its message
            print(f"error: {str(err) or type(err).__name__}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
