"""Parse spy logs into ``OUT/calls.parquet`` and ``OUT/manifest.json`` (the library side of
``p11lens parse``).

The manifest is the account of the run: for every input its size and SHA-256, the dialects
seen, record counts and line coverage (``lines == record_lines + banner_lines + blank_lines +
unparsed_lines``, with every unparsed span's line range).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from pipeline import __version__
from pipeline import parallel
from pipeline.assemble import Assembler, Counts, Coverage
from pipeline.engines import NATIVE, REFERENCE
from pipeline.errors import InputError
from pipeline.store import CallsWriter, atomic_path, collection_per_batch, ensure_dir, write_json
from grammars import spy
from pipeline.stream import LogReader, iter_blocks

log = logging.getLogger(__name__)

STDIN = "-"
UNREADABLE_SHOWN = 5  # line ranges named in the warning about unreadable call records
CALLS_FILE = "calls.parquet"
MANIFEST_FILE = "manifest.json"


@dataclass
class InputReport:
    path: str
    size: int
    sha256: str
    dialects: list[str]
    counts: dict
    processes: int
    coverage: dict
    compression: dict | None = None  # {"format", "uncompressed_size", "complete"} of a compressed input


def check_inputs(paths: list[str]) -> None:
    """Fail early, in one line, on an input that cannot be opened."""
    if not paths:
        raise InputError("no input log given")
    for path in paths:
        if path == STDIN:
            continue
        if os.path.isdir(path):
            raise InputError(f"{path} is a directory, not a spy log")
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file")
        if not os.access(path, os.R_OK):
            raise InputError(f"{path}: permission denied")


@contextmanager
def _open_input(path: str) -> Iterator[BinaryIO]:
    if path == STDIN:
        if sys.stdin is None:
            raise InputError("stdin is closed (give a log file, or pipe one in)")
        yield sys.stdin.buffer
        return
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    with fh:
        yield fh


def source_label(path: str) -> str:
    """An input's name as the rows' ``source`` and the manifest keep it: the path as given, with
    bytes that are not UTF-8 (a file name from another system, which argv holds as surrogates
    that Parquet, JSON and the reports cannot store) written ``\\xff``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def input_size(path: str) -> int | None:
    return None if path == STDIN else os.path.getsize(path)


def parse_source(
    path: str, writer: CallsWriter, on_bytes: Callable[[int], None] | None = None, workers: int = 1, engine: str = REFERENCE
) -> InputReport:
    """Stream one log through the grammar into the writer's batches (in parallel when it pays)."""
    source = source_label(path)
    if engine == NATIVE:
        return _native_source(path, source, writer, on_bytes, workers)
    if workers > 1 and path != STDIN:
        writer.flush()  # rows of earlier inputs go first
        split = parallel.parse_file(path, writer, workers, source)
        if split is not None:
            return _parallel_report(source, *split, on_bytes)
    assembler = Assembler(source, writer.rows.append)
    with _open_input(path) as stream:
        log_text = LogReader(stream, path, on_bytes)
        for block in iter_blocks(log_text):
            assembler.feed(block)
            writer.flush_if_full(len(block))
    assembler.finish()
    compression = None
    if log_text.compression is not None:
        compression = {"format": log_text.compression, "uncompressed_size": log_text.size, "complete": not log_text.truncated}
        if log_text.truncated:
            log.warning("%s: the %s data ends early (a cut or unfinished file); read the %d bytes of log before the cut",
                        source, log_text.compression, log_text.size)
    return _report(
        source, log_text.raw_size, log_text.digest.hexdigest(), assembler.counts, assembler.coverage, assembler.dialects,
        assembler.processes, log_text.size, compression,
    )


def _native_source(
    path: str, source: str, writer: CallsWriter, on_bytes: Callable[[int], None] | None, workers: int
) -> InputReport:
    """One log through the native engine (`pipeline.native`), its tables into the writer's file."""
    from pipeline import native

    writer.flush()  # rows of earlier inputs go first
    tables = native.TableWriter(writer.parquet)
    try:
        s = native.scan_file(path, source, tables, workers, Path(writer.path).parent, on_bytes) if workers > 1 and path != STDIN else None
        if s is None:
            with _open_input(path) as stream:
                s = native.scan_stream(LogReader(stream, path, on_bytes), source, tables)
    finally:
        tables.close()
    writer.written += tables.written
    if s.compression is not None and not s.compression["complete"]:
        log.warning("%s: the %s data ends early (a cut or unfinished file); read the %d bytes of log before the cut",
                    source, s.compression["format"], s.text_size)
    return _report(source, s.size, s.sha256, s.counts, s.coverage, s.dialects, s.processes, s.text_size, s.compression)


