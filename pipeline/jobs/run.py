"""One job run: lock, reconcile inputs with their checkpoints, parse what is new, commit,
recompute the stage outputs and reports, check thresholds, append a line to ``runs.jsonl``.

Order of durability (what makes kill -9 at any point safe): new part files are written
(temporary name, fsync, rename, fsync of their folders) → the state that lists them and the new
checkpoints is committed atomically → the part files it no longer lists are removed.  A run
that starts removes any part file the committed state does not list, so a killed run leaves
nothing behind that counts.  Stage outputs and reports are recomputed from the dataset whenever
the committed state differs from the one they were made from.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from pipeline import __version__
from pipeline.errors import EXIT_FINDINGS, EXIT_INTERNAL, EXIT_OK, P11lensError
from pipeline.jobs import dataset
from pipeline.jobs.config import JobConfig
from pipeline.jobs.incremental import changed_reason, parse_file, unchanged
from pipeline.jobs.lock import JobLock
from pipeline.jobs.state import COVERAGE_KEYS, Checkpoint, Part, Retired, State, StateError, load_state, save_state
from pipeline.outputs import recover, replacing, report_of
from pipeline.parse import source_label, unreadable_warning
from pipeline.store import CallsWriter, ensure_dir, records_frame, remove_stale_temps, write_json

log = logging.getLogger("p11lens.job")

KILL_ENV = "P11LENS_JOB_KILL_AT"  # tests: "POINT" or "POINT:N" (the Nth time) → SIGKILL ourselves there
STAGE_FILES = ("latency", "latency_over_time", "errors", "sessions", "processes", "mechanisms", "findings")


class _Killer:
    def __init__(self) -> None:
        spec = os.environ.get(KILL_ENV, "")
        point, _, nth = spec.partition(":")
        self.point, self.nth, self.seen = point, int(nth or 1), 0

    def __call__(self, point: str) -> None:
        if point == self.point:
            self.seen += 1
            if self.seen == self.nth:
                os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RunReport:
    exit_code: int = EXIT_OK
    files: int = 0
    changed: list[str] = field(default_factory=list)
    new_records: int = 0
    warnings: list[str] = field(default_factory=list)
    crossed: list[str] = field(default_factory=list)
    analyzed: bool = False
    parts_added: int = 0
    parts_removed: int = 0
    bytes_parsed: int = 0
    timings: dict = field(default_factory=dict)  # seconds per phase


def _expand(cfg: JobConfig) -> list[str]:
    """The inputs as matched, sorted; a relative glob gives paths relative to the config's folder."""
    found: set[str] = set()
    for pattern in cfg.inputs:
        if os.path.isabs(pattern):
            matches = glob.glob(pattern, recursive=True)
        else:
            matches = glob.glob(pattern, root_dir=cfg.base_dir, recursive=True)
        found.update(m for m in matches if os.path.isfile(m if os.path.isabs(m) else cfg.base_dir / m))
    return sorted(found)


def _full(cfg: JobConfig, src: str) -> Path:
    return Path(src) if os.path.isabs(src) else cfg.base_dir / src


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def run_job(cfg: JobConfig) -> RunReport:
    """Run the job once (the caller holds nothing; this takes the lock). Raises `P11lensError`."""
    out = ensure_dir(cfg.output)
    jobdir = ensure_dir(out / "job")
    started = _utc_now()
    report = RunReport()
    with JobLock(jobdir / "lock"):
        try:
            _run_locked(cfg, out, jobdir, report)
        except P11lensError as exc:
            report.exit_code = exc.exit_code
            _append_run(out, cfg, started, report, error=str(exc))
            raise
        except Exception as exc:  # a bug: still leave a line for whoever reads runs.jsonl
            report.exit_code = EXIT_INTERNAL
            _append_run(out, cfg, started, report, error=f"internal error: {type(exc).__name__}: {exc}")
            raise
        _append_run(out, cfg, started, report)
    return report


