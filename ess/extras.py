"""The optional dependencies: which extra of ``pip install ess[...]`` brings what, said in one line when missing.

The core (``pip install ess``: torch, numpy, pyyaml, tqdm, matplotlib) runs the search, the retraining, the
transfer and the genotype and corpus tools in one process. Each extra adds one concern:

========  ==============================  ============================================================
extra     brings                          for
========  ==============================  ============================================================
tune      ray[tune], optuna, pandas,      the Ray Tune jobs of ``tune_jobs/`` and the tables they print
          scipy
mlflow    mlflow, psutil                  tracking (the jobs' default), ``ess ui``, system metrics
analysis  pandas, scipy                   ``ess report``, ``python -m analysis.results``
cpp       ninja                           the C++ CPU steps (else the Python kernels run)
all       all of the above                the README's first command
========  ==============================  ============================================================

:func:`require` is called where a concern starts (a package's ``__init__``, a driver's first step); the
:class:`MissingExtra` it raises is an :class:`~ess.errors.ESSError` (one ``error:`` line from an entry point)
and an :class:`ImportError` (what a caller that tries an import expects).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from types import TracebackType

from ess.errors import ESSError

#: extra -> the Python modules it brings (what is checked), in the order they are named
EXTRAS: dict[str, tuple[str, ...]] = {
    "tune": ("ray", "optuna", "pandas", "scipy"),
    "mlflow": ("mlflow", "psutil"),
    "analysis": ("pandas", "scipy"),
    "cpp": (),   # a program, not a module: see PROGRAMS
}
#: extra -> the programs it brings (looked up on PATH, as the build that runs them does)
PROGRAMS: dict[str, tuple[str, ...]] = {"cpp": ("ninja",)}


class MissingExtra(ESSError, ImportError):
    """An optional dependency is not installed: the message names the extra that brings it."""


def missing(extra: str) -> list[str]:
    """The modules and programs of ``extra`` that are not installed here."""
    gone = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    return gone + [name for name in PROGRAMS.get(extra, ()) if shutil.which(name) is None]


def message(extra: str, what: str, gone: list[str]) -> str:
    names = ", ".join(gone)
    return (f"{what} needs the {extra} extra: pip install 'ess[{extra}]' "
            f"({names} {'is' if len(gone) == 1 else 'are'} not installed)")


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` naming ``extra`` when anything it brings is missing; ``what`` says who needs it.

    Raised while a script imports its modules, it would end in a traceback: so that it ends in its one line
    there too, the exception is printed as ``error: ...`` by the interpreter's hook for uncaught exceptions
    (that of any other exception is left as it was).
    """
    gone = missing(extra)
    if gone:
        _print_as_one_line()
        raise MissingExtra(message(extra, what, gone))


def extra_of(module: str) -> str | None:
    """The extra that brings top-level ``module`` (``pandas`` -> ``analysis``: the smallest that does), or None."""
    found = [extra for extra, names in EXTRAS.items() if module in names]
    return min(found, key=lambda e: len(EXTRAS[e])) if found else None


def _print_as_one_line() -> None:
    previous = sys.excepthook
    if getattr(previous, "_ess_one_line", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, MissingExtra):
            print(f"error: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    hook._ess_one_line = True   # type: ignore[attr-defined]
    sys.excepthook = hook


__all__ = ["EXTRAS", "PROGRAMS", "MissingExtra", "extra_of", "message", "missing", "require"]
