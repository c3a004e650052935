"""The `p11lens` command: a thin argparse shell over the library.

Each subcommand lives in its own module of this package with two functions,
``add_parser(subparsers)`` and ``run(args) -> int``; this module only wires them up,
configures logging and turns `P11lensError` into one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.errors import EXIT_INTERNAL, EXIT_USAGE, P11lensError, write_error

COMMANDS = ("parse", "drive", "analyze", "report", "run", "compare", "job")

log = logging.getLogger("p11lens")

# Arrow's default memory pool (jemalloc) keeps freed pages for reuse; the system allocator gives
# them back, which lowered the parse's peak RSS by about 25 MiB at the same speed (300 MB bench
# trace: 232-237 MiB -> 211-215 MiB).  Polars' jemalloc without its decay delay saved 10 MiB more
# but cost 10% more time in page returns, so it keeps its default.  Set before pyarrow loads (the
# subcommands import it); a value already in the environment wins.
ALLOCATOR_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (cron mails stay short), exit 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="p11lens",
        description=(
            "Turn OpenSC pkcs11-spy logs into typed call records (Parquet), statistics and reports. "
            "Exit codes: 0 ok, 1 problems found that you asked to fail on, 2 usage or input error, "
            "3 (job) another run holds the lock, 70 an internal error."
        ),
    )
    parser.add_argument("--version", action="version", version=f"p11lens {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pipeline.cli.{name}").add_parser(sub)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.INFO if verbose == 1 else logging.DEBUG if verbose > 1 else logging.WARNING)
    logging.basicConfig(level=level, format="p11lens: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    for name, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)
    if isinstance(sys.stdout, io.TextIOWrapper):  # a file name that is not UTF-8 is printed back as the bytes it was given
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        code = args.run(args)
        write_stdout()  # a full disk or closed pipe behind stdout is reported here, not at exit
        return code
    except P11lensError as exc:
        print(f"p11lens: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("p11lens: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing left to say to it
        _drop_stdout()
        return EXIT_USAGE
    except OSError as exc:
        print(f"p11lens: error: {os_error_line(exc)}", file=sys.stderr)
        _drop_stdout()
        return EXIT_USAGE
    except Exception as exc:  # a bug: say so in one line; -vv shows where
        log.debug("internal error", exc_info=True)
        print(f"p11lens: internal error: {type(exc).__name__}: {exc} (run with -vv for details)", file=sys.stderr)
        return EXIT_INTERNAL


def write_stdout(text: str = "") -> None:
    """Write ``text`` to stdout and flush it; a failure (a full disk behind ``>``) names stdout,
    which Python's own error does not."""
    if sys.stdout is None:  # closed by the caller (``>&-``): nobody to tell
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise write_error(Path("stdout"), exc) from None


def os_error_line(exc: OSError) -> str:
    """An OS error the commands did not name themselves, as one line: the file(s) when the
    error knows them, and the cause."""
    cause = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {cause}" if names else cause


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail again
    with a second message (Python's recipe for a closed pipe)."""
    if sys.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
