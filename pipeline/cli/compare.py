"""``p11lens compare BASE_OUT CAND_OUT [-o FILE] [--format] [--fail-on SPEC...]``: run vs run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.cli.report import output_format
from pipeline.errors import EXIT_FINDINGS, EXIT_OK
from reports.formats import FORMATS
from reports.thresholds import MIN_SAMPLES, parse_fail_on_list

log = logging.getLogger("p11lens.compare")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="what changed between two analyzed runs; --fail-on for CI",
        description=(
            "Compare two output folders (baseline, candidate): per-function latency percentiles with "
            "deltas, call mix, new or vanished return codes, error-rate changes and new findings. "
            "Writes text to stdout unless -o FILE is given. With --fail-on, exits 1 when a threshold "
            "is crossed: p95=+20% (any function, relative; needs a rise over 1 ms), p99@C_Sign=+5ms, "
            "errors=+0, error_rate=+0.5pp, leaked=+0, findings=high, rv=new. "
            f"Latency thresholds skip functions with fewer than {MIN_SAMPLES} timed calls in either run "
            "(a percentile of a handful of calls is noise); when such a function moved beyond the "
            "limit all the same, a warning says so on stderr and in the comparison."
        ),
    )
    p.add_argument("base", type=Path, metavar="BASE_OUT", help="baseline output folder")
    p.add_argument("cand", type=Path, metavar="CAND_OUT", help="candidate output folder")
    p.add_argument("-o", "--output", metavar="FILE", default=None, help="write the comparison here (default: stdout)")
    p.add_argument("-f", "--format", choices=sorted(FORMATS), default=None,
                   help="html, md or txt (default: from -o's extension, else txt)")
    p.add_argument("--fail-on", action="append", default=[], metavar="SPEC",
                   help=f"exit 1 when this threshold is crossed (repeatable, or comma-separated); latency specs skip functions with under {MIN_SAMPLES} timed calls in either run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.outputs import recover
    from reports.compare import compare_runs
    from reports.render import render_comparison, write_text  # here, not at the top: `p11lens --help` loads no data library

    thresholds = parse_fail_on_list(args.fail_on)  # bad specs fail before any work
    for out in (args.base, args.cand):
        if out.is_dir():
            recover(out)  # read whole sets, not ones a killed run was installing
    comp = compare_runs(args.base, args.cand, thresholds)
    fmt = args.format or (output_format(None, args.output) if args.output and args.output != "-" else "txt")
    text = render_comparison(comp, fmt)
    if args.output and args.output != "-":
        print(write_text(Path(args.output), text))
    else:
        sys.stdout.write(text)
    for v in comp.verdicts:
        if v.crossed:
            log.error("threshold crossed: %s: %s", v.threshold, v.detail)
    for warning in comp.warnings:
        log.warning("warning: %s", warning)
    return EXIT_FINDINGS if comp.failed else EXIT_OK
