"""``p11lens parse LOG... -o OUT``: spy logs → ``OUT/calls.parquet`` + ``OUT/manifest.json``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cli import write_stdout
from pipeline.engines import ENGINES, MIN_RANGE_BYTES, NATIVE, default_workers
from pipeline.errors import EXIT_FINDINGS, EXIT_OK

log = logging.getLogger("p11lens")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parse",
        help="parse spy logs into calls.parquet",
        description=(
            "Parse OpenSC pkcs11-spy logs (any version 0.20-0.27; several processes, threads, "
            "truncated files and stderr noise included) into OUT/calls.parquet, one row per PKCS#11 "
            "call, and OUT/manifest.json, which accounts for every input line. PINs and data "
            "buffers are never stored, only their lengths. Use - to read a log from stdin."
        ),
    )
    add_input_options(p)
    p.set_defaults(run=run)


def add_input_options(p: argparse.ArgumentParser) -> None:
    """The inputs and output folder shared by ``parse`` and ``run``."""
    p.add_argument("logs", nargs="+", metavar="LOG", help="spy log file(s), or - for stdin")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output folder (created if missing)")
    p.add_argument(
        "-j", "--workers", type=_positive, default=default_workers(), metavar="N",
        help=f"workers for a large log: threads of the native engine (one per 4 MiB at most), processes of the reference one (one per {MIN_RANGE_BYTES >> 20} MiB at most); default: the CPUs available, %(default)s here",
    )
    p.add_argument(
        "--engine", choices=ENGINES, default=NATIVE,
        help="native: the compiled scanner (default); reference: the pyparsing grammar it is tested against (slow)",
    )
    p.add_argument(
        "--strict", action="store_true",
        help="exit 1 when an input has unreadable call records (lines shaped like spy output that could not be "
             "read into a call; without --strict a warning); the outputs are written either way",
    )


def parse_with_progress(args: argparse.Namespace, into: Path) -> dict:
    """Parse ``args.logs`` into the folder ``into`` (the staging folder of ``args.output``)."""
    from pipeline.cli.progress import byte_progress
    from pipeline.parse import check_inputs, input_size, parse_logs  # here, not at the top: `p11lens --help` loads no data library

    check_inputs(args.logs)
    sizes = [input_size(path) for path in args.logs]
    total = None if None in sizes else sum(sizes)
    with byte_progress(total, "parse") as advance:
        return parse_logs(args.logs, into, advance, args.workers, args.engine)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    from pipeline.outputs import replacing
    from pipeline.parse import check_inputs  # here, not at the top: `p11lens --help` loads no data library

    check_inputs(args.logs)  # a bad input fails in one line, before anything is created
    with replacing(args.output) as stage:
        manifest = parse_with_progress(args, stage)
    write_stdout(summary_line(manifest, args.output) + "\n")
    return strict_verdict(args, manifest)


def strict_verdict(args: argparse.Namespace, manifest: dict) -> int:
    """Exit 1 under --strict when an input has unreadable call records (each was warned about
    as it was parsed; this line is for ``-q``, which keeps only errors)."""
    lossy = [i for i in manifest["inputs"] if i["coverage"].get("unreadable_lines")]
    if args.strict and lossy:
        log.error("--strict: %d of %d input(s) have unreadable call records", len(lossy), len(manifest["inputs"]))
        return EXIT_FINDINGS
    return EXIT_OK


def summary_line(manifest: dict, out: Path) -> str:
    counts, coverage = manifest["counts"], manifest["coverage"]
    return (
        f"{counts['records']} records ({counts['incomplete']} incomplete, {counts['uncertain']} uncertain) "
        f"from {len(manifest['inputs'])} log(s); of {coverage['lines']} lines, {coverage['unreadable_lines']} unreadable "
        f"call-record lines and {coverage['other_lines']} of other text → {out / 'calls.parquet'}"
    )
