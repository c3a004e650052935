"""Parse one large log with several worker processes, giving the rows one worker gives.

A log is cut into byte ranges at record boundaries (a blank line followed by a header).
Worker *k* owns the records whose header lies in range *k* and the coverage of its lines.
It starts reading a little earlier (a warm-up, so that its state — open records, recent
overlaps — matches what a single pass would have there) and reads on past its range until
every record it owns is closed.  Line numbers and banner indexes at each cut come from a
cheap byte-level pre-pass (newline and banner counts), so no worker waits for another.

One thing only a single pass knows is which banner a pid was first seen under, when that
was in an earlier range; the parts are therefore concatenated with a pid → process remap
taken from the worker that saw each pid first.  Without pids (before OpenSC 0.24) several
processes in one file are told apart by following their counters from the start, so such a
file is parsed by one worker.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.assemble import Assembler, Counts, Coverage, Start
from pipeline.store import CallsWriter
from pipeline.stream import iter_blocks
from pipeline.records import CALLS_SCHEMA

MIN_RANGE_BYTES = 8 << 20  # below this a worker costs more to start than it saves
WARMUP_BYTES = 256 << 10
SPILL_LIMIT_LINES = 20_000  # give up on a record still open this far past the range (a truncated one)
_BANNER = b"*************** OpenSC PKCS#11 spy *****************"
_BOUNDARY = re.compile(rb"\n\n\d+: ")
_HEADER = re.compile(rb"(?:^|\n)\d+: \S+\r?\n")
_PIDLESS_TS = re.compile(rb"\n\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\r?\n")


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Layout:
    """What the pre-pass learns of a file: line ends and banners, by byte offset."""

    size: int
    banner_offsets: list[int]
    first_header: int  # byte offset of the first header line, or size if none
    sha256: str
    pidless: bool  # some timestamps carry no P:<pid> (before 0.24)

    def process_at(self, offset: int) -> tuple[int, bool]:
        """Banner index in force at ``offset``, and whether any banner or record came before."""
        banners = bisect.bisect_left(self.banner_offsets, offset)
        records_first = self.first_header < (self.banner_offsets[0] if self.banner_offsets else self.size)
        if banners == 0:
            return 0, self.first_header < offset
        return banners - 1 + records_first, True


def scan_layout(path: str, chunk: int = 8 << 20) -> tuple[Layout, list[int], list[int]]:
    """One fast pass: size, hash, banners, first header, and newline counts every ``chunk`` bytes.

    Returns the layout, the chunk start offsets and the newlines before each.
    """
    digest = hashlib.sha256()
    banners: list[int] = []
    starts: list[int] = []
    newlines_before: list[int] = []
    first_header = -1
    pidless = False
    offset = newlines = 0
    tail = b""
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            digest.update(data)
            starts.append(offset)
            newlines_before.append(newlines)
            window = tail + data
            base = offset - len(tail)
            pos = window.find(_BANNER)
            while pos >= 0:
                if base + pos >= offset - len(_BANNER) + 1 and (pos == 0 or window[pos - 1 : pos] == b"\n"):
                    banners.append(base + pos)
                pos = window.find(_BANNER, pos + 1)
            if first_header < 0 and (m := _HEADER.search(window)):
                first_header = base + m.start() + (window[m.start() : m.start() + 1] == b"\n")
            pidless = pidless or _PIDLESS_TS.search(window) is not None
            newlines += data.count(b"\n")
            offset += len(data)
            tail = data[-len(_BANNER) :]
    layout = Layout(offset, sorted(set(banners)), first_header if first_header >= 0 else offset, digest.hexdigest(), pidless)
    return layout, starts, newlines_before


def _lines_before(path: str, offset: int, starts: list[int], newlines_before: list[int]) -> int:
    i = bisect.bisect_right(starts, offset) - 1
    with open(path, "rb") as fh:
        fh.seek(starts[i])
        return newlines_before[i] + fh.read(offset - starts[i]).count(b"\n")


def _boundary_at_or_after(path: str, offset: int, size: int) -> int:
    """Byte offset of the first blank line (followed by a header) at or after ``offset``."""
    with open(path, "rb") as fh:
        while offset < size:
            fh.seek(max(offset - 1, 0))
            data = fh.read(4 << 20)
            m = _BOUNDARY.search(data)
            if m:
                return max(offset - 1, 0) + m.start() + 1
            if len(data) < 4 << 20:
                return size
            offset += len(data) - 16
    return size


@dataclass(frozen=True)
class Task:
    path: str
    part: str
    warm_from: int
    start: Start
    stop_after_line: int  # the worker may stop once past this line with nothing owned open


@dataclass
class PartResult:
    part: str
    counts: Counts
    coverage: Coverage
    dialects: set[str]
    processes_used: set[int]
    pid_process: dict[int, int]
    pid_first_line: dict[int, int] = field(default_factory=dict)


def plan(path: str, workers: int, min_range: int = MIN_RANGE_BYTES, warmup: int = WARMUP_BYTES) -> tuple[Layout, list[Task]] | None:
    """Cut a file into worker ranges; None when one worker is the better choice."""
    size = os.path.getsize(path)
    workers = min(workers, size // min_range)
    if workers < 2:
        return None
    layout, starts, newlines_before = scan_layout(path)
    if len(layout.banner_offsets) > 1 and layout.pidless:
        return None  # pid-less processes are told apart by their counters: one pass only
    cuts = [0]
    for k in range(1, workers):
        cut = _boundary_at_or_after(path, size * k // workers, size)
        if cut > cuts[-1] and cut < size:
            cuts.append(cut)
    if len(cuts) < 2:
        return None
    lines = [_lines_before(path, c, starts, newlines_before) for c in cuts] + [sys.maxsize]
    tasks = []
    for k, cut in enumerate(cuts):
        warm_from = 0 if k == 0 else _boundary_at_or_after(path, max(cut - warmup, 0), size)
        warm_from = min(warm_from, cut)
        process, seen = layout.process_at(warm_from)
        start = Start(
            lines_before=_lines_before(path, warm_from, starts, newlines_before),
            process=process,
            seen_content=seen,
            own_from=lines[k] + 1,
            own_to=lines[k + 1],
        )
        tasks.append(Task(path, "", warm_from, start, lines[k + 1]))
    return layout, tasks


def run_task(task: Task) -> PartResult:
    """A worker: parse from the warm-up point until every owned record is closed."""
    import gc

    gc.disable()
    first_line: dict[int, int] = {}
    writer = CallsWriter(Path(task.part))
    assembler = Assembler(task.path, writer.rows.append, task.start)
    with open(task.path, "rb") as fh:
        fh.seek(task.warm_from)
        for block in iter_blocks(fh):
            assembler.feed(block)
            writer.flush_if_full()
            if assembler.line >= task.stop_after_line and (
                not assembler.owns_open_records() or assembler.line > task.stop_after_line + SPILL_LIMIT_LINES
            ):
                break
    assembler.finish()
    writer.close()
    for row_pid, row_line in _first_pid_lines(task.part):
        first_line[row_pid] = row_line
    return PartResult(
        task.part, assembler.counts, assembler.coverage, assembler.dialects,
        assembler.processes_used, assembler.pid_process, first_line,
    )


def _first_pid_lines(part: str) -> list[tuple[int, int]]:
    frame = pl.scan_parquet(part).filter(pl.col("pid").is_not_null()).group_by("pid").agg(pl.col("line").min())
    return list(frame.collect().iter_rows())


def parse_parallel(path: str, out_tmp: Path, layout_tasks: tuple[Layout, list[Task]], writer: pq.ParquetWriter) -> tuple[Layout, list[PartResult]]:
    """Run the workers, then append their parts to ``writer`` in order, remapping pids."""
    layout, tasks = layout_tasks
    tasks = [
        Task(t.path, str(out_tmp.with_name(f"{out_tmp.name}.part{k}")), t.warm_from, t.start, t.stop_after_line)
        for k, t in enumerate(tasks)
    ]
    try:
        processes = min(len(tasks), default_workers())
        with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_task, tasks))
        owner: dict[int, tuple[int, int]] = {}  # pid -> (first line, process) from the worker that saw it first
        for result in results:
            for pid, line in result.pid_first_line.items():
                if pid not in owner or line < owner[pid][0]:
                    owner[pid] = (line, result.pid_process[pid])
        for result in results:
            remap = {pid: proc for pid, (_, proc) in owner.items() if result.pid_process.get(pid, proc) != proc}
            _append_part(Path(result.part), writer, remap)
            if remap:
                result.processes_used = {remap.get(p, p) for p in result.processes_used}
    finally:
        for task in tasks:
            Path(task.part).unlink(missing_ok=True)
    return layout, results


def _append_part(part: Path, writer: pq.ParquetWriter, remap: dict[int, int]) -> None:
    for batch in pq.ParquetFile(part).iter_batches(batch_size=65536):
        table = pa.Table.from_batches([batch])
        if remap:
            frame = pl.from_arrow(table).with_columns(
                pl.col("pid").replace_strict(remap, default=pl.col("process"), return_dtype=pl.Int32).alias("process")
            )
            table = frame.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(CALLS_SCHEMA)
        writer.write_table(table)

