"""Non-secret argument values the stages need but ``calls.parquet`` does not (yet) hold.

Why: whether a session is read-write (``C_OpenSession`` flags) and whether a generated key
is sensitive, extractable or too small (``CKA_SENSITIVE``, ``CKA_EXTRACTABLE``,
``CKA_MODULUS_BITS`` in the ``[in]`` templates) are values, and the call record keeps only
attribute *names*.  Until the parser stores them (a ``flags`` list[str] column, see
docs/stages.md), they are read back from the source log, for the few records that need them,
using the record's own line range (``line`` .. ``end_line``), and passed to the stages as a
small ``(source, line, flags)`` frame.

Only whitelisted, non-secret values are read: booleans, object class, key type, modulus bits,
value length, and ``CKF_RW_SESSION``.  Each becomes a string ``NAME=VALUE``; entries of
templates other than ``pTemplate`` are prefixed with the template name
(``pPrivateKeyTemplate.CKA_SENSITIVE=False``).  When the log cannot be read (moved, stdin) the
values are simply absent (null), and the manifest says so.

Records whose thread attribution is uncertain are skipped: in an interleaved stretch the
lines between their header and their ``Returned:`` may belong to another call.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import polars as pl

VALUE_FUNCS = (
    "C_OpenSession", "C_GenerateKey", "C_GenerateKeyPair", "C_CreateObject", "C_CopyObject",
    "C_UnwrapKey", "C_DeriveKey",
)
BOOLEAN_ATTRS = frozenset(
    {
        "CKA_TOKEN", "CKA_PRIVATE", "CKA_SENSITIVE", "CKA_ENCRYPT", "CKA_DECRYPT", "CKA_WRAP", "CKA_UNWRAP",
        "CKA_SIGN", "CKA_SIGN_RECOVER", "CKA_VERIFY", "CKA_VERIFY_RECOVER", "CKA_DERIVE", "CKA_EXTRACTABLE",
        "CKA_LOCAL", "CKA_NEVER_EXTRACTABLE", "CKA_ALWAYS_SENSITIVE", "CKA_MODIFIABLE", "CKA_COPYABLE",
        "CKA_DESTROYABLE", "CKA_ALWAYS_AUTHENTICATE", "CKA_WRAP_WITH_TRUSTED", "CKA_TRUSTED",
    }
)
ENUM_ATTRS = frozenset({"CKA_CLASS", "CKA_KEY_TYPE"})
INT_ATTRS = frozenset({"CKA_MODULUS_BITS", "CKA_VALUE_LEN"})
CKF_RW_SESSION = 0x2

_TEMPLATE_RE = re.compile(r"\[(in|out)\] (\w+)\[\d+\]: ?$")
_ENTRY_RE = re.compile(r"    (CKA_[A-Z0-9_]+) +(\S+)(?: / (-?\d+))?")
_ROW_RE = re.compile(r"    00000000  ((?:[0-9A-F]{2} ){1,16})")
_FLAGS_RE = re.compile(r"\[in\] flags = 0x([0-9a-fA-F]+)$")
_NEW_UNIT_RE = re.compile(r"\[(?:in|out)\] |Returned:|\d+: ")

SCHEMA = {"source": pl.String, "line": pl.Int64, "flags": pl.List(pl.String)}
CHUNK = 1 << 22


def record_flags(func: str, lines: list[str]) -> list[str]:
    """``NAME=VALUE`` strings for one record's text (header line first)."""
    out: list[str] = []
    if func == "C_OpenSession":
        for text in lines:
            m = _FLAGS_RE.match(text)
            if m:
                out.append(f"CKF_RW_SESSION={bool(int(m.group(1), 16) & CKF_RW_SESSION)}")
                break
        return out
    template = None
    pending_int: str | None = None
    for text in lines:
        m = _TEMPLATE_RE.match(text)
        if m:
            template = m.group(2) if m.group(1) == "in" else None
            pending_int = None
            continue
        if template is None:
            continue
        if _NEW_UNIT_RE.match(text):
            template = None
            continue
        prefix = "" if template == "pTemplate" else template + "."
        if pending_int is not None:
            row = _ROW_RE.match(text)
            if row:
                data = bytes.fromhex(row.group(1).replace(" ", ""))
                out.append(f"{prefix}{pending_int}={int.from_bytes(data, 'little')}")
            pending_int = None
            continue
        m = _ENTRY_RE.match(text)
        if not m:
            continue
        name, value, length = m.groups()
        if name in BOOLEAN_ATTRS and value in ("True", "False"):
            out.append(f"{prefix}{name}={value}")
        elif name in ENUM_ATTRS and value.startswith(("CKO_", "CKK_")):
            out.append(f"{prefix}{name}={value}")
        elif name in INT_ATTRS and length is not None and 0 < int(length) <= 8:
            pending_int = name
    return out


