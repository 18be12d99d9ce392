"""The project's own error types.

Every error a user can cause (a bad file, config value, genotype or checkpoint) is raised as a
subclass of :class:`ESSError` with a one-line message naming the file and the field; command-line
entry points print that line instead of a traceback (see :func:`ess.cli.run_main`).
"""


def one_line_message(text: str) -> str:
    """``text`` with every line break and other control character escaped (``\\n``, ``\\x00``, ...).

    Messages embed file names and values from user input, which may themselves hold a newline; escaping
    (rather than dropping) keeps the message one line and still shows what was there.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def decode_utf8(data: bytes, where: str, error: type[Exception]) -> str:
    """``data`` as UTF-8 text, else ``error`` naming ``where``, the first invalid byte, its offset and line (put
    into ``where`` where it holds ``{line}``, as in ``file:{line}``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        tail = "" if "{line}" in where else f" (line {line})"
        raise error(f"{where.replace('{line}', str(line))}: not UTF-8 text: invalid byte 0x{data[err.start]:02x} "
                    f"at byte offset {err.start}{tail}") from None


class ESSError(Exception):
    """Base class of every user-facing error in ess.

    The message is always one line: line breaks and control characters in it (from a file name or a
    value read from a file) are escaped on construction.
    """

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (one_line_message(args[0]), *args[1:])
        super().__init__(*args)


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
