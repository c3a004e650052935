"""Errors the CLI turns into one line on stderr and an exit code cron can trust."""

from __future__ import annotations

import os
from pathlib import Path

EXIT_OK = 0
EXIT_FINDINGS = 1  # the input was read, but something the user asked to fail on was found
EXIT_USAGE = 2  # bad options, unreadable or non-spy input, unwritable output
EXIT_INTERNAL = 70  # a bug in p11lens (EX_SOFTWARE)


class P11lensError(Exception):
    """A problem the user can fix; its message is the whole story (no traceback)."""

    exit_code = EXIT_USAGE


class InputError(P11lensError):
    """An input that cannot be read or is not a pkcs11-spy log."""


class OutputError(P11lensError):
    """An output location that cannot be written."""


def write_error(path: Path, exc: OSError) -> OutputError:
    """One line that names the file and the cause of a failed write (Arrow's errors carry the
    error number, but name no file and bury the cause in a longer message)."""
    cause = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc) or type(exc).__name__
    return OutputError(f"{path}: cannot write ({cause})")
