"""Run every analysis stage over ``OUT/calls.parquet`` (the library side of ``p11lens analyze``).

The calls are read lazily, only the columns the stages use; the per-call facts all stages
share (latency, category, family, operation mechanism: ``stages.common.derive``) are computed
once with the streaming engine and held in memory for the stages (about 150 bytes per call).  Each
stage's result is written atomically to ``OUT/<stage>.parquet`` and listed, with its row count,
in the ``stages`` section of ``OUT/manifest.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import polars as pl

from pipeline.errors import InputError
from pipeline.stages.common import derive
from pipeline.stages.errors import errors
from pipeline.stages.findings import findings
from pipeline.stages.latency import latency, latency_over_time, parse_bucket
from pipeline.stages.mechanisms import mechanisms
from pipeline.stages.sessions import processes, session_lives, sessions
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
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})") from None


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


def analyze(out_dir: Path, bucket: str | None = None, calls: pl.LazyFrame | None = None) -> dict:
    """Write every stage output into ``out_dir``; return the manifest with its ``stages`` section.

    ``calls``: the calls to analyze instead of ``OUT/calls.parquet`` (``p11lens job`` passes its
    partitioned dataset, or a window of it); it must have the calls columns.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    if bucket is not None:
        parse_bucket(bucket)  # a bad option fails before any work
    given = calls is not None
    calls = calls if given else _open_calls(out_dir)
    ensure_dir(out_dir)
    manifest = _read_manifest(out_dir)
    results: dict[str, dict] = {}
    lap = time.perf_counter()
    # The shared per-call facts, computed once (streaming engine) and held by every stage.
    frame = derive(calls).collect(engine="streaming").lazy()
    timings = {"derive": round(time.perf_counter() - lap, 3)}
    lives = None
    for name, make in (
        ("latency", lambda: latency(frame)),
        ("latency_over_time", lambda: latency_over_time(frame, bucket)),
        ("errors", lambda: errors(frame)),
        ("sessions", lambda: sessions(frame, lives=lives)),
        ("processes", lambda: processes(frame, lives=lives)),
        ("mechanisms", lambda: mechanisms(frame)),
        ("findings", lambda: findings(
            frame, sessions=pl.scan_parquet(out_dir / "sessions.parquet"), inputs=manifest.get("inputs")
        )),
    ):
        lap = time.perf_counter()
        if name == "sessions":
            lives = session_lives(frame).collect().lazy()
        results[name] = {"file": f"{name}.parquet", "rows": write_frame(make(), out_dir / f"{name}.parquet")}
        timings[name] = round(time.perf_counter() - lap, 3)
    del frame
    bucket_seconds = pl.scan_parquet(out_dir / "latency_over_time.parquet").select(pl.col("bucket_seconds").first()).collect().item()
    by_severity = pl.read_parquet(out_dir / "findings.parquet", columns=["severity"])["severity"].value_counts().iter_rows()
    manifest["stages"] = {
        "outputs": results,
        "bucket_seconds": bucket_seconds,
        "findings_by_severity": dict(sorted(by_severity)),
        "latency": "upper bound: ms to the next call entry of the same (source, process, pid, tid); 1 ms resolution",
        "elapsed_s": round(time.perf_counter() - started, 3),
        "timings_s": timings,
    }
    outputs = manifest.setdefault("outputs", {})
    outputs.update({name: info["file"] for name, info in results.items()})
    write_json(out_dir / MANIFEST_FILE, manifest)
    log.info("analyze %s: %s in %.2f s", out_dir, ", ".join(f"{k} {v['rows']}" for k, v in results.items()), manifest["stages"]["elapsed_s"])
    return manifest
