"""The parse engines and the defaults the command line shows.

Kept free of data libraries: ``p11lens --help`` builds every subcommand's options from here
without loading Polars, pyarrow or pyparsing.
"""

from __future__ import annotations

import os

NATIVE, REFERENCE = "native", "reference"
ENGINES = (NATIVE, REFERENCE)

MIN_RANGE_BYTES = 64 << 20
"""The reference engine splits a log into worker processes only in ranges this large: below it a
worker costs more than it saves on 2 cores (two workers: 0.86-0.96x one on 30 MB, 0.9x on 100 MB,
1.08x on 300 MB)."""


def default_workers() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