def _read_ranges(path: str, ranges: list[tuple[int, int]]) -> dict[int, list[str]]:
    """Lines ``first..last`` (1-based, inclusive) of a file for each range, keyed by ``first``.

    One sequential pass in 4 MiB blocks; blocks without a wanted line are only counted.
    """
    ranges = sorted(set(ranges))
    out: dict[int, list[str]] = {}
    idx = 0
    open_ranges: list[tuple[int, int]] = []  # started, not yet finished
    lineno = 1  # number of the first line in the current block
    rest = b""
    with open(path, "rb") as fh:
        while idx < len(ranges) or open_ranges:
            chunk = fh.read(CHUNK)
            if not chunk:
                if not rest:
                    break
                block, rest = rest + b"\n", b""
            else:
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                block, rest = data[:cut], data[cut:]
            n = block.count(b"\n")
            end = lineno + n  # first line number after this block
            if open_ranges or (idx < len(ranges) and ranges[idx][0] < end):
                lines = block.decode("latin-1").split("\n")
                while idx < len(ranges) and ranges[idx][0] < end:
                    open_ranges.append(ranges[idx])
                    out[ranges[idx][0]] = []
                    idx += 1
                still = []
                for first, last in open_ranges:
                    lo = max(first, lineno) - lineno
                    hi = min(last, end - 1) - lineno
                    out[first].extend(t.rstrip("\r") for t in lines[lo : hi + 1])
                    if last >= end:
                        still.append((first, last))
                open_ranges = still
            lineno = end
    return out


def read_flags(records: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Flags for ``records`` (source, line, end_line, func); also the sources that could not be read."""
    wanted: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for source, line, end_line, func in records.select("source", "line", "end_line", "func").iter_rows():
        wanted[source].append((line, end_line, func))
    rows: list[tuple[str, int, list[str]]] = []
    unreadable: list[str] = []
    for source, recs in wanted.items():
        if source == "-" or not os.path.isfile(source):
            unreadable.append(source)
            continue
        try:
            texts = _read_ranges(source, [(a, b) for a, b, _ in recs])
        except OSError:
            unreadable.append(source)
            continue
        for line, _end, func in recs:
            rows.append((source, line, record_flags(func, texts.get(line, []))))
    return pl.DataFrame(rows, schema=SCHEMA, orient="row"), unreadable


def flags_of(calls: pl.LazyFrame) -> tuple[pl.LazyFrame, list[str]]:
    """``(source, line, flags)`` of the records that need values, and the sources not readable.

    The parser's own ``flags`` column is used when calls.parquet has one; else the values are
    read back from the logs.  A small frame, joined by the stages to the few rows that use it.
    """
    schema = calls.collect_schema()
    if "flags" in schema:
        return calls.filter(pl.col("flags").is_not_null()).select("source", "line", "flags"), []
    need = (
        calls.filter(pl.col("func").cast(pl.String).is_in(VALUE_FUNCS) & pl.col("complete") & ~pl.col("uncertain"))
        .select("source", "line", "end_line", pl.col("func").cast(pl.String))
        .unique(["source", "line"])
        .collect()
    )
    flags, unreadable = read_flags(need)
    return flags.lazy(), unreadable


def attach(frame: pl.LazyFrame, flags: pl.LazyFrame | None) -> pl.LazyFrame:
    """``frame`` with a ``flags`` column (null where none is known)."""
    if "flags" in frame.collect_schema():
        return frame
    if flags is None:
        return frame.with_columns(pl.lit(None, pl.List(pl.String)).alias("flags"))
    return frame.join(flags, on=["source", "line"], how="left", maintain_order="left")
