"""Parquet and JSON output, always atomic.

Every file is written under a temporary name in its final folder, flushed to disk, then
renamed over the final name: a run that is interrupted leaves the previous file (or none),
never a half-written one.  Readers (DuckDB, Polars, Spark) only ever see whole files.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputError, write_error
from grammars.body import read_fields
from pipeline.records import CALLS_SCHEMA, RAW_SCHEMA, RawCall

COMPRESSION = "zstd"
TS_FORMAT = "%Y-%m-%d %H:%M:%S%.3f"
BATCH_ROWS = 8_192  # rows per Parquet row group, and per read of the body fields (whose working set is most of the parse's memory): 6,144 save about 12 MiB of peak RSS, 4,096 cost 30% more CPU in read_fields (a fixed cost per batch)
BATCH_TEXT = 16 << 20  # or fewer rows when their text (mostly bodies, held until the batch is converted) reaches this


def ensure_dir(path: Path) -> Path:
    """Create an output folder, or say in one line why it cannot be used."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {path} is not writable")
    remove_stale_temps(path)
    return path


# A temporary file's name ends in the writer's pid: ``.calls.parquet.tmp-<pid>`` (atomic_path),
# and ``.calls.parquet.tmp-<pid>.part<k>`` for a parallel worker's part (pipeline.parallel).
_TEMP = re.compile(r"\.tmp-(\d+)(?:\.part\d+)?$")


def remove_stale_temps(folder: Path) -> None:
    """Delete temporary files left by a run that was killed (its pid no longer runs)."""
    for tmp in folder.glob(".*.tmp-*"):
        pid = _TEMP.search(tmp.name)
        if pid and not process_alive(int(pid[1])):
            with contextlib.suppress(OSError):  # gone already, or a folder we may only read
                tmp.unlink()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a pid that exists but is not ours to signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(path: Path) -> None:
    """Make the names in a folder durable (a rename is only as durable as its folder)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final`` that replaces it only if the block succeeds.

    A failed write (a full disk: Arrow's errors name no file) becomes `write_error` naming
    ``final``; an error that names a file of its own (an input that cannot be opened) passes on.
    """
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            raise write_error(final, exc) from None
        raise


@contextlib.contextmanager
def collection_per_batch() -> Iterator[None]:
    """Pause Python's automatic cyclic GC while parsing; `CallsWriter` collects once per batch.

    Tens of thousands of live record tuples make automatic collection scan them over and
    over (measured: 10x slower batch building); the assembler breaks its own reference
    cycles, and one explicit collection per batch bounds anything else.  The objects alive
    before the parse (imported modules) are frozen out of those collections.
    """
    if not gc.isenabled():  # already paused (a parse within a parse: the parallel parent)
        yield
        return
    gc.disable()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


