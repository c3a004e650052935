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
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline._native import Scanner, plan
from pipeline.assemble import Counts, Coverage
from pipeline.records import CALLS_SCHEMA
from pipeline.stream import BLOCK_SIZE, MAGIC_BYTES, LogReader, sniff

_LISTS = {"attributes", "secrets", "flags", "created"}
MIN_RANGE_BYTES = 4 << 20  # a thread per 4 MiB at most: below that a range costs more than it saves
WARMUP_BYTES = 256 << 10
SPILL_LIMIT_LINES = 20_000  # a range gives up on a record still open this far past its end (a truncated one)


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
    return pa.repeat(pa.scalar(source, pa.string()), rows)


def batch_table(source: str, batch: dict) -> pa.Table:
    """A native batch as a table of ``CALLS_SCHEMA``, in line order."""
    rows = batch["rows"]
    arrays = [
        _source_column(source, rows) if field.name == "source" else _column(field, rows, batch[field.name])
        for field in CALLS_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=CALLS_SCHEMA)


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
    """What one input gave: its size and hash as stored, its text's size (and compression),
    and the scanner's accounting."""

    size: int
    sha256: str
    text_size: int
    compression: dict | None
    counts: Counts
    coverage: Coverage
    dialects: set[str]
    processes: int


def _accounting(report: dict) -> tuple[Counts, Coverage, set[str], int]:
    return Counts(**report["counts"]), Coverage(**report["coverage"]), set(report["dialects"]), report["processes"]


def scan_stream(text: LogReader, source: str, writer: TableWriter) -> Scanned:
    """Scan one log from its (plain or decompressed) text, read as `pipeline.stream` reads it:
    the same reads, so the same blocks."""
    scanner = Scanner()
    while chunk := text.read(BLOCK_SIZE):
        for batch in scanner.read(chunk):
            writer.write(batch_table(source, batch))
    for batch in scanner.finish():
        writer.write(batch_table(source, batch))
    compression = None
    if text.compression is not None:
        compression = {"format": text.compression, "uncompressed_size": text.size, "complete": not text.truncated}
    return Scanned(text.raw_size, text.digest.hexdigest(), text.size, compression, *_accounting(scanner.report()))


def _hash(path: str, on_bytes: Callable[[int], None] | None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return size, digest.hexdigest()


def _scan_range(path: str, part: dict, last: bool, sink: Callable[[dict], None]) -> dict:
    """One range of a file: warm up, prime the blocks a whole-file pass had pending, then read
    on until every record the range owns is closed."""
    state = part["state"]
    scanner = Scanner(start=state, hint_bytes=part["end"] - part["start"])
    own_to = state["own_to"]
    with open(path, "rb") as fh:
        fh.seek(part["warm_from"])
        if part["start"] > part["warm_from"]:
            scanner.warm(fh.read(part["start"] - part["warm_from"]))
        if part["read_to"] > part["start"]:
            scanner.prime(fh.read(part["read_to"] - part["start"]))
        stopped = False
        while chunk := fh.read(BLOCK_SIZE):
            for batch in scanner.read(chunk):
                sink(batch)
            if not last and scanner.line >= own_to and (not scanner.owns_open_records() or scanner.line > own_to + SPILL_LIMIT_LINES):
                stopped = True
                break
    for batch in scanner.stop() if stopped else scanner.finish():
        sink(batch)
    return scanner.report()


def scan_file(
    path: str, source: str, writer: TableWriter, workers: int, spill_dir: Path, on_bytes: Callable[[int], None] | None = None
) -> Scanned | None:
    """Scan one file with ``workers`` threads over byte ranges (None: one range is better).

    The first range's tables go straight to the writer; the others' wait in Arrow IPC files
    (uncompressed, beside the output) until the first range is done, since only then is it
    known which banner a pid seen in several ranges belongs to: the one a single pass gives it.
    """
    with open(path, "rb") as fh:
        if sniff(fh.read(MAGIC_BYTES)) is not None:
            return None  # a compressed log is read as one stream
    ranges = plan(os.fsencode(path), workers, BLOCK_SIZE, MIN_RANGE_BYTES, WARMUP_BYTES)
    if len(ranges) < 2:
        return None
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix=".native-") as spill, ThreadPoolExecutor(
        max_workers=len(ranges) + 1, thread_name_prefix="native-range"
    ) as pool:
        hashed = pool.submit(_hash, path, on_bytes)
        parts = [Path(spill) / f"part{k}.arrow" for k in range(len(ranges))]
        sinks = [IpcSink(p, source) for p in parts[1:]]
        direct = lambda batch: writer.write(batch_table(source, batch))  # noqa: E731
        futures = [
            pool.submit(_scan_range, path, part, k == len(ranges) - 1, direct if k == 0 else sinks[k - 1].add)
            for k, part in enumerate(ranges)
        ]
        reports = [f.result() for f in futures]
        for sink in sinks:
            sink.close()
        size, sha256 = hashed.result()
        remaps = _pid_remaps(reports)
        used = set(reports[0]["processes_used"])
        for sink, remap in zip(sinks, remaps[1:]):
            used |= sink.replay(writer, remap)
    counts, coverage = Counts(), Coverage()
    for report in reports:
        counts.absorb(Counts(**report["counts"]))
        coverage.absorb(Coverage(**report["coverage"]))
    dialects = set().union(*(r["dialects"] for r in reports))
    return Scanned(size, sha256, size, None, counts, coverage, dialects, max(len(used), counts.banners))


def _pid_remaps(reports: list[dict]) -> list[dict[int, int]]:
    """Per range, the pids whose process is not the one a single pass gives them: the first
    range's view of a pid it saw, else that of the range that saw the pid first."""
    owner = {pid: (-1, process) for pid, process in reports[0]["pid_process"].items()}
    for report in reports[1:]:
        for pid, line in report["pid_first_line"].items():
            if pid not in owner or line < owner[pid][0]:
                owner[pid] = (line, report["pid_process"][pid])
    return [
        {pid: process for pid, (_, process) in owner.items() if report["pid_process"].get(pid, process) != process}
        for report in reports
    ]


class IpcSink:
    """A range's tables, held in an uncompressed Arrow IPC file until they can be written."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        self._file = pa.ipc.new_file(str(path), CALLS_SCHEMA)

    def add(self, batch: dict) -> None:
        self._file.write_table(batch_table(self.source, batch))

    def close(self) -> None:
        self._file.close()

    def replay(self, writer: TableWriter, remap: dict[int, int]) -> set[int]:
        """Write the held tables, the pids of ``remap`` moved to their single pass's process;
        the processes of their rows."""
        import pyarrow.compute as pc  # only a parallel scan needs it

        used: set[int] = set()
        with pa.OSFile(str(self.path)) as source:  # read, not mapped: a mapped file's pages count as the process's memory
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                table = pa.Table.from_batches([reader.get_batch(i)], schema=CALLS_SCHEMA)
                if remap:
                    table = _remapped(table, remap)
                used |= set(pc.unique(table["process"]).to_pylist())
                writer.write(table)
        return used


def _remapped(table: pa.Table, remap: dict[int, int]) -> pa.Table:
    import pyarrow.compute as pc

    pids = pa.array(list(remap), pa.uint64())
    at = pc.index_in(table["pid"], value_set=pids)
    process = pc.if_else(pc.is_valid(at), pc.take(pa.array(list(remap.values()), pa.int32()), at), table["process"])
    return table.set_column(table.schema.get_field_index("process"), CALLS_SCHEMA.field("process"), process)
