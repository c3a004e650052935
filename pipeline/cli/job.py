"""``p11lens job CONFIG.toml`` (and ``p11lens job --init [PATH]``): the scheduled, incremental job."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.cli import write_stdout
from pipeline.errors import P11lensError

log = logging.getLogger("p11lens.job")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "job",
        help="incremental parse + analyze + report from a TOML config (cron-safe)",
        description=(
            "Run a scheduled job described by CONFIG.toml: parse only what is new in the input logs "
            "(checkpoint per file), keep a day-partitioned calls dataset (OUT/calls/date=*/part-*.parquet), "
            "recompute the stage outputs and reports, compare with a baseline, append a line to "
            "OUT/runs.jsonl. Exit codes: 0 ok, 1 a fail_on threshold crossed, 2 configuration or input "
            "error, 3 another run holds the lock. --init writes a commented example config."
        ),
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.toml", help="the job configuration")
    p.add_argument("--init", nargs="?", const="p11lens-job.toml", default=None, metavar="PATH",
                   help="write a commented example configuration to PATH (default: p11lens-job.toml) and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.jobs.config import load_config, write_example

    if args.init is not None:
        if args.config is not None:
            raise P11lensError("give either CONFIG.toml or --init PATH, not both")
        write_stdout(f"wrote {write_example(args.init)}\n")
        return 0
    if args.config is None:
        raise P11lensError("give a job configuration (p11lens job CONFIG.toml), or --init to write an example")
    cfg = load_config(args.config)
    from pipeline.jobs.run import run_job

    report = run_job(cfg)
    for warning in report.warnings:
        log.warning("%s", warning)
    for crossed in report.crossed:
        print(f"p11lens: threshold crossed: {crossed}", file=sys.stderr)
    write_stdout(
        f"job: {report.files} file(s), {len(report.changed)} changed, {report.new_records} new record(s), "
        f"{'outputs updated' if report.analyzed else 'outputs unchanged'} → {cfg.output}\n"
    )
    return report.exit_code
