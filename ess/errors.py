"""The project's own error types.

Every error a user can cause (a bad file, config value, genotype or checkpoint) is raised as a
subclass of :class:`ESSError` with a one-line message naming the file and the field; command-line
entry points print that line instead of a traceback (see :func:`ess.cli.run_main`).
"""


class ESSError(Exception):
    """Base class of every user-facing error in ess."""


class ConfigError(ESSError):
    """A config file, key or value is invalid."""


class DataError(ESSError):
    """A corpus file is missing, empty, not UTF-8, truncated or otherwise malformed."""


class GenotypeError(ESSError):
    """A genotype (object or JSON) is malformed."""


class CheckpointError(ESSError):
    """A checkpoint cannot be read or does not hold what is needed to resume."""


class DivergenceError(ESSError):
    """Training produced a non-finite loss or gradient."""
