"""Parse one large log with several worker processes, giving the rows one worker gives.

A log is cut into byte ranges at record boundaries (a blank line followed by a header).
Worker *k* owns the records whose header lies in range *k* and the coverage of its lines.
It starts reading a little earlier (a warm-up, so that its state — open records, recent
overlaps — matches what a single pass would have there) and reads on past its range until
every record it owns is closed.  Line numbers and the banner state at each cut come from a
cheap byte-level pre-pass (newlines, banner and header lines), so no worker waits for another.
The parent is the first worker: it parses the first range straight into the output while the
other processes parse theirs into part files, appended afterwards.

One thing only a single pass knows is which banner a pid was first seen under, when that
was in an earlier range; the parts are therefore concatenated with a pid → process remap
taken from the worker that saw each pid first.  Without pids (before OpenSC 0.24) processes
are told apart by their counters; that state depends on banner and header lines only, so the
pre-pass replays it (`pipeline.processes`) and hands each worker the state at its start.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import logging
import os
import re
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipeline.engines import MIN_RANGE_BYTES, default_workers
from pipeline.assemble import Assembler, Counts, Coverage, Start
from pipeline.processes import ProcessTracker
from pipeline.store import CallsWriter, collection_per_batch
from pipeline.stream import MAGIC_BYTES, iter_blocks, sniff
from pipeline.records import CALLS_SCHEMA

log = logging.getLogger(__name__)

WARMUP_BYTES = 256 << 10
SPILL_LIMIT_LINES = 20_000  # give up on a record still open this far past the range (a truncated one)
_PR_SET_PDEATHSIG = 1  # prctl(2)
_BOUNDARY = re.compile(rb"\n[ \t\r]*\n\d+: ")
# The lines that change the process state: a header (the counter) or a banner, as whole lines
# (with the grammar's trailing blanks, `spy.WS`).
_EVENT = re.compile(rb"\n(?:(\d+): \S+|\*{15} OpenSC PKCS#11 spy \*{17})[ \t\r]*(?=\n|\Z)")


@dataclass
class Layout:
    """What the pre-pass learns of a file: the parse state at chosen offsets, and its SHA-256.

    The pre-pass reads only up to the last offset it is asked about; `finish` hashes the rest
    while the ranges are being parsed, so no worker waits for it.
    """

    states: dict[int, tuple[int, ProcessTracker]]  # offset -> (lines before it, banner state there)
    digest: hashlib._Hash  # of the first ``size`` bytes
    size: int

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def finish(self, path: str, chunk: int = 1 << 20) -> None:
        with open(path, "rb") as fh:
            fh.seek(self.size)
            while read := fh.read(chunk):
                self.digest.update(read)
                self.size += len(read)


def scan_layout(path: str, offsets: list[int], chunk: int = 1 << 20) -> Layout:
    """One fast byte-level pass up to the last of ``offsets`` (line starts): at each, the lines
    before it and the process state (`ProcessTracker`), replayed from banner and header lines alone."""
    digest = hashlib.sha256()
    tracker = ProcessTracker()
    pending = sorted(set(offsets))
    states: dict[int, tuple[int, ProcessTracker]] = {}
    offset = newlines = 0  # of the start of ``data``
    rest = b""
    with open(path, "rb") as fh:
        while pending:
            read = fh.read(chunk)
            digest.update(read)
            data = rest + read
            if read:
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
            else:
                rest = b""
            start = 0
            while pending and pending[0] <= offset + len(data):
                mark = pending.pop(0) - offset
                _replay(tracker, data[start:mark])
                states[offset + mark] = (newlines + data.count(b"\n", 0, mark), tracker.copy())
                start = mark
            _replay(tracker, data[start:])
            newlines += data.count(b"\n")
            offset += len(data)
            if not read:
                break
        return Layout(states, digest, fh.tell())


def _replay(tracker: ProcessTracker, lines: bytes) -> None:
    """Give ``tracker`` the banner and header lines of ``lines`` (whole lines), in order; the
    headers between two banners as one list (`ProcessTracker.headers`: once per stretch of
    consecutive counters, not once per call)."""
    seqs: list[int] = []
    for counter in _EVENT.findall(b"\n" + lines):  # each line start is behind a newline
        if counter:
            seqs.append(int(counter))
        else:  # a banner
            tracker.headers(seqs)
            seqs = []
            tracker.banner()
    tracker.headers(seqs)


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
    source: str  # the rows' ``source`` (`pipeline.parse.source_label` of the path)


@dataclass
class PartResult:
    part: str
    counts: Counts
    coverage: Coverage
    dialects: set[str]
    processes_used: set[int]
    pid_process: dict[int, int]
    pid_first_line: dict[int, int] = field(default_factory=dict)


def plan(
    path: str, workers: int, min_range: int = MIN_RANGE_BYTES, warmup: int = WARMUP_BYTES, source: str | None = None,
) -> tuple[Layout, list[Task]] | None:
    """Cut a file into worker ranges; None when one worker is the better choice.  ``source``:
    the rows' source (default: the path)."""
    size = os.path.getsize(path)
    workers = min(workers, size // min_range)
    if workers < 2:
        return None
    cuts = [0]
    for k in range(1, workers):
        cut = _boundary_at_or_after(path, size * k // workers, size)
        if cut > cuts[-1] and cut < size:
            cuts.append(cut)
    if len(cuts) < 2:
        return None
    warm = [0] + [min(_boundary_at_or_after(path, max(cut - warmup, 0), size), cut) for cut in cuts[1:]]
    layout = scan_layout(path, cuts + warm)
    lines = [layout.states[cut][0] for cut in cuts] + [sys.maxsize]
    tasks = []
    for k, warm_from in enumerate(warm):
        lines_before, tracker = layout.states[warm_from]
        start = Start(
            lines_before=lines_before,
            process=tracker.process,
            seen_content=tracker.seen,
            next_seq=tracker.next_seq,
            last_pidless=tracker.last_pidless,
            own_from=lines[k] + 1,
            own_to=lines[k + 1],
        )
        tasks.append(Task(path, "", warm_from, start, lines[k + 1], source or path))
    return layout, tasks


def run_task(task: Task) -> PartResult:
    """A worker process: parse one range into its part file."""
    writer = CallsWriter(Path(task.part))
    try:
        result = parse_range(task, writer)
    finally:
        writer.close()
    result.pid_first_line = dict(_first_pid_lines(task.part))
    return result


def parse_range(task: Task, writer: CallsWriter) -> PartResult:
    """Parse from the warm-up point until every owned record is closed, into ``writer``."""
    assembler = Assembler(task.source, writer.rows.append, task.start)
    with collection_per_batch(), open(task.path, "rb") as fh:
        fh.seek(task.warm_from)
        for block in iter_blocks(fh):
            assembler.feed(block)
            writer.flush_if_full(len(block))
            if assembler.line >= task.stop_after_line and (
                not assembler.owns_open_records() or assembler.line > task.stop_after_line + SPILL_LIMIT_LINES
            ):
                break
    assembler.finish()
    return PartResult(
        task.part, assembler.counts, assembler.coverage, assembler.dialects, assembler.processes_used, assembler.pid_process,
    )


def _first_pid_lines(part: str) -> list[tuple[int, int]]:
    frame = pl.scan_parquet(part).filter(pl.col("pid").is_not_null()).group_by("pid").agg(pl.col("line").min())
    return list(frame.collect().iter_rows())


def parse_file(path: str, writer: CallsWriter, workers: int, source: str | None = None) -> tuple[Layout, list[PartResult]] | None:
    """Parse one file with ``workers`` processes into ``writer``; None when one is better.

    The parent is one of them: it parses the first range itself.  The others start (and
    import their libraries) while the parent runs the pre-pass.
    """
    if workers < 2 or os.path.getsize(path) < 2 * MIN_RANGE_BYTES:
        return None
    with open(path, "rb") as fh:
        compression = sniff(fh.read(MAGIC_BYTES))
    if compression is not None:  # a compressed stream cannot be entered at a byte offset
        log.info("%s is %s-compressed: parsed by one worker", path, compression)
        return None
    with _pool(workers - 1) as pool:
        layout_tasks = plan(path, workers, source=source)
        if layout_tasks is None:
            return None
        return parse_parallel(path, layout_tasks, writer, pool)


def _pool(workers: int) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_die_with_parent, initargs=(os.getpid(),))
    for _ in range(workers):
        pool.submit(default_workers)  # spawns a worker now: it imports this module meanwhile
    return pool


def _die_with_parent(parent: int) -> None:
    """Make a worker die with the parse that started it (Linux).  A parent killed with -9 cannot
    stop its workers, which would go on for minutes writing parts that the next run deletes."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def parse_parallel(
    path: str, layout_tasks: tuple[Layout, list[Task]], writer: CallsWriter, pool: ProcessPoolExecutor | None = None,
) -> tuple[Layout, list[PartResult]]:
    """Parse the first range into ``writer`` here while worker processes parse the others into
    part files; then append the parts in order, remapping pids.

    The first range is read from the file's start, so the process it gave each pid it saw is
    a single pass's; for the other pids, the worker that saw a pid first decides.
    """
    layout, (first, *others) = layout_tasks
    target = Path(writer.path)
    others = [
        dataclasses.replace(t, part=str(target.with_name(f"{target.name}.part{k}")))
        for k, t in enumerate(others, 1)
    ]
    try:
        with contextlib.ExitStack() as stack:
            if pool is None:
                pool = stack.enter_context(_pool(min(len(others), max(default_workers() - 1, 1))))
            futures = [pool.submit(run_task, task) for task in others]
            hashing = stack.enter_context(ThreadPoolExecutor(max_workers=1)).submit(layout.finish, path)
            head = parse_range(first, writer)
            writer.flush()
            results = [f.result() for f in futures]
            hashing.result()
        owner: dict[int, tuple[int, int]] = {pid: (-1, proc) for pid, proc in head.pid_process.items()}
        for result in results:
            for pid, line in result.pid_first_line.items():
                if pid not in owner or line < owner[pid][0]:
                    owner[pid] = (line, result.pid_process[pid])
        for result in results:
            remap = {pid: proc for pid, (_, proc) in owner.items() if result.pid_process.get(pid, proc) != proc}
            writer.written += _append_part(Path(result.part), writer.parquet, remap)
            if remap:
                result.processes_used = {remap.get(p, p) for p in result.processes_used}
    finally:
        for task in others:
            Path(task.part).unlink(missing_ok=True)
    return layout, [head, *results]


def _append_part(part: Path, writer: pq.ParquetWriter, remap: dict[int, int]) -> int:
    """Copy a part's rows into ``writer`` (pids remapped), a row group at a time so that its
    row groups stay as they were written (each a narrow line range); returns how many rows."""
    rows = 0
    source = pq.ParquetFile(part)
    for group in range(source.num_row_groups):
        table = source.read_row_group(group, use_threads=False)  # threads: +30 MiB
        rows += table.num_rows
        if remap:
            frame = pl.from_arrow(table).with_columns(
                pl.col("pid").replace_strict(remap, default=pl.col("process"), return_dtype=pl.Int32).alias("process")
            )
            table = frame.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(CALLS_SCHEMA)
        writer.write_table(table)
    return rows

