"""Parse one input file from its checkpoint: rows that are final, and a replaceable tail.

The file is read from the checkpoint's byte offset with an assembler started in the state the
checkpoint recorded (line number, banner index, pid → banner map).  After every block the
assembler is asked whether it is *quiet* (no record open or held back); a quiet block end that
is followed by more data is a safe resume point, because everything before it has been emitted
and nothing after it can change those rows.  The rows up to the last such point are final
(*committed*); the rows after it — at least the file's last record, which its writer may still
be appending to, or a call cut at the current end of the file — are the *tail*, stored in
replaceable parts and parsed again from the checkpoint when the file changes.  So after any
sequence of runs the rows equal those of one parse of the whole file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from pipeline.assemble import Assembler, Start
from pipeline.jobs.state import COVERAGE_KEYS, SPAN_KEYS, Checkpoint, Stats
from pipeline.records import RawCall
from pipeline.stream import MAGIC_BYTES, LogReader, iter_sized_blocks, sniff

HEAD_BYTES = 64 << 10
ANCHOR_BYTES = 4096
BIG_TAIL = 8 << 20  # warn when this much of a file stays uncommitted


def _hash_range(fh: BinaryIO, start: int, end: int) -> str:
    digest = hashlib.sha256()
    pos = start
    while pos < end:
        data = os.pread(fh.fileno(), min(1 << 20, end - pos), pos)
        if not data:
            break
        digest.update(data)
        pos += len(data)
    return digest.hexdigest()


def head_hash(fh: BinaryIO, length: int) -> str:
    return _hash_range(fh, 0, length)


def anchor_hash(fh: BinaryIO, offset: int) -> str:
    return _hash_range(fh, max(0, offset - ANCHOR_BYTES), offset)


def changed_reason(fh: BinaryIO, st: os.stat_result, cp: Checkpoint) -> str | None:
    """Why ``cp`` does not describe the start of this file any more (None: resume from it)."""
    if (st.st_dev, st.st_ino) != (cp.dev, cp.ino):
        return "a different file (device/inode changed)"
    if st.st_size < cp.size_seen:
        return f"shrank from {cp.size_seen} to {st.st_size} bytes"
    if head_hash(fh, cp.head_len) != cp.head_sha256:
        return "its first bytes changed"
    if cp.anchor_sha256 and anchor_hash(fh, cp.offset) != cp.anchor_sha256:
        return "bytes before the checkpoint changed"
    return None


def unchanged(st: os.stat_result, cp: Checkpoint) -> bool:
    """Same file, same size and modification time as last read: nothing to do."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (cp.dev, cp.ino, cp.size_seen, cp.mtime_ns)


def _resume_json(asm: Assembler) -> dict:
    """The assembler's resume point as JSON (dict keys become strings), whatever `Start` holds."""
    start = dataclasses.asdict(asm.resume_point())
    start.pop("own_from", None)
    start.pop("own_to", None)
    start.setdefault("pid_process", dict(asm.pid_process))
    return {k: ({str(kk): vv for kk, vv in sorted(v.items())} if isinstance(v, dict) else v) for k, v in start.items()}


