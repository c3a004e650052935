"""Run every analysis stage over ``OUT/calls.parquet`` (the library side of ``p11lens analyze``).

The calls are read once, in bounded batches of the columns the stages use; each batch gets
the per-call facts all stages share (latency, category, family, operation mechanism, session
life: ``stages.common.derive_batches``) and is reduced to small summaries (counts per latency,
one row per session life, finding hits, ...: ``stages.common.reduce_calls``).  The stages are
computed from those summaries, so memory depends on the batch size and on the size of the
results (sessions, processes), not on the number of calls.  Each stage's result is written
atomically to ``OUT/<stage>.parquet`` and listed, with its row count, in the ``stages``
section of ``OUT/manifest.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import polars as pl

from pipeline.errors import InputError
from pipeline.stages.common import BATCH_ROWS, reduce_calls
from pipeline.stages.errors import error_counts, errors
from pipeline.stages.findings import finding_hits, findings, logins_without_logout
from pipeline.stages.latency import (
    app_output_spans, bucket_counts, latency, latency_all_calls, latency_counts, latency_over_time, parse_bucket, time_axis,
)
from pipeline.stages.mechanisms import mechanisms
from pipeline.stages.sessions import ends, life_parts, process_counts, processes, session_lives, sessions
from pipeline.store import ensure_dir, write_frame, write_json

log = logging.getLogger(__name__)

CALLS_FILE = "calls.parquet"
MANIFEST_FILE = "manifest.json"
OUTPUTS = ("latency", "latency_over_time", "errors", "sessions", "processes", "mechanisms", "findings")
REQUIRED = ("source", "process", "pid", "tid", "seq", "line", "ts", "func", "rv", "rv_name", "complete", "session",
            "slot", "mechanism", "user_type", "uncertain", "secrets", "end_line")


def _read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: not a p11lens manifest (a JSON {type(manifest).__name__}, not an object)")
    return manifest


@contextlib.contextmanager
def _read_whole(source: Path):
    """A calls file damaged after it was written (a disk error, a copy cut short) is bad input,
    not a bug: Polars finds it only when it reads the pages, and says so in a ComputeError
    that names its Parquet reader."""
    try:
        yield
    except pl.exceptions.ComputeError as exc:
        if not str(exc).startswith("parquet"):
            raise
        raise InputError(f"{source}: damaged Parquet data ({str(exc).splitlines()[0]})") from None


def _open_calls(out_dir: Path) -> pl.LazyFrame:
    path = out_dir / CALLS_FILE
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: no such folder (run `p11lens parse LOG -o {out_dir}` first)")
    if not path.is_file():
        raise InputError(f"{out_dir}: no {CALLS_FILE} (run `p11lens parse LOG -o {out_dir}` first)")
    try:
        calls = pl.scan_parquet(path)
        schema = calls.collect_schema()
    except Exception as exc:  # polars raises its own types for a damaged file
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    missing = [name for name in REQUIRED if name not in schema]
    if missing:
        raise InputError(f"{path}: not a p11lens calls table (missing {', '.join(missing)})")
    return calls


def analyze(
    out_dir: Path, bucket: str | None = None, calls: pl.LazyFrame | None = None, batch_rows: int = BATCH_ROWS,
    into: Path | None = None,
) -> dict:
    """Write every stage output into ``out_dir``; return the manifest with its ``stages`` section.

    ``calls``: the calls to analyze instead of ``OUT/calls.parquet`` (``p11lens job`` passes its
    partitioned dataset, or a window of it); it must have the calls columns.  ``batch_rows``:
    calls per batch of the pass (memory against per-batch overhead; results do not depend on it).
    ``into``: write the stage files and the manifest there instead (a staging folder whose set
    replaces OUT's as a whole, `pipeline.outputs`); ``out_dir`` is only read then.
    """
    out_dir = Path(out_dir)
    target = Path(into) if into is not None else out_dir
    started = time.perf_counter()
    if bucket is not None:
        parse_bucket(bucket)  # a bad option fails before any work
    given = calls is not None
    calls = calls if given else _open_calls(out_dir)
    ensure_dir(target)
    manifest = _read_manifest(out_dir)
    results: dict[str, dict] = {}
    lap = time.perf_counter()
    with _read_whole(out_dir / CALLS_FILE if not given else out_dir):
        axis = time_axis(calls, bucket)
        # One pass over the calls in batches, reduced to the summaries the stages are computed from.
        summary = {
            name: frame.lazy()
            for name, frame in reduce_calls(
                calls,
                {
                    "latency": latency_counts(app_output_spans(manifest.get("inputs"))),
                    "buckets": bucket_counts(axis),
                    "errors": error_counts(),
                    "lives": life_parts(),
                    "ends": ends(),
                    "processes": process_counts(),
                    "hits": finding_hits(),
                },
                batch_rows,
            ).items()
        }
    timings = {"derive": round(time.perf_counter() - lap, 3)}
    lives = session_lives(summary["lives"], summary["ends"]).collect().lazy()
    for name, make in (
        ("latency", lambda: latency(summary["latency"])),
        ("latency_over_time", lambda: latency_over_time(summary["buckets"], axis)),
        ("errors", lambda: errors(summary["errors"])),
        ("sessions", lambda: sessions(lives)),
        ("processes", lambda: processes(summary["processes"], lives, logins_without_logout(summary["hits"]))),
        ("mechanisms", lambda: mechanisms(summary["latency"])),
        ("findings", lambda: findings(
            summary["hits"], sessions=pl.scan_parquet(target / "sessions.parquet"), process_counts=summary["processes"],
            inputs=manifest.get("inputs"),
        )),
    ):
        lap = time.perf_counter()
        results[name] = {"file": f"{name}.parquet", "rows": write_frame(make(), target / f"{name}.parquet")}
        timings[name] = round(time.perf_counter() - lap, 3)
    bucket_seconds = pl.scan_parquet(target / "latency_over_time.parquet").select(pl.col("bucket_seconds").first()).collect().item()
    by_severity = pl.read_parquet(target / "findings.parquet", columns=["severity"])["severity"].value_counts().iter_rows()
    manifest["stages"] = {
        "outputs": results,
        "bucket_seconds": bucket_seconds,
        "findings_by_severity": dict(sorted(by_severity)),
        "latency": "upper bound: ms to the next call entry of the same (source, process, pid, tid); 1 ms resolution",
        "latency_all_calls": latency_all_calls(summary["latency"]),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "timings_s": timings,
    }
    outputs = manifest.setdefault("outputs", {})
    outputs.update({name: info["file"] for name, info in results.items()})
    write_json(target / MANIFEST_FILE, manifest)
    log.info("analyze %s: %s in %.2f s", out_dir, ", ".join(f"{k} {v['rows']}" for k, v in results.items()), manifest["stages"]["elapsed_s"])
    return manifest