def write_json(path: Path, payload: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def records_frame(rows: list[RawCall]) -> pl.DataFrame:
    """A batch of raw calls as a Polars frame with the ``calls`` schema (bodies read, then dropped)."""
    columns = list(zip(*rows)) if rows else [[] for _ in RAW_SCHEMA]
    arrays = [pa.array(column, type=field.type) for column, field in zip(columns, RAW_SCHEMA)]
    raw = pl.from_arrow(pa.Table.from_arrays(arrays, schema=RAW_SCHEMA))
    return _stamps(read_fields(raw)).select(CALLS_SCHEMA.names)


def _stamps(frame: pl.DataFrame) -> pl.DataFrame:
    """``ts`` as datetimes; a stamp that is no real date and time (month 13, year 0: a damaged
    log) is null and its call flagged ``bad-timestamp`` (years 1-9999 are what every reader takes)."""
    ts = pl.col("ts").str.to_datetime(TS_FORMAT, time_unit="ms", strict=False)
    good = ts.dt.year().is_between(1, 9999)
    bad = pl.col("ts").is_not_null() & ~good.fill_null(False)
    flags = pl.when(bad).then(pl.concat_list(pl.col("flags").fill_null([]), pl.lit(["bad-timestamp"]))).otherwise(pl.col("flags"))
    return frame.with_columns(pl.when(good).then(ts).alias("ts"), flags.alias("flags"))


def _arrow(frame: pl.DataFrame) -> pa.Table:
    """The frame as an Arrow table of the calls schema (plain strings, which every reader knows)."""
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(CALLS_SCHEMA)


def _in_line_order(frame: pl.DataFrame, ranks: dict[str, int]) -> pl.DataFrame:
    """Rows by line within each source; sources by their rank (the order they first came in)."""
    return frame.sort(pl.col("source").replace_strict(ranks, return_dtype=pl.Int64), "line")


def _rank_sources(rows: list[RawCall], ranks: dict[str, int]) -> None:
    """Give each new source of the batch the next rank, in the order its first row came."""
    for row in rows:
        ranks.setdefault(row.source, len(ranks))


class CallsWriter:
    """Collects call records and appends them to ``calls.parquet`` in bounded batches.

    A full batch is converted and written on a background thread while the parser goes on
    with the next one: the conversion (field extraction, Parquet encoding) is Polars' and
    Arrow's Rust/C++ work, which runs without the GIL.  At most one batch is in flight, so
    memory stays at about two batches.

    Rows are written in (source, line) order, so that each row group covers a narrow line
    range (readers skip row groups by their min/max statistics: ``analyze`` reads line
    ranges).  Records close out of order when they overlap others; each batch is sorted, and
    the few rows that close after a later batch was written (a record left open for long,
    typically one that never returned) are kept apart and written in row groups of their own,
    after the others (`flush`).
    """

    def __init__(self, path: Path, batch_rows: int | None = None) -> None:
        self.path = path
        self.rows: list[RawCall] = []
        self.batch_rows = batch_rows or BATCH_ROWS
        self.written = 0
        self._text = 0  # bytes of input read since the last hand-off: bounds the bodies held
        self.parquet = pq.ParquetWriter(path, CALLS_SCHEMA, compression=COMPRESSION)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calls-writer")
        self._in_flight: Future | None = None
        self._reached: dict[str, int] = {}  # per source, the last line written in order
        self._ranks: dict[str, int] = {}  # per source, the order it first came in
        self._late: list[pl.DataFrame] = []  # rows behind it, converted (bodies dropped)

    def flush_if_full(self, text_read: int = 0) -> None:
        """Hand off the batch once it has ``batch_rows`` rows or ``BATCH_TEXT`` bytes of input
        went into it (``text_read``: bytes read since the last call), whichever comes first."""
        self._text += text_read
        held = len(self.rows)
        if held >= self.batch_rows or (self._text >= BATCH_TEXT and held):
            self._hand_off()

    def flush(self) -> None:
        """Write every row collected so far (returns once they are in the file)."""
        if self.rows:
            self._hand_off()
        self._wait()
        self._write_late()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._thread.shutdown()
            self.parquet.close()

    def _hand_off(self) -> None:
        batch = self.rows[:]
        self.rows.clear()  # the same list: producers hold its bound ``append``
        self._text = 0
        self._wait()
        gc.collect(1)  # the parse runs with automatic collection paused (`collection_per_batch`); the young generations hold the batch's garbage
        self.written += len(batch)
        self._in_flight = self._thread.submit(self._write, batch)  # which empties ``batch``

    def _write(self, batch: list[RawCall]) -> None:
        _rank_sources(batch, self._ranks)
        frame = records_frame(batch)
        batch.clear()  # the executor holds the list: let the bodies go with the frame
        frame = _in_line_order(frame, self._ranks)
        behind = pl.col("line") <= pl.col("source").replace_strict(self._reached, default=0, return_dtype=pl.Int64)
        late = frame.filter(behind)
        frame = frame.filter(~behind)
        self._write_table(frame)
        self._reached.update(frame.group_by("source").agg(pl.col("line").max()).iter_rows())
        if late.height:
            # rebuilt from values: a filtered frame would keep the whole batch's buffers alive
            self._late.append(pl.DataFrame(late.rows(), schema=late.schema, orient="row"))
            if sum(f.height for f in self._late) >= self.batch_rows:
                self._write_late()

    def _write_late(self) -> None:
        if self._late:
            late, self._late = pl.concat(self._late), []
            self._write_table(_in_line_order(late, self._ranks))

    def _write_table(self, frame: pl.DataFrame) -> None:
        if frame.height:
            self.parquet.write_table(_arrow(frame))

    def _wait(self) -> None:
        """Wait for the batch in flight; its error, if any, is raised here."""
        if self._in_flight is not None:
            done, self._in_flight = self._in_flight, None
            done.result()


def write_frame(frame: pl.LazyFrame | pl.DataFrame, path: Path) -> int:
    """Write one stage's output atomically; returns its row count."""
    table = (frame.collect(engine="streaming") if isinstance(frame, pl.LazyFrame) else frame).to_arrow()
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=COMPRESSION)
    return table.num_rows