def _start(resume: dict) -> tuple[Start, dict[int, int]]:
    """A `Start` from a checkpoint's resume point, and the pid → banner map to seed."""
    names = {f.name for f in dataclasses.fields(Start)}
    values = {k: ({int(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in resume.items()}
    return Start(**{k: v for k, v in values.items() if k in names}), values.get("pid_process", {})


@dataclass
class _Quiet:
    """The assembler at a quiet block end."""

    offset: int
    resume: dict
    counts: dict
    coverage: dict
    spans: dict[str, int]  # per kind of span (`SPAN_KEYS`): how many there were
    last_span: dict[str, list | None]  # and a copy of the last (it may grow later)
    dialects: set
    processes_used: set
    rows: int  # rows emitted before it


@dataclass
class FileResult:
    checkpoint: Checkpoint
    tail_rows: list[RawCall]
    committed_rows: int  # rows handed to the sink (final)
    bytes_read: int
    warnings: list[str] = field(default_factory=list)


def _snapshot(asm: Assembler, offset: int, rows: int) -> _Quiet:
    cov = asm.coverage
    return _Quiet(
        offset=offset,
        resume=_resume_json(asm),
        counts=dataclasses.asdict(asm.counts),
        coverage={k: getattr(cov, k) for k in COVERAGE_KEYS},
        spans={k: len(getattr(cov, k)) for k in SPAN_KEYS},
        last_span={k: list(getattr(cov, k)[-1]) if getattr(cov, k) else None for k in SPAN_KEYS},
        dialects=set(asm.dialects),
        processes_used=set(asm.processes_used),
        rows=rows,
    )


def _split_spans(spans: list[list[int]], count: int, last: list | None) -> tuple[list[list[int]], list[list[int]]]:
    """Spans cut where a quiet point saw ``count`` of them, the last then being ``last`` (a span
    may have grown across the point: its later lines go after)."""
    before = [list(s) for s in spans[:count]]
    after = [list(s) for s in spans[count:]]
    if last is not None:
        extended = before[-1][1]
        before[-1] = list(last)
        if extended > last[1]:
            after.insert(0, [last[1] + 1, extended])
    return before, after


def _split_stats(asm: Assembler, q: _Quiet | None) -> tuple[Stats, Stats]:
    """The assembler's totals split at the quiet point: (before, after)."""
    cov = asm.coverage
    total = Stats(
        counts=dataclasses.asdict(asm.counts),
        coverage={**{k: getattr(cov, k) for k in COVERAGE_KEYS}, **{k: [list(s) for s in getattr(cov, k)] for k in SPAN_KEYS}},
        dialects=sorted(asm.dialects),
        processes_used=sorted(asm.processes_used),
    )
    if q is None:
        return Stats(), total
    split = {k: _split_spans(total.coverage[k], q.spans[k], q.last_span[k]) for k in SPAN_KEYS}
    before = Stats(
        counts=q.counts,
        coverage={**q.coverage, **{k: b for k, (b, _) in split.items()}},
        dialects=sorted(q.dialects),
        processes_used=sorted(q.processes_used),
    )
    after = Stats(
        counts={k: total.counts[k] - q.counts[k] for k in q.counts},
        coverage={**{k: total.coverage[k] - q.coverage[k] for k in q.coverage}, **{k: a for k, (_, a) in split.items()}},
        dialects=sorted(set(asm.dialects)),  # dialect hints of the tail's blocks are not kept apart
        processes_used=sorted(asm.processes_used - q.processes_used),
    )
    return before, after


def parse_file(
    path: str,
    fh: BinaryIO,
    st: os.stat_result,
    base: Checkpoint | None,
    commit: Callable[[list[RawCall]], None],
    on_block: Callable[[], None] | None = None,
) -> FileResult:
    """Parse ``fh`` from ``base`` (None: from the start); final rows go to ``commit`` in batches.

    A compressed file (`pipeline.stream.sniff`) is always read from its start (``base`` must be
    None): a compressed stream cannot be entered at an offset, so its checkpoint keeps no resume
    point, and a change to it means parsing it again (`pipeline.jobs.run`).
    """
    if base is None:
        base = Checkpoint(path=path, dev=st.st_dev, ino=st.st_ino, head_len=0, head_sha256="", size_seen=0, mtime_ns=0)
    compression = sniff(os.pread(fh.fileno(), MAGIC_BYTES, 0))
    rows: list[RawCall] = []
    start, pid_process = _start(base.resume)
    asm = Assembler(path, rows.append, start)
    asm.pid_process.update(pid_process)
    fh.seek(base.offset)
    stream = fh if compression is None else LogReader(fh, path)
    offset = base.offset
    candidate: _Quiet | None = None  # quiet, but only safe once more data follows it
    confirmed: _Quiet | None = None
    committed = 0
    for nbytes, text in iter_sized_blocks(stream, split_tail=True):
        if candidate is not None:
            confirmed = candidate
            candidate = None
            if confirmed.rows:
                commit(rows[: confirmed.rows])
                committed += confirmed.rows
                del rows[: confirmed.rows]
                confirmed.rows = 0
        asm.feed(text)
        offset += nbytes
        if asm.quiet:
            candidate = _snapshot(asm, offset, len(rows))
        if on_block is not None:
            on_block()
    asm.finish()
    size = offset if compression is None else stream.raw_size
    before, after = _split_stats(asm, confirmed)
    cp = dataclasses.replace(
        base,
        dev=st.st_dev,
        ino=st.st_ino,
        head_len=min(size, HEAD_BYTES),
        head_sha256=head_hash(fh, min(size, HEAD_BYTES)),
        size_seen=size,
        mtime_ns=st.st_mtime_ns,
        committed=base.committed.plus(before),
        tail=after,
        missing=False,
        compression=compression,
    )
    if confirmed is not None and compression is None:
        cp.offset = confirmed.offset
        cp.anchor_sha256 = anchor_hash(fh, confirmed.offset)
        cp.resume = confirmed.resume
    cp.tail_bytes = size - cp.offset
    warnings = []
    if compression is not None and stream.truncated:
        warnings.append(f"{path}: the {compression} data ends early (still being written?); read it again when it changes")
    elif cp.tail_bytes > BIG_TAIL and compression is None:
        warnings.append(
            f"{path}: {cp.tail_bytes} bytes after line {cp.lines_before} stay uncommitted (a record there is still open); "
            "they are parsed again whenever the file changes"
        )
    total = cp.stats
    if offset and total.counts["records"] == 0 and total.counts["banners"] == 0:
        warnings.append(f"{path}: not a pkcs11-spy log (no spy banner and no call record in {offset} bytes)")
    return FileResult(cp, rows, committed, size - base.offset, warnings)
