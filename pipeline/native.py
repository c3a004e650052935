"""The native engine (``--engine native``): a log's bytes through `pipeline._native`, the Rust
scanner, into ``calls.parquet``.

The scanner is a second implementation of the reference engine's contract (``grammars/``,
`pipeline.assemble`): it cuts the bytes into the blocks `pipeline.stream` would, reads each
the way the grammar and the assembler do, and hands back record batches as Arrow buffers,
which become pyarrow arrays of ``CALLS_SCHEMA`` here without another pass over the values.
Every scanning call releases the GIL, so reading, hashing, scanning and the Parquet encoding
(on the writer's thread) overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline._native import Scanner
from pipeline.assemble import Counts, Coverage
from pipeline.records import CALLS_SCHEMA
from pipeline.stream import BLOCK_SIZE

_LISTS = {"attributes", "secrets", "flags", "created"}
_STRINGS = {"func", "rv_name", "mechanism", "user_type"}


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


def _column(field: pa.Field, rows: int, parts: tuple) -> pa.Array:
    """One column of a native batch: its buffers as the scanner laid them out."""
    if field.name in _LISTS:
        valid, offsets, items, *child = parts
        item_type = field.type.value_type
        child_buffers = [None, *map(_buffer, child)]
        values = pa.Array.from_buffers(item_type, items, child_buffers)
        return pa.Array.from_buffers(field.type, rows, [_buffer(valid), _buffer(offsets)], children=[values])
    return pa.Array.from_buffers(field.type, rows, list(map(_buffer, parts)))


def _source_column(source: str, rows: int) -> pa.Array:
    name = source.encode()
    offsets = np.arange(rows + 1, dtype=np.int32) * len(name)
    return pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(name * rows)])


def batch_table(source: str, batch: dict) -> pa.Table:
    """A native batch as a table of ``CALLS_SCHEMA``, in line order."""
    rows = batch["rows"]
    arrays = [
        _source_column(source, rows) if field.name == "source" else _column(field, rows, batch[field.name])
        for field in CALLS_SCHEMA
    ]
    table = pa.Table.from_arrays(arrays, schema=CALLS_SCHEMA)
    return table if batch["sorted"] else table.sort_by("line")


class TableWriter:
    """Appends tables to a Parquet writer on a thread of its own, one in flight at a time."""

    def __init__(self, parquet: pq.ParquetWriter) -> None:
        self.parquet = parquet
        self.written = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="native-writer")
        self._in_flight: Future | None = None

    def write(self, table: pa.Table) -> None:
        self.wait()
        self.written += table.num_rows
        self._in_flight = self._thread.submit(self.parquet.write_table, table)

    def wait(self) -> None:
        if self._in_flight is not None:
            done, self._in_flight = self._in_flight, None
            done.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._thread.shutdown()


@dataclass
class Scanned:
    """What one input gave: its size and hash, and the scanner's accounting."""

    size: int
    sha256: str
    counts: Counts
    coverage: Coverage
    dialects: set[str]
    processes: int


def _scanned(size: int, sha256: str, report: dict) -> Scanned:
    return Scanned(size, sha256, Counts(**report["counts"]), Coverage(**report["coverage"]), set(report["dialects"]), report["processes"])


def scan_stream(
    source: str, stream: BinaryIO, writer: TableWriter, on_bytes: Callable[[int], None] | None = None
) -> Scanned:
    """Scan one log from its stream, reading as `pipeline.stream` does (same blocks)."""
    scanner = Scanner()
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(BLOCK_SIZE):
        digest.update(chunk)
        size += len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
        for batch in scanner.read(chunk):
            writer.write(batch_table(source, batch))
    for batch in scanner.finish():
        writer.write(batch_table(source, batch))
    return _scanned(size, digest.hexdigest(), scanner.report())
