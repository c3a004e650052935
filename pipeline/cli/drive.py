"""``p11lens drive``: run a real workload through pkcs11-spy into SoftHSM2 (or --module).

Writes the spy trace to ``-o LOG`` and the ground truth to ``LOG.truth.json``; see docs/driver.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cli import write_stdout
from pipeline.driver.plans import WORKLOADS
from pipeline.errors import EXIT_FINDINGS, EXIT_OK

log = logging.getLogger("p11lens")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "drive",
        help="run a real PKCS#11 workload through pkcs11-spy, writing a trace and its ground truth",
        description=(
            "Create an isolated SoftHSM2 token, run a seeded workload with python-pkcs11 through "
            "OpenSC's pkcs11-spy, and write the spy trace (-o LOG) and LOG.truth.json. "
            "Needs the Debian packages softhsm2 and opensc (or --module/--spy)."
        ),
    )
    p.add_argument("--workload", choices=WORKLOADS, required=True,
                   help="smoke: one of each basic call; mixed: random mix over a session pool; errors: provoked "
                        "failures; threads: --threads threads; processes: --processes processes into one trace")
    p.add_argument("--ops", type=int, default=50, metavar="N",
                   help="random operations to run (shared out over threads/processes; smoke ignores it) [50]")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="plan seed: the same seed gives the same operations [0]")
    p.add_argument("--threads", type=int, default=4, metavar="N", help="worker threads of the threads workload [4]")
    p.add_argument("--processes", type=int, default=3, metavar="N", help="processes of the processes workload [3]")
    p.add_argument("--module", metavar="PATH", help="real PKCS#11 module (default: SoftHSM2 from the usual paths)")
    p.add_argument("--spy", metavar="PATH", help="pkcs11-spy.so (default: OpenSC's from the usual paths)")
    p.add_argument("--lab", type=Path, metavar="DIR",
                   help="new or empty directory for the token store, kept afterwards (default: a temporary one, removed)")
    p.add_argument("--token-init", choices=("auto", "softhsm2-util", "pkcs11-tool"), default="auto",
                   help="how to initialize the token: softhsm2-util for SoftHSM2, pkcs11-tool for other modules [auto]")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="LOG",
                   help="trace file; an existing one is emptied first unless --append")
    p.add_argument("--append", action="store_true",
                   help="keep an existing trace and append (the spy's own behaviour); the truth covers only this run")
    p.add_argument("--strict", action="store_true", help="exit 1 when any operation's return value differs from the expected one")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.driver import DriveOptions, drive, truth_path  # here, not at the top: `p11lens --help` loads no data library

    opts = DriveOptions(workload=args.workload, trace=args.output, ops=args.ops, seed=args.seed, threads=args.threads,
                        processes=args.processes, module=args.module, spy=args.spy, lab=args.lab,
                        append=args.append, token_init=args.token_init)
    truth = drive(opts)
    s = truth["summary"]
    write_stdout(f"{args.output}: {s['ops']} operations, {s['trace_bytes']} bytes ({s['bytes_per_op']} per operation), "
                 f"{s['ops_per_s']} operations/s; truth in {truth_path(args.output)}\n")
    if s["unexpected"]:
        log.warning("%d operation(s) returned other than expected: indices %s", len(s["unexpected"]), s["unexpected"][:20])
        return EXIT_FINDINGS if args.strict else EXIT_OK
    return EXIT_OK
