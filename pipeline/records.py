"""The typed records that cross p11lens's boundaries.

`RawCall` is what the assembler hands to the stream (one per PKCS#11 call found in the
log): the record's frame (header, stamp, return) and its body text, unread.  The body's
fields are read a batch at a time (``grammars.body``) and the body dropped, so it never
leaves the process; `CALLS_SCHEMA` is how the calls look in ``calls.parquet``.  It follows
the record table of ``design.md``; the extra columns (``end_line``, ``uncertain``,
``secrets``, ``flags``) are additions the design allows ("add columns freely, rename none").

The schema needs only pyarrow: the native engine's parse loads nothing else of Python's.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa


class RawCall(NamedTuple):
    """One PKCS#11 call as the spy logged it, its body not yet read (it holds secrets)."""

    source: str
    process: int
    pid: int | None
    tid: int | None
    seq: int
    line: int
    ts: str | None  # "YYYY-MM-DD HH:MM:SS.mmm"; converted to datetime once per batch
    func: str
    rv: int | None
    rv_name: str | None
    complete: bool
    end_line: int
    uncertain: bool
    problems: list[str] | None  # ``out-of-range:<column>`` for a number that fits no column (`unsigned`)
    body: str  # the lines between the timestamp and ``Returned:``, starting with a newline


CALLS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("process", pa.int32(), nullable=False),
        pa.field("pid", pa.uint64()),
        pa.field("tid", pa.uint64()),
        pa.field("seq", pa.int64()),
        pa.field("line", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms")),
        pa.field("func", pa.string(), nullable=False),
        pa.field("rv", pa.uint64()),
        pa.field("rv_name", pa.string()),
        pa.field("complete", pa.bool_(), nullable=False),
        pa.field("slot", pa.uint64()),
        pa.field("session", pa.uint64()),
        pa.field("object", pa.uint64()),
        pa.field("mechanism", pa.string()),
        pa.field("user_type", pa.string()),
        pa.field("in_len", pa.uint64()),
        pa.field("out_len", pa.uint64()),
        pa.field("attributes", pa.list_(pa.string())),
        pa.field("created", pa.list_(pa.uint64())),
        pa.field("end_line", pa.int64(), nullable=False),
        pa.field("uncertain", pa.bool_(), nullable=False),
        pa.field("secrets", pa.list_(pa.string())),
        pa.field("flags", pa.list_(pa.string())),
    ],
    metadata={
        b"p11lens.table": b"calls",
        b"p11lens.ts": b"call entry time as printed by the spy: local time of the traced host, no zone, 1 ms",
    },
)

RAW_SCHEMA = pa.schema(
    [CALLS_SCHEMA.field(name).with_type(pa.string()) if name == "ts" else CALLS_SCHEMA.field(name) for name in RawCall._fields[:-2]]
    + [pa.field("problems", pa.list_(pa.string())), pa.field("body", pa.large_string(), nullable=False)]
)

U64_MAX = (1 << 64) - 1
I64_MAX = (1 << 63) - 1


def unsigned(value: int | None, column: str, problems: list[str]) -> int | None:
    """``value`` as the ``CK_ULONG`` it stands for, or None (noted in ``problems``) if none fits.

    The spy prints a ``CK_RV`` as a signed ``long`` (§3.4): a negative number is a code of
    ``0x80000000`` and above that a 32-bit ``long`` (64-bit Windows) turned negative, or, below
    ``-2**31``, a 64-bit one.
    """
    if value is None or 0 <= value <= U64_MAX:
        return value
    if -(1 << 31) <= value < 0:
        return value + (1 << 32)
    if -(1 << 63) <= value < 0:
        return value + (1 << 64)
    problems.append(f"out-of-range:{column}")
    return None