def _run_locked(cfg: JobConfig, out: Path, jobdir: Path, report: RunReport) -> None:
    kill = _Killer()
    state_path = jobdir / "state.json"
    calls_dir = out / "calls"
    remove_stale_temps(jobdir)
    recover(out)  # a killed run's staged outputs: finished or dropped
    state = load_state(state_path)
    if state is None:
        if calls_dir.is_dir() and any(calls_dir.glob("date=*/part-*.parquet")):
            raise StateError(f"{calls_dir} holds data but {state_path} is missing; move the output folder away to start over")
        state = State()
        save_state(state_path, state)  # before any part: a first run killed later leaves parts this state disowns
    before = json.dumps(state.to_json(), sort_keys=True)
    dataset.cleanup(calls_dir, state)
    calls_dir.mkdir(exist_ok=True)

    sources = []
    for src in _expand(cfg):
        if source_label(src) == src:
            sources.append(src)
        else:  # the rows' source must be UTF-8 (Parquet), and a relabelled one would not match its checkpoint
            report.warnings.append(f"{source_label(src)}: its name is not UTF-8; skipped (rename it)")
    report.files = len(sources)
    if not sources and not state.files:
        raise P11lensError(f"{cfg.path}: no file matches inputs {cfg.inputs} (relative to {cfg.base_dir})")

    writer = dataset.PartWriter(calls_dir, state.serial + 1)
    writer.kill_hook = kill
    added: list[Part] = []
    dropped: list[Part] = []
    stamp = _utc_now().isoformat(timespec="seconds").replace("+00:00", "Z")

    # 1. reconcile: which checkpoints moved (rename by logrotate), which files were replaced
    stats: dict[str, os.stat_result] = {}
    for src in sources:
        try:
            stats[src] = os.stat(_full(cfg, src))
        except OSError as exc:
            report.warnings.append(f"{src}: {exc.strerror}; skipped")
    by_id = {(st.st_dev, st.st_ino): src for src, st in stats.items()}
    relabel: dict[str, str | None] = {}  # old source -> new source, or None: its rows are dropped
    moved: dict[str, Checkpoint] = {}
    for old, cp in state.files.items():
        st = stats.get(old)
        if st is not None and (st.st_dev, st.st_ino) == (cp.dev, cp.ino):
            continue
        new = by_id.get((cp.dev, cp.ino))
        if new is None or new == old:
            continue
        new_cp = state.files.get(new)
        if new_cp is not None and (new_cp.dev, new_cp.ino) == (cp.dev, cp.ino):
            continue
        with open(_full(cfg, new), "rb") as fh:
            if changed_reason(fh, stats[new], cp) is None:
                moved[new] = cp
                relabel[old] = new
                report.warnings.append(f"{old}: renamed to {new} (rotated); its rows now say source={new}")
    files: dict[str, Checkpoint] = {k: v for k, v in state.files.items() if k not in relabel}
    plans: dict[str, Checkpoint | None] = {}
    reparsed: dict[str, int] = {}  # compressed files parsed again from their start: their rows so far
    previous: dict[str, Checkpoint] = {}  # files read on (not replaced): what the last run knew of them
    for src in sources:
        if src not in stats:
            continue
        if src in moved:
            cp = moved[src]
            cp.path = src
        else:
            cp = files.get(src)
        if cp is None:
            if stats[src].st_size:  # an empty new file is no new data (a checkpoint comes with its first bytes)
                plans[src] = None
            continue
        if unchanged(stats[src], cp):
            cp.missing = False
            files[src] = cp
            continue
        with open(_full(cfg, src), "rb") as fh:
            reason = changed_reason(fh, os.fstat(fh.fileno()), cp)
        if reason is None and cp.compression is not None:  # grown in place; a compressed stream has no resume point
            labelled = next((old for old, new in relabel.items() if new == src), src)
            relabel[labelled] = None  # its rows go; it is parsed again from its start
            reparsed[src] = cp.stats.counts["records"]
            previous[src] = cp
            plans[src] = None
            continue
        if reason is None:
            previous[src] = cp
            plans[src] = cp
            continue
        if src in files and src not in moved:
            retired = f"{src} (rotated {stamp})"
            relabel[src] = retired
            state.retired.append(Retired(source=retired, was=src, retired=stamp, stats=cp.stats))
            report.warnings.append(f"{src}: {reason}; parsed from its start, its earlier rows kept as source {retired!r}")
        plans[src] = None
    for src, cp in files.items():
        if src not in stats and src not in relabel and not cp.missing:
            cp.missing = True
            report.warnings.append(f"{src}: no longer found; its rows stay in the dataset")
    if relabel:
        a, d = dataset.relabel(calls_dir, state, writer, relabel)
        added += a
        dropped += d
    new_files: dict[str, Checkpoint] = {k: v for k, v in files.items() if k not in relabel}
    for src, cp in moved.items():
        new_files[src] = cp

    # 2. parse what is new: final rows into a staging file, tails kept apart
    lap = time.perf_counter()
    staging = jobdir / f".staging.parquet.tmp-{os.getpid()}"
    tails: dict[str, list] = {}
    try:
        calls = CallsWriter(staging)

        def commit(rows: list) -> None:
            calls.rows.extend(rows)
            calls.flush_if_full(sum(len(row.body) for row in rows))

        try:
            for src, base in plans.items():
                path = _full(cfg, src)
                with open(path, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    old_tail = base.tail.counts["records"] if base is not None else 0
                    result = parse_file(src, fh, st, base, commit, on_block=lambda: kill("block"))
                new_files[src] = result.checkpoint
                tails[src] = result.tail_rows
                report.changed.append(src)
                report.bytes_parsed += result.bytes_read
                report.new_records += result.committed_rows + len(result.tail_rows) - old_tail - reparsed.get(src, 0)
                report.warnings += result.warnings
                report.warnings += _new_unreadable(src, previous.get(src), result.checkpoint)
        finally:
            calls.close()
        kill("parsed")
        report.timings["parse"] = round(time.perf_counter() - lap, 3)
        lap = time.perf_counter()
        # 3. write parts: the final rows by day, each changed file's new tail by day
        if calls.written:
            added += writer.write_lazy(pl.scan_parquet(staging))
        for src, rows in tails.items():
            gone = {p.file for p in dropped}
            dropped += [p for p in state.parts if p.tail_of == src and p.file not in gone]
            dropped += [p for p in added if p.tail_of == src]  # a moved file's relabelled tail
            added = [p for p in added if p.tail_of != src]
            if rows:
                added += writer.write(records_frame(rows), tail_of=src)
    finally:
        staging.unlink(missing_ok=True)

    gone = {p.file for p in dropped}
    parts = [p for p in state.parts if p.file not in gone] + added
    # 4. retention and compaction
    if cfg.retention_days:
        days = [p.date for p in parts if p.date]
        if days:
            cutoff = (date.fromisoformat(max(days)) - timedelta(days=cfg.retention_days)).isoformat()
            expired = [p for p in parts if p.date and p.date <= cutoff]
            if expired:
                report.warnings.append(f"retention: dropped {sum(p.rows for p in expired)} rows of days up to {cutoff}")
                dropped += expired
                parts = [p for p in parts if p not in expired]
    interim = State(files=new_files, parts=parts, retired=state.retired, serial=state.serial)
    a, d = dataset.compact(calls_dir, interim, writer, cfg.compact_parts)
    if d:
        gone_now = {p.file for p in d}
        parts = [p for p in parts if p.file not in gone_now] + a
        dropped += d
        added += a
    writer.sync()
    report.timings["write"] = round(time.perf_counter() - lap, 3)
    kill("written")

    # 5. commit
    new_state = State(files=new_files, parts=parts, retired=state.retired, serial=state.serial)
    if added or dropped:
        new_state.serial += 1
    report.parts_added = len(added)
    report.parts_removed = len(dropped)
    if json.dumps(new_state.to_json(), sort_keys=True) != before:
        save_state(state_path, new_state)
    kill("committed")
    dataset.remove_files(calls_dir, sorted({p.file for p in dropped} - {p.file for p in parts}))
    kill("removed")

    # 6. stage outputs and reports over the dataset (or the window), when they are stale
    _outputs(cfg, out, jobdir, new_state, report, kill)
    if cfg.strict:
        _strict_verdict(new_state, report)


def _new_unreadable(src: str, before: Checkpoint | None, after: Checkpoint) -> list[str]:
    """A warning on the unreadable call-record lines this run found in ``src`` (those of its
    last run are not repeated: a tail that keeps them is parsed again every time it changes)."""
    seen = {tuple(s) for s in before.stats.coverage.get("unreadable_spans", [])} if before is not None else set()
    new = [s for s in after.stats.coverage.get("unreadable_spans", []) if tuple(s) not in seen]
    if not new:
        return []
    return [unreadable_warning(src, sum(last - first + 1 for first, last in new), new, "strict = true makes the job exit 1")]


def _strict_verdict(state: State, report: RunReport) -> None:
    """``strict = true``: exit 1 while any input of the dataset (current or retired) holds
    unreadable call records, run after run, as a crossed threshold stays crossed."""
    stats = {src: cp.stats for src, cp in state.files.items()} | {r.source: r.stats for r in state.retired}
    lossy = {src: s.coverage.get("unreadable_lines", 0) for src, s in sorted(stats.items()) if s.coverage.get("unreadable_lines")}
    if lossy:
        report.crossed.append("strict: unreadable call-record lines in " + ", ".join(f"{src} ({n})" for src, n in lossy.items()))
        report.exit_code = EXIT_FINDINGS


def _fingerprint(cfg: JobConfig, state: State) -> str:
    payload = {
        "parts": sorted(p.file for p in state.parts),
        "files": {k: [v.size_seen, v.tail_bytes, v.missing] for k, v in sorted(state.files.items())},
        "window_days": cfg.window_days,
        "bucket": cfg.bucket,
        "formats": cfg.formats,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _window(cfg: JobConfig, parts: list[Part]) -> list[Part]:
    if not cfg.window_days:
        return parts
    days = [p.date for p in parts if p.date]
    if not days:
        return parts
    first = (date.fromisoformat(max(days)) - timedelta(days=cfg.window_days - 1)).isoformat()
    return [p for p in parts if p.date is None or p.date >= first]


def _manifest(cfg: JobConfig, state: State, calls_dir: Path, parts: list[Part]) -> dict:
    inputs = []
    for src, cp in sorted(state.files.items()):
        s = cp.stats
        inputs.append({
            "path": src, "size": cp.size_seen, "sha256": cp.head_sha256, "sha256_of": f"first {cp.head_len} bytes",
            "dialects": s.dialects, "counts": s.counts, "processes": s.processes, "coverage": s.coverage,
            "missing": cp.missing, "committed_offset": cp.offset, "compression": cp.compression,
        })
    for r in state.retired:
        inputs.append({
            "path": r.source, "size": 0, "sha256": "", "dialects": r.stats.dialects, "counts": r.stats.counts,
            "processes": r.stats.processes, "coverage": r.stats.coverage, "missing": True, "retired": r.retired,
        })
    frame = dataset.scan(calls_dir, parts)
    agg = frame.select(
        records=pl.len(),
        complete=pl.col("complete").sum(),
        uncertain=pl.col("uncertain").sum(),
    ).collect().row(0, named=True)
    counts = {k: sum(i["counts"].get(k, 0) for i in inputs) for k in ("banners", "load_errors")}
    counts.update(records=agg["records"], complete=int(agg["complete"] or 0),
                  incomplete=agg["records"] - int(agg["complete"] or 0), uncertain=int(agg["uncertain"] or 0))
    coverage = {k: sum(i["coverage"].get(k, 0) for i in inputs) for k in COVERAGE_KEYS}
    return {
        "tool": "p11lens",
        "version": __version__,
        "created": _utc_now().isoformat(timespec="seconds"),
        "job": {"config": str(cfg.path), "window_days": cfg.window_days, "days": sorted({p.date for p in parts if p.date})},
        "inputs": inputs,
        "dialects": sorted({d for i in inputs for d in i["dialects"]}),
        "counts": counts,
        "processes": sum(i["processes"] for i in inputs),
        "coverage": coverage,
        "outputs": {"calls": "calls/"},
    }


def _outputs(cfg: JobConfig, out: Path, jobdir: Path, state: State, report: RunReport, kill) -> None:
    from pipeline.analyze import analyze
    from reports.compare import compare_runs
    from reports.render import write_reports

    calls_dir = out / "calls"
    marker = jobdir / "outputs.json"
    fingerprint = _fingerprint(cfg, state)
    try:
        current = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError):
        current = None
    previous = jobdir / "previous"
    parts = _window(cfg, state.parts)
    if current != fingerprint:
        if not sum(p.rows for p in parts):
            report.warnings.append("no call records yet; stage outputs and reports not written")
        else:
            if cfg.fail_on and cfg.baseline is None and (out / "manifest.json").is_file() and current is not None:
                _keep_previous(out, previous)
            lap = time.perf_counter()
            with replacing(out) as stage:  # manifest, stage files and reports swap in as one set
                write_json(stage / "manifest.json", _manifest(cfg, state, calls_dir, parts))
                analyze(stage, bucket=cfg.bucket, calls=dataset.scan(calls_dir, parts))
                report.timings["analyze"] = round(time.perf_counter() - lap, 3)
                kill("analyzed")
                lap = time.perf_counter()
                if cfg.formats:
                    write_reports(stage, cfg.formats, report_of(stage, out))
            report.timings["report"] = round(time.perf_counter() - lap, 3)
            write_json(marker, {"fingerprint": fingerprint, "serial": state.serial})
            report.analyzed = True
    if cfg.fail_on and (out / "manifest.json").is_file() and (out / "latency.parquet").is_file():
        base = cfg.baseline or (previous if (previous / "manifest.json").is_file() else None)
        if base is None:
            report.warnings.append("fail_on: no baseline and no previous run yet; thresholds not checked")
        else:
            comp = compare_runs(base, out, cfg.fail_on)
            report.crossed = [f"{v.threshold}: {v.detail}" for v in comp.verdicts if v.crossed]
            if report.crossed:
                report.exit_code = EXIT_FINDINGS


def _keep_previous(out: Path, previous: Path) -> None:
    """Copy the current outputs aside (the baseline of `fail_on` when none is configured)."""
    for leftover in previous.parent.glob(".previous-*"):  # a killed run's
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = previous.with_name(f".previous-new-{os.getpid()}")
    tmp.mkdir()
    for name in ("manifest.json", *(f"{s}.parquet" for s in STAGE_FILES)):
        if (out / name).is_file():
            shutil.copy2(out / name, tmp / name)
    old = previous.with_name(f".previous-old-{os.getpid()}")
    if previous.exists():
        previous.rename(old)
    tmp.rename(previous)
    shutil.rmtree(old, ignore_errors=True)


def _append_run(out: Path, cfg: JobConfig, started: datetime, report: RunReport, error: str | None = None) -> None:
    line = {
        "start": started.isoformat(timespec="milliseconds"),
        "end": _utc_now().isoformat(timespec="milliseconds"),
        "config": str(cfg.path),
        "exit": report.exit_code,
        "files": report.files,
        "changed": report.changed,
        "bytes_parsed": report.bytes_parsed,
        "new_records": report.new_records,
        "parts_added": report.parts_added,
        "parts_removed": report.parts_removed,
        "analyzed": report.analyzed,
        "thresholds_crossed": report.crossed,
        "timings_s": report.timings,
        "warnings": report.warnings,
    }
    if error:
        line["error"] = error
    fd = os.open(out / "runs.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
