"""``p11lens run LOG... -o OUT``: the main job, parse + analyze + all three reports."""

from __future__ import annotations

import argparse
import logging
import time

from pipeline.cli import write_stdout
from pipeline.cli.parse import add_input_options, parse_with_progress, strict_verdict, summary_line
from reports.formats import FORMATS

log = logging.getLogger("p11lens.run")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="parse, analyze and report in one go (the main job)",
        description=(
            "Parse the spy logs into OUT/calls.parquet, run every analysis stage into "
            "OUT/<stage>.parquet, and write OUT/report.html, OUT/report.md and OUT/report.txt. "
            "Progress goes to stderr (-q silences it); the last line on stdout names the reports."
        ),
    )
    add_input_options(p)
    p.add_argument("--bucket", default=None, metavar="SIZE",
                   help="time bucket for the over-time figures, e.g. 10s, 1m, 1h (default: automatic)")
    p.add_argument("--formats", default="html,md,txt", metavar="LIST",
                   help="report formats to write, comma-separated (default: html,md,txt)")
    p.set_defaults(run=run)


def formats(text: str) -> list[str]:
    from pipeline.errors import P11lensError

    names = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise P11lensError(f"--formats {text!r}: choose from html, md, txt")
    return names


def run(args: argparse.Namespace) -> int:
    from pipeline.analyze import analyze
    from pipeline.outputs import replacing, report_of
    from pipeline.parse import check_inputs
    from reports.render import write_reports  # here, not at the top: `p11lens --help` loads no data library

    wanted = formats(args.formats)
    check_inputs(args.logs)  # a bad input fails in one line, before any progress output
    if not args.quiet and log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # progress is the point of `run`; -q turns it off
    started = time.perf_counter()
    with replacing(args.output) as stage:  # calls, stages and reports replace the previous run's as one set
        log.info("parsing %d log(s) ...", len(args.logs))
        manifest = parse_with_progress(args, stage)
        log.info("%s", summary_line(manifest, args.output))
        log.info("analyzing ...")
        analyze(stage, bucket=args.bucket)
        log.info("rendering %s ...", ", ".join(wanted))
        paths = [args.output / p.name for p in write_reports(stage, wanted, report_of(stage, args.output))]
    log.info("done in %.1f s", time.perf_counter() - started)
    write_stdout("reports: " + " ".join(str(p) for p in paths) + "\n")
    return strict_verdict(args, manifest)
