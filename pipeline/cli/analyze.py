"""``p11lens analyze OUT``: ``OUT/calls.parquet`` → one Parquet file per stage + manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import write_stdout


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="statistics and findings from calls.parquet",
        description=(
            "Read OUT/calls.parquet (written by `p11lens parse`) and write OUT/latency.parquet, "
            "latency_over_time.parquet, errors.parquet, sessions.parquet, processes.parquet, "
            "mechanisms.parquet and findings.parquet; list them in OUT/manifest.json. Latency is an "
            "upper bound: the spy stamps only call entry, to the millisecond."
        ),
    )
    p.add_argument("out", type=Path, metavar="OUT", help="folder holding calls.parquet (the -o of parse)")
    p.add_argument(
        "--bucket",
        metavar="SIZE",
        help="time bucket of latency_over_time, e.g. 10s, 1m, 1h (default: sized to give 60-200 buckets)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.analyze import analyze
    from pipeline.outputs import replacing  # here, not at the top: `p11lens --help` loads no data library

    with replacing(args.out, create=False) as stage:  # stages and manifest swap in together; older reports go
        manifest = analyze(args.out, bucket=args.bucket, into=stage)
    stages = manifest["stages"]
    outputs = stages["outputs"]
    severities = ", ".join(f"{n} {s}" for s, n in stages["findings_by_severity"].items()) or "none"
    write_stdout(
        f"{outputs['sessions']['rows']} sessions, {outputs['latency']['rows']} latency rows, "
        f"{outputs['findings']['rows']} findings ({severities}) in {stages['elapsed_s']:.2f} s → {args.out}\n"
    )
    return 0