def _parallel_report(source: str, layout, results, on_bytes) -> InputReport:
    """The input's report from the workers' parts (their counts and coverage added up)."""
    if on_bytes is not None:
        on_bytes(layout.size)
    counts, coverage = Counts(), Coverage()
    for result in results:
        counts.absorb(result.counts)
        coverage.absorb(result.coverage)
    processes = max(len(set().union(*(r.processes_used for r in results))), counts.banners)
    dialects = set().union(*(r.dialects for r in results))
    return _report(source, layout.size, layout.sha256, counts, coverage, dialects, processes, layout.size)


def _report(
    path: str, size: int, sha256: str, counts: Counts, coverage: Coverage, dialects: set[str], processes: int,
    text_size: int, compression: dict | None = None,
) -> InputReport:
    """The manifest entry of one input (``size`` and ``sha256`` of the file as stored, which
    differ from the text's ``text_size`` for a compressed one)."""
    if text_size and counts.records == 0 and counts.banners == 0:
        raise InputError(f"{path} is not a pkcs11-spy log (no spy banner and no call record in {text_size} bytes)")
    if coverage.unreadable_lines:
        log.warning("%s", unreadable_warning(path, coverage.unreadable_lines, coverage.unreadable_spans))
    log.info(
        "%s: %d records (%d incomplete); of %d lines, %d unreadable call-record lines and %d of other text",
        path, counts.records, counts.incomplete, coverage.lines, coverage.unreadable_lines, coverage.other_lines,
    )
    return InputReport(
        path=path,
        size=size,
        sha256=sha256,
        dialects=sorted(spy.narrow_dialects(dialects)),
        counts=dataclasses.asdict(counts),
        processes=processes,
        coverage=dataclasses.asdict(coverage),
        compression=compression,
    )


def parse_logs(
    paths: list[str], out_dir: Path, on_bytes: Callable[[int], None] | None = None, workers: int = 1, engine: str = REFERENCE
) -> dict:
    """Parse every input into one ``calls.parquet`` (rows tagged by ``source``); return the manifest.

    With ``workers`` > 1 a large file is parsed by that many processes (`pipeline.parallel`);
    the rows are the same, in the same order within each worker's range.
    """
    check_inputs(paths)
    ensure_dir(out_dir)
    started = datetime.now(timezone.utc)
    with collection_per_batch(), atomic_path(out_dir / CALLS_FILE) as tmp:
        writer = CallsWriter(tmp)
        try:
            reports = [parse_source(path, writer, on_bytes, workers, engine) for path in paths]
        finally:
            writer.close()
        _check_not_empty(reports)
    manifest = {
        "tool": "p11lens",
        "version": __version__,
        "created": started.isoformat(timespec="seconds"),
        "inputs": [dataclasses.asdict(r) for r in reports],
        "dialects": sorted({d for r in reports for d in r.dialects}),
        "counts": _total(r.counts for r in reports),
        "processes": sum(r.processes for r in reports),
        "coverage": _total({k: v for k, v in r.coverage.items() if not k.endswith("_spans")} for r in reports),
        "outputs": {"calls": CALLS_FILE},
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def unreadable_warning(source: str, lines: int, spans: list[list[int]], hint: str = "--strict makes this exit 1") -> str:
    """One line on the call records that were lost: how many lines, and where the first are."""
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:UNREADABLE_SHOWN])
    more = ", ..." if len(spans) > UNREADABLE_SHOWN else ""
    return (f"{source}: {lines} unreadable call-record line(s), shaped like spy output but not read into a call "
            f"(lines {shown}{more}); {hint}")


def _check_not_empty(reports: list[InputReport]) -> None:
    """An input without a single line is worth a warning; no input with one is an error (exit 2):
    a report of 0 calls would only hide the mistake (a wrong path, a spy that never wrote)."""
    empty = ["stdin" if r.path == STDIN else r.path for r in reports if r.coverage["lines"] == 0]
    if len(empty) == len(reports):
        raise InputError(f"nothing to parse: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty (not a single line)")
    for name in empty:
        log.warning("%s is empty (not a single line)", name)


def _total(parts) -> dict:
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total
