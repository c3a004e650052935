"""Independent views of real spy logs, for checking the parser against the log's own lines.

Nothing here uses the grammar: counts come from plain line scans of the raw bytes, the way
a reviewer would count with grep.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

DATA = Path(__file__).parent / "data" / "spy-examples"
EXAMPLE_LOGS = sorted(DATA.glob("*.log"))
PINS = ("123456", "1234", "87654321", "11112222", "33334444")

_HEADER = re.compile(rb"^(\d+): (\S+)\r?$", re.M)
_RETURNED = re.compile(rb"Returned:  (-?\d+) (\S+?)\r?$", re.M)


def spy_version(path: Path) -> tuple[int, int]:
    """OpenSC version from the example file name suffix (``_0.27.1``, ``_0.23.0-debian``)."""
    major, minor = re.search(r"_(\d+)\.(\d+)\.\d+", path.name).groups()
    return int(major), int(minor)


def header_counts(raw: bytes) -> Counter:
    return Counter(m.group(2).decode("latin-1") for m in _HEADER.finditer(raw))


def returned_counts(raw: bytes) -> Counter:
    """``Returned:`` occurrences anywhere in a line (glued ones included), by return value."""
    return Counter(int(m.group(1)) for m in _RETURNED.finditer(raw))


def line_count(raw: bytes) -> int:
    return raw.count(b"\n") + (0 if not raw or raw.endswith(b"\n") else 1)


def pin_patterns(pin: str) -> list[str]:
    """How a PIN shows up in a spy dump: hex pairs (``31 32``), packed hex, and as text."""
    hexes = [f"{b:02X}" for b in pin.encode()]
    return [" ".join(hexes), "".join(hexes), pin]


def string_values(parquet: Path) -> list[str]:
    """Every string (and list-of-string) value in a Parquet file, for leak searches."""
    out: list[str] = []
    table = pq.read_table(parquet)
    for name in table.column_names:
        column = table.column(name)
        if "string" in str(column.type):
            for value in column.to_pylist():
                if isinstance(value, list):
                    out.extend(v for v in value if v)
                elif value:
                    out.append(value)
    return out


def p11lens(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point, as a user or cron would."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], input=stdin, capture_output=True, timeout=300
    )
