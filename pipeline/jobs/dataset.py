"""The calls dataset: ``OUT/calls/date=YYYY-MM-DD/part-*.parquet`` (hive style, one table).

Polars (``pl.scan_parquet("OUT/calls", hive_partitioning=True)``), DuckDB
(``read_parquet('OUT/calls/*/*.parquet', hive_partitioning=true)``) and Spark read it as one
table with a ``date`` column (the day of the call's ``ts``; ``__HIVE_DEFAULT_PARTITION__``, i.e.
null, for calls without a timestamp).  The files hold the ``calls`` schema of ``calls.parquet``.

Part files are immutable: a run only adds new ones and, in the same commit, drops ones it
replaces (a file's tail, parts merged by compaction, relabelled or expired days).  Each is
written under a temporary name, fsynced and renamed (``pipeline.store.atomic_path``) before the
state that lists it is committed.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.jobs.state import Part, State
from pipeline.records import CALLS_SCHEMA
from pipeline.store import COMPRESSION, atomic_path, fsync_dir, remove_stale_temps

NULL_DATE = "__HIVE_DEFAULT_PARTITION__"
PART_RE = re.compile(r"part-\d+-\d+\.parquet")


def empty_calls() -> pl.DataFrame:
    return pl.from_arrow(CALLS_SCHEMA.empty_table())


def to_table(frame: pl.DataFrame) -> pa.Table:
    return frame.select(CALLS_SCHEMA.names).to_arrow(compat_level=pl.CompatLevel.oldest()).cast(CALLS_SCHEMA)


class PartWriter:
    """Writes this run's part files; names are ``part-<serial>-<n>.parquet``."""

    def __init__(self, calls_dir: Path, serial: int) -> None:
        self.calls_dir = calls_dir
        self.serial = serial
        self.count = 0
        self.dirs: set[Path] = set()
        self.kill_hook = None  # tests: called after each part (see run.KILL_ENV)

    def write(self, frame: pl.DataFrame, tail_of: str | None = None) -> list[Part]:
        """One part per day present in ``frame`` (rows keep their order)."""
        if frame.height == 0:
            return []
        dated = frame.with_columns(pl.col("ts").dt.date().cast(pl.String).fill_null(NULL_DATE).alias("__date"))
        parts = []
        for day in sorted(dated["__date"].unique().to_list()):
            rows = dated.filter(pl.col("__date") == day).drop("__date")
            parts.append(self._write_one(rows, None if day == NULL_DATE else day, tail_of))
        return parts

    def write_lazy(self, frame: pl.LazyFrame, tail_of: str | None = None) -> list[Part]:
        """Like `write`, one day at a time (a large first run need not fit twice in memory)."""
        days = (
            frame.select(pl.col("ts").dt.date().cast(pl.String).fill_null(NULL_DATE).unique().alias("d")).collect()["d"].to_list()
        )
        parts = []
        for day in sorted(days):
            cond = pl.col("ts").is_null() if day == NULL_DATE else pl.col("ts").dt.date().cast(pl.String) == day
            parts.append(self._write_one(frame.filter(cond).collect(), None if day == NULL_DATE else day, tail_of))
        return parts

    def _write_one(self, rows: pl.DataFrame, day: str | None, tail_of: str | None) -> Part:
        self.count += 1
        folder = self.calls_dir / f"date={day or NULL_DATE}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{self.serial:06d}-{self.count:04d}.parquet"
        with atomic_path(folder / name) as tmp:
            pq.write_table(to_table(rows), tmp, compression=COMPRESSION)
        self.dirs.add(folder)
        if self.kill_hook is not None:
            self.kill_hook("part")
        return Part(
            file=f"{folder.name}/{name}",
            date=day,
            rows=rows.height,
            sources=sorted(rows["source"].unique().to_list()),
            tail_of=tail_of,
        )

    def sync(self) -> None:
        """Make the new names durable (the files themselves were fsynced when written)."""
        for folder in sorted(self.dirs):
            fsync_dir(folder)
        if self.dirs:
            fsync_dir(self.calls_dir)


def listed(state: State) -> set[str]:
    return {p.file for p in state.parts}


def cleanup(calls_dir: Path, state: State) -> list[str]:
    """Remove part files the committed state does not list (left by a killed run) and empty days."""
    removed = []
    if not calls_dir.is_dir():
        return removed
    keep = listed(state)
    for folder in sorted(calls_dir.glob("date=*")):
        if not folder.is_dir():
            continue
        remove_stale_temps(folder)
        for f in folder.iterdir():
            rel = f"{folder.name}/{f.name}"
            if PART_RE.fullmatch(f.name) and rel not in keep:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                removed.append(rel)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
    return removed


def remove_files(calls_dir: Path, files: list[str]) -> None:
    """Delete parts a committed state no longer lists (best effort: the next run retries)."""
    for rel in files:
        with contextlib.suppress(FileNotFoundError):
            (calls_dir / rel).unlink()
        with contextlib.suppress(OSError):
            (calls_dir / rel).parent.rmdir()


def scan(calls_dir: Path, parts: list[Part]) -> pl.LazyFrame:
    """The given parts as one LazyFrame with the ``calls`` columns (no ``date``)."""
    if not parts:
        return empty_calls().lazy()
    return pl.scan_parquet([calls_dir / p.file for p in parts], hive_partitioning=False)


def read_parts(calls_dir: Path, parts: list[Part]) -> pl.DataFrame:
    return pl.read_parquet([calls_dir / p.file for p in parts], hive_partitioning=False) if parts else empty_calls()


def relabel(calls_dir: Path, state: State, writer: PartWriter, mapping: dict[str, str | None]) -> tuple[list[Part], list[Part]]:
    """Rewrite the parts holding rows of a source in ``mapping`` with the new source, or without
    those rows where it maps to None (a file to parse again from its start): (added, dropped)."""
    dropped = [p for p in state.parts if set(p.sources) & set(mapping)]
    gone = [source for source, new in mapping.items() if new is None]
    renamed = {source: new for source, new in mapping.items() if new is not None}
    added: list[Part] = []
    for part in dropped:
        frame = read_parts(calls_dir, [part]).filter(~pl.col("source").is_in(gone)).with_columns(pl.col("source").replace(renamed))
        added += writer.write(frame, renamed.get(part.tail_of, part.tail_of) if part.tail_of else None)
    return added, dropped


def compact(calls_dir: Path, state: State, writer: PartWriter, limit: int) -> tuple[list[Part], list[Part]]:
    """Merge a day's committed parts into one when it has more than ``limit``: (added, dropped)."""
    by_day: dict[str | None, list[Part]] = {}
    for p in state.parts:
        if p.tail_of is None:
            by_day.setdefault(p.date, []).append(p)
    added, dropped = [], []
    for day, parts in sorted(by_day.items(), key=lambda kv: kv[0] or ""):
        if len(parts) > limit:
            added += writer.write(read_parts(calls_dir, parts))
            dropped += parts
    return added, dropped
