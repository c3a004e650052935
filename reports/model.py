"""The report model: one typed payload, built once from a run folder, that every renderer reads.

``load_report(out_dir)`` reads ``manifest.json`` and the stage Parquet files that
``p11lens analyze`` wrote and returns a `Report`.  Everything a report shows is decided here:
which rows, in which order, how many (tables are capped so a huge trace still gives a small
page), and every derived figure (error rate, time range, ...).  The templates only format and
lay out what they are given; the charts (``reports.charts``) only draw it.

Tables are `Table` objects: the columns (with a *kind* that says how to format the value) and
the rows, shared by the HTML, Markdown and text renderers so that the three formats cannot
disagree about a figure.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import InputError
from pipeline.stages.common import line_kinds

MANIFEST = "manifest.json"
STAGES = ("latency", "latency_over_time", "errors", "sessions", "processes", "mechanisms", "findings")
REQUIRED = ("latency", "errors", "sessions", "findings")
SEVERITIES = ("high", "medium", "low", "info")
NO_RETURN = "(no return)"  # the rv_name shown for records without a Returned: line
UNKNOWN_DIALECT = "unknown (no version marker)"  # no line of the log told the spy's version
# What Python's datetime (and so every formatter and chart) can hold; Polars holds more.
PY_DATETIME_RANGE = (datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999000))

# Caps that keep a report of a 100k-call (or 100M-call) trace small: rows beyond them are
# summarised in a note that points at the Parquet file holding all of them.
MAX_LATENCY_ROWS = 40
MAX_MECH_LATENCY_ROWS = 40
MAX_ERROR_ROWS = 40
MAX_SESSION_ROWS = 100
MAX_PROCESS_ROWS = 50
MAX_MECHANISM_ROWS = 40
MAX_FINDINGS_PER_CODE = 12
MAX_TIMELINE_SESSIONS = 120  # bars in the sessions chart (whole processes, leaking ones first)
MAX_TIMELINE_LANES = 12  # processes in the sessions chart
MAX_INPUT_ROWS = 50


# --------------------------------------------------------------------------------------------
# tables


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: str = "text"  # text | code | id | int | ms | pct | ts | bytes | bool | hash | hex | ref | num | category
    title: str = ""  # a tooltip / footnote for the header
    trend: bool = True  # deltas: colour a rise as worse (red) and a fall as better (green)

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "ms", "pct", "bytes", "num", "dms", "dpct", "dpp", "dint")


@dataclass
class Table:
    """Rows (dataclasses or dicts) under typed columns, with how many rows exist in total."""

    id: str
    columns: list[Column]
    rows: list[Any]
    total: int
    source: str = ""  # the Parquet file with every row, named in the "N more" note
    empty: str = "none"

    @property
    def omitted(self) -> int:
        return self.total - len(self.rows)

    @property
    def note(self) -> str:
        if self.omitted <= 0:
            return ""
        where = f"; all {self.total:,} are in {self.source}" if self.source else ""
        return f"showing {len(self.rows):,} of {self.total:,} rows{where}"


def _rows(df: pl.DataFrame) -> list[dict]:
    return df.to_dicts()


# --------------------------------------------------------------------------------------------
# the payload


def dialect_text(dialects: list[str]) -> str:
    """The spy versions a log's lines showed, or that none did (an empty list is a finding
    about the log, not a blank to leave)."""
    return ", ".join(f"OpenSC {d}" for d in dialects) or UNKNOWN_DIALECT


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    sha256: str
    dialects: str
    records: int
    incomplete: int
    processes: int
    lines: int
    unreadable_lines: int
    other_lines: int
    unreadable_spans: list  # [[first, last], ...] as the manifest gives them
    other_spans: list


@dataclass(frozen=True)
class Coverage:
    """Every input line is accounted for: in a record, a banner, blank, or one of the two kinds
    of lines no record took -- *unreadable call records* (shaped like spy output, not read:
    calls are missing) and *other text* (application output, prose)."""

    lines: int
    record_lines: int
    banner_lines: int
    blank_lines: int
    unreadable_lines: int
    other_lines: int

    @property
    def parsed_share(self) -> float | None:
        """Lines read as spy output (records, banners) or blank, of all lines."""
        return None if not self.lines else (self.lines - self.unreadable_lines - self.other_lines) / self.lines


@dataclass(frozen=True)
class RunInfo:
    out_dir: str
    version: str
    created: str
    dialects: list[str]
    inputs: list[InputFile]
    inputs_total: int
    input_bytes: int
    records: int
    complete: int
    incomplete: int
    uncertain: int
    banners: int
    load_errors: int
    processes: int
    coverage: Coverage
    first_ts: datetime | None
    last_ts: datetime | None
    stages: list[str]

    @property
    def dialect_text(self) -> str:
        return dialect_text(self.dialects)

    @property
    def span_seconds(self) -> float | None:
        if self.first_ts is None or self.last_ts is None:
            return None
        return (self.last_ts - self.first_ts).total_seconds()


@dataclass(frozen=True)
class Figure:
    """One headline number of the summary strip."""

    key: str
    label: str
    value: Any
    kind: str
    detail: str = ""
    alert: bool = False


@dataclass(frozen=True)
class Bucket:
    start: datetime
    seconds: float
    calls: int
    errors: int
    p95_ms: float | None


@dataclass(frozen=True)
class SessionBar:
    """One session on the timeline: a lane per process, seconds from the trace start."""

    lane: str
    start_s: float
    end_s: float
    ended_by: str
    leaked: bool
    before_log: bool = False  # opened before the log starts: drawn from its first call


@dataclass(frozen=True)
class Timeline:
    """What the sessions chart draws: one bar per session, or (too many sessions) the number of
    open sessions over time per process.  Times are seconds from ``origin`` (one clock for the
    whole trace) or, when ``relative``, from each process's first call."""

    bars: list[SessionBar]
    open_sessions: dict[str, list[tuple[float, int]]]
    relative: bool
    origin: datetime | None
    lanes_drawn: int = 0
    lanes_total: int = 0


@dataclass(frozen=True)
class FindingRef:
    source: str | None
    line: int | None
    message: str
    count: int
    lines: tuple[int, ...] = ()  # further record lines (the stage keeps the first 20)

    @property
    def more_lines(self) -> list[int]:
        return [n for n in self.lines if n != self.line]

    @property
    def ref(self) -> str:
        if self.source is None:
            return ""
        return f"{self.source}:{self.line}" if self.line is not None else self.source


@dataclass(frozen=True)
class FindingGroup:
    severity: str
    code: str
    total: int  # findings (rows) with this code
    occurrences: int  # sum of their counts
    items: list[FindingRef]

    @property
    def omitted(self) -> int:
        return self.total - len(self.items)

    @property
    def message(self) -> str:
        return self.items[0].message if self.items else ""


@dataclass
class Report:
    run: RunInfo
    figures: list[Figure]
    latency: Table  # per function
    latency_mech: Table  # per (function, mechanism)
    latency_chart: list[dict]  # per-function rows for the chart (busiest first)
    buckets: list[Bucket]
    bucket_seconds: float | None
    errors_by_rv: Table
    errors_by_func: Table
    sessions: Table
    session_count: int
    sessions_leaked: int
    timeline: Timeline
    processes: Table
    mechanisms: Table
    findings: list[FindingGroup]
    findings_by_severity: dict[str, int]
    secrets: list[FindingGroup]  # groups whose code says secrets were in the trace
    overall_p95_ms: float | None
    warnings: list[str]  # for the report's header: the figures below are incomplete, and why
    app_output_excluded: int  # calls left out of the headline p95 (application output in their window)
    sessions_before_log: int  # sessions whose C_OpenSession is not in the log
    charts: dict[str, str] = field(default_factory=dict)  # filled by the HTML renderer

    @property
    def has_findings(self) -> bool:
        return bool(self.findings)


# --------------------------------------------------------------------------------------------
# loading


def read_stage(out_dir: Path, name: str, required: bool = True) -> pl.DataFrame | None:
    path = out_dir / f"{name}.parquet"
    if not path.exists():
        if required:
            raise InputError(f"{out_dir}: no {name}.parquet; run `p11lens analyze {out_dir}` first")
        return None
    try:
        return python_datetimes(pl.read_parquet(path))
    except (pl.exceptions.PolarsError, OSError) as exc:  # damaged after it was written: bad input, not a bug
        raise InputError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def python_datetimes(frame: pl.DataFrame) -> pl.DataFrame:
    """Datetime columns clipped to what Python's datetime holds (years 1-9999).

    Why: the report turns rows into Python values, and a stamp Polars holds but Python cannot
    (year 0, say: the parser nulls impossible stamps, but a bucket start aligned to the epoch
    can still fall before year 1) would end the report with an exception.  Such a value is
    shown as the nearest one the report can show; no real trace has one."""
    lo, hi = PY_DATETIME_RANGE
    return frame.with_columns(
        pl.col(name).clip(pl.lit(lo).cast(dtype), pl.lit(hi).cast(dtype))
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime)
    )


def read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: no such output folder")
    if not path.exists():
        raise InputError(f"{out_dir}: no manifest.json; run `p11lens parse` (or `p11lens run`) first")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    inputs = manifest.get("inputs", []) if isinstance(manifest, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise InputError(f"{path}: not a p11lens manifest (no object with a list of inputs)")
    return manifest


def is_secret_code(code: str) -> bool:
    """Finding codes that mean secret material is in the trace: ``secret-*`` (PINs, key values)
    and ``*-in-trace`` (plaintext, wrapped keys, operation state, signed data, random bytes)."""
    c = code.lower()
    return c.startswith("secret") or c.endswith("-in-trace")


def load_report(out_dir: Path | str) -> Report:
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    frames = {name: read_stage(out_dir, name, name in REQUIRED) for name in STAGES}
    return build_report(out_dir, manifest, frames)


def build_report(out_dir: Path, manifest: dict, frames: dict[str, pl.DataFrame | None]) -> Report:
    lat = frames["latency"]
    err = frames["errors"]
    ses = frames["sessions"]
    fnd = frames["findings"]
    if "opened_in_log" not in ses.columns:  # sessions.parquet from before fragments were told apart
        ses = ses.with_columns(opened_in_log=pl.col("open_line").is_not_null(), first_line=pl.col("open_line"), first_ts=pl.col("opened_ts"))

    err = err.with_columns(rv_name=pl.when(pl.col("rv").is_null() & pl.col("rv_name").is_null())
                           .then(pl.lit(NO_RETURN)).otherwise(pl.col("rv_name")))
    per_rv = err.filter(pl.col("func").is_null())
    per_func_rv = err.filter(pl.col("func").is_not_null())
    first_ts = per_rv["first_ts"].min() if per_rv.height else None
    last_ts = per_rv["last_ts"].max() if per_rv.height else None
    run = _run_info(out_dir, manifest, first_ts, last_ts)

    calls = run.records
    errors = int(per_rv.filter(pl.col("category") == "error")["count"].sum()) if per_rv.height else 0
    incomplete = int(per_rv.filter(pl.col("category") == "incomplete")["count"].sum()) if per_rv.height else 0
    leaked = int(ses["leaked"].sum()) if ses.height else 0
    overall = _overall_p95(manifest)

    findings, by_sev = _findings(fnd)
    secrets = [g for g in findings if is_secret_code(g.code)]

    excluded = _app_output_excluded(manifest)
    before_log = int((~ses["opened_in_log"]).sum())
    logged_in = int(ses["logged_in"].sum()) if ses.height else 0
    figures = [
        Figure("calls", "calls", calls, "int", f"{run.processes:,} process(es), {len(run.inputs):,} log(s)"),
        Figure("error_rate", "error rate", errors / calls if calls else None, "pct",
               f"{errors:,} error return(s)" + (f", {incomplete:,} without return" if incomplete else ""), errors > 0),
        Figure("sessions", "sessions", ses.height, "int",
               f"{logged_in:,} logged in" + (f", {before_log:,} opened before the log starts" if before_log else "")),
        Figure("leaked", "sessions left open", leaked, "int", "never closed nor finalized", leaked > 0),
        Figure("p95", "p95 latency", overall, "ms",
               "all calls, upper bound" + (f"; {excluded:,} call(s) with application output in their window left out" if excluded else "")),
        Figure("findings", "findings", sum(by_sev.values()), "int",
               ", ".join(f"{by_sev[s]} {s}" for s in SEVERITIES if by_sev.get(s)) or "none", by_sev.get("high", 0) > 0),
    ]

    per_func = lat.filter(pl.col("mechanism").is_null()).sort(["count", "func"], descending=[True, False])
    per_mech = lat.filter(pl.col("mechanism").is_not_null()).sort(["count", "func", "mechanism"], descending=[True, False, False])
    lat_cols = [
        Column("func", "function", "code"),
        Column("count", "calls", "int"),
        Column("with_latency", "timed", "int", "calls with a next entry to measure to"),
        Column("app_output", "app output", "int", "timed calls whose window holds application output (a PIN prompt, say): "
               "in these figures, but left out of the headline p95"),
        Column("p50_ms", "p50 ms", "ms"),
        Column("p90_ms", "p90 ms", "ms"),
        Column("p95_ms", "p95 ms", "ms"),
        Column("p99_ms", "p99 ms", "ms"),
        Column("max_ms", "max ms", "ms"),
        Column("total_ms", "total ms", "ms", "sum of the upper bounds"),
    ]
    lat_cols = _present(lat_cols, lat)  # latency.parquet from before app_output has no such column
    latency = Table("latency", lat_cols, _rows(per_func.head(MAX_LATENCY_ROWS)), per_func.height, "latency.parquet")
    latency_mech = Table(
        "latency-mech",
        [lat_cols[0], Column("mechanism", "mechanism", "code")] + [c for c in lat_cols[1:] if c.key not in ("max_ms", "total_ms")],
        _rows(per_mech.head(MAX_MECH_LATENCY_ROWS)),
        per_mech.height,
        "latency.parquet",
    )
    latency_chart = _rows(per_func.filter(pl.col("with_latency") > 0).head(15))

    buckets, bucket_seconds = _buckets(frames["latency_over_time"])

    err_cols = [
        Column("rv_name", "return value", "code"),
        Column("rv", "code", "hex"),
        Column("category", "category", "category"),
        Column("count", "calls", "int"),
        Column("share", "share", "pct"),
        Column("first_ts", "first seen", "ts"),
        Column("last_ts", "last seen", "ts"),
    ]
    per_rv_sorted = per_rv.sort(["category", "count"], descending=[False, True]).sort(
        pl.col("category").replace_strict({"error": 0, "incomplete": 1, "benign": 2, "ok": 3}, default=4)
    )
    errors_by_rv = Table("errors-rv", err_cols, _rows(per_rv_sorted.head(MAX_ERROR_ROWS)), per_rv.height, "errors.parquet")
    not_ok = per_func_rv.filter(pl.col("category") != "ok").sort(
        [pl.col("category").replace_strict({"error": 0, "incomplete": 1, "benign": 2}, default=3), "count", "func"],
        descending=[False, True, False],
    )
    errors_by_func = Table(
        "errors-func",
        [Column("func", "function", "code"), err_cols[0], err_cols[2], Column("count", "calls", "int"),
                                                               Column("share", "of its calls", "pct")] + err_cols[5:],
        _rows(not_ok.head(MAX_ERROR_ROWS)),
        not_ok.height,
        "errors.parquet",
        "every call returned CKR_OK",
    )

    sessions_table, timeline = _sessions(ses, first_ts, frames["processes"])
    processes = _processes(frames["processes"])
    mechanisms = _mechanisms(frames["mechanisms"])

    return Report(
        run=run,
        figures=figures,
        latency=latency,
        latency_mech=latency_mech,
        latency_chart=latency_chart,
        buckets=buckets,
        bucket_seconds=bucket_seconds,
        errors_by_rv=errors_by_rv,
        errors_by_func=errors_by_func,
        sessions=sessions_table,
        session_count=ses.height,
        sessions_leaked=leaked,
        timeline=timeline,
        processes=processes,
        mechanisms=mechanisms,
        findings=findings,
        findings_by_severity=by_sev,
        secrets=secrets,
        overall_p95_ms=overall,
        warnings=_warnings(run),
        app_output_excluded=excluded,
        sessions_before_log=before_log,
    )


def _warnings(run: RunInfo) -> list[str]:
    """What the reader must know before trusting a figure: lines shaped like spy output that
    could not be read mean calls missing from every table."""
    if not run.coverage.unreadable_lines:
        return []
    bad = [(i.path, i.unreadable_spans) for i in run.inputs if i.unreadable_lines]
    where = "; ".join(f"{path} line {spans[0][0]}" if spans else path for path, spans in bad[:3])
    return [
        f"{run.coverage.unreadable_lines:,} line(s) look like spy call records but could not be read: "
        f"the calls in them are missing from every figure below (first in {where or 'the inputs'}; see Findings)."
    ]


def _run_info(out_dir: Path, m: dict, first_ts, last_ts) -> RunInfo:
    inputs = []
    for i in m.get("inputs", []):
        cov = i.get("coverage", {})
        kinds = line_kinds(cov)
        counts = i.get("counts", {})
        inputs.append(
            InputFile(
                path=i["path"],
                size=i.get("size") or 0,
                sha256=i.get("sha256", ""),
                dialects=dialect_text(i.get("dialects", [])),
                records=counts.get("records", 0),
                incomplete=counts.get("incomplete", 0),
                processes=i.get("processes", 0),
                lines=cov.get("lines", 0),
                unreadable_lines=kinds.unreadable,
                other_lines=kinds.other,
                unreadable_spans=kinds.unreadable_spans,
                other_spans=kinds.other_spans,
            )
        )
    counts = m.get("counts", {})
    cov = m.get("coverage", {})
    kinds = line_kinds(cov)
    stages = m.get("stages") or {}
    return RunInfo(
        out_dir=str(out_dir),
        version=str(m.get("version", "?")),
        created=str(m.get("created", "")),
        dialects=list(m.get("dialects", [])),
        inputs=inputs[:MAX_INPUT_ROWS],
        inputs_total=len(inputs),
        input_bytes=sum(i.size for i in inputs),
        records=counts.get("records", 0),
        complete=counts.get("complete", 0),
        incomplete=counts.get("incomplete", 0),
        uncertain=counts.get("uncertain", 0),
        banners=counts.get("banners", 0),
        load_errors=counts.get("load_errors", 0),
        processes=m.get("processes", sum(i.processes for i in inputs)),
        coverage=Coverage(
            lines=cov.get("lines", 0),
            record_lines=cov.get("record_lines", 0),
            banner_lines=cov.get("banner_lines", 0),
            blank_lines=cov.get("blank_lines", 0),
            unreadable_lines=kinds.unreadable,
            other_lines=kinds.other,
        ),
        first_ts=first_ts,
        last_ts=last_ts,
        stages=_stage_names(stages),
    )


def _stage_names(stages: Any) -> list[str]:
    if isinstance(stages, dict):
        outputs = stages.get("outputs")
        return sorted(outputs) if isinstance(outputs, dict) else sorted(k for k in stages if k in STAGES)
    return sorted(stages) if isinstance(stages, list) else []


def _app_output_excluded(manifest: dict) -> int:
    """Calls left out of the headline figures: their latency window holds application output."""
    return int(manifest.get("stages", {}).get("latency_all_calls", {}).get("app_output_excluded") or 0)


def _overall_p95(manifest: dict) -> float | None:
    """p95 over all calls, as ``analyze`` computed it from the same counts as latency.parquet."""
    value = manifest.get("stages", {}).get("latency_all_calls", {}).get("p95_ms")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _buckets(df: pl.DataFrame | None) -> tuple[list[Bucket], float | None]:
    if df is None or not df.height:
        return [], None
    df = df.sort("bucket_start")
    out = [
        Bucket(r["bucket_start"], float(r["bucket_seconds"]), int(r["calls"]), int(r["errors"] or 0), r["p95_ms"])
        for r in df.iter_rows(named=True)
    ]
    return out, float(df["bucket_seconds"][0])


def lane_name(source: str, process: int, pid: int | None) -> str:
    name = Path(source).name if source not in ("-", "") else "stdin"
    return f"{name} #{process}" + (f" (pid {pid})" if pid is not None else "")


def _sessions(ses: pl.DataFrame, t0: datetime | None, procs: pl.DataFrame | None):
    cols = [
        Column("lane", "process", "lane"),
        Column("session", "handle", "id"),
        Column("slot", "slot", "id"),
        Column("rw", "rw", "bool"),
        Column("opened_in_log", "opened in log", "bool", "no: the session was opened before the log starts (its C_OpenSession is not in it)"),
        Column("opened_ts", "opened", "ts"),
        Column("duration_ms", "duration ms", "ms"),
        Column("ended_by", "ended by", "code"),
        Column("calls", "calls", "int"),
        Column("errors", "errors", "int"),
        Column("user_type", "login", "code"),
        Column("operations", "operations", "int"),
        Column("first_line", "line", "id", "line of the C_OpenSession record, or of the session's first call when it was opened before the log"),
    ]
    if not ses.height:
        return Table("sessions", cols, [], 0, "sessions.parquet", "no sessions were opened"), Timeline([], {}, False, None)
    ses = ses.with_columns(
        lane=pl.struct("source", "process", "pid").map_elements(
            lambda s: lane_name(s["source"], s["process"], s["pid"]), return_dtype=pl.String
        ),
        user_type=pl.when(pl.col("logged_in")).then(pl.col("user_type").fill_null("yes")).otherwise(pl.lit(None)),
        # where the timeline starts a session: its open, or its first call when opened before the log
        start_ts=pl.coalesce("opened_ts", "first_ts"),
    )
    # leaked first, then the longest: what a reviewer wants to see when the table is capped
    ranked = ses.sort(["leaked", "duration_ms", "start_ts"], descending=[True, True, False], nulls_last=True)
    table = Table("sessions", cols, _rows(ranked.head(MAX_SESSION_ROWS)), ses.height, "sessions.parquet")

    spans = _lane_spans(ses, procs)
    if t0 is None or not spans:  # no session has a stamp to draw it at
        return table, Timeline([], {}, False, None)
    # separate logs recorded at different times leave a global axis mostly empty: then each
    # process gets its own clock (time since its first call) so its sessions stay readable
    glob0 = min(a for a, _b in spans.values())
    glob1 = max(b for _a, b in spans.values())
    relative = len(spans) > 1 and _covered(list(spans.values())) < 0.4 * max((glob1 - glob0).total_seconds(), 1e-9)
    origin = {lane: (a if relative else glob0) for lane, (a, _b) in spans.items()}
    bars: list[SessionBar] = []
    open_series: dict[str, list[tuple[float, int]]] = {}
    rows = [r for r in ses.sort("start_ts").iter_rows(named=True) if r["start_ts"] is not None]
    per_lane: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        per_lane[r["lane"]].append(r)
    # the processes to draw: those that leaked first, then the busiest, up to the bar budget
    ranked = sorted(per_lane, key=lambda lane: (-sum(bool(r["leaked"]) for r in per_lane[lane]), -len(per_lane[lane]), lane))
    chosen, budget = [], MAX_TIMELINE_SESSIONS
    for lane in ranked:
        if len(per_lane[lane]) > budget or len(chosen) >= MAX_TIMELINE_LANES:
            break
        chosen.append(lane)
        budget -= len(per_lane[lane])
    if chosen:
        keep = set(chosen)
        for r in rows:
            if r["lane"] in keep:
                o = origin[r["lane"]]
                end = r["closed_ts"] or spans[r["lane"]][1]  # a leaked session lasts until its process's last call
                bars.append(SessionBar(r["lane"], (r["start_ts"] - o).total_seconds(), (end - o).total_seconds(), r["ended_by"],
                                       bool(r["leaked"]), not r["opened_in_log"]))
    else:  # one process has too many sessions to draw one by one: open sessions over time
        for lane in ranked[:6]:
            o, events = origin[lane], []
            for r in per_lane[lane]:
                events.append(((r["start_ts"] - o).total_seconds(), 1))
                if r["closed_ts"] is not None:
                    events.append(((r["closed_ts"] - o).total_seconds(), -1))
            level, series = 0, [(0.0, 0)]
            for t, d in sorted(events):
                level += d
                series.append((t, level))
            series.append(((spans[lane][1] - o).total_seconds(), level))
            open_series[lane] = series
    drawn = len(chosen) if chosen else len(open_series)
    return table, Timeline(bars, open_series, relative, None if relative else glob0, drawn, len(per_lane))


def _lane_spans(ses: pl.DataFrame, procs: pl.DataFrame | None) -> dict[str, tuple[datetime, datetime]]:
    """First and last call time of each process lane that has a stamped session (widened by
    processes.parquet when it has them)."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    for r in ses.iter_rows(named=True):
        if r["start_ts"] is None:
            continue
        stamps = [t for t in (r["start_ts"], r["closed_ts"]) if t is not None]
        a, b = spans.get(r["lane"], (r["start_ts"], r["start_ts"]))
        spans[r["lane"]] = (min(a, *stamps), max(b, *stamps))
    if procs is not None and {"first_ts", "last_ts"} <= set(procs.columns):
        for p in procs.iter_rows(named=True):
            lane = lane_name(p["source"], p["process"], p["pid"])
            if lane in spans and p["first_ts"] is not None and p["last_ts"] is not None:
                a, b = spans[lane]
                spans[lane] = (min(a, p["first_ts"]), max(b, p["last_ts"]))
    return spans


def _covered(intervals: list[tuple[datetime, datetime]]) -> float:
    """Seconds covered by the union of intervals."""
    total, cur = 0.0, None
    for a, b in sorted(intervals):
        if cur is None or a > cur[1]:
            if cur is not None:
                total += (cur[1] - cur[0]).total_seconds()
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    if cur is not None:
        total += (cur[1] - cur[0]).total_seconds()
    return total


def _present(cols: list[Column], df: pl.DataFrame | None, derived: tuple[str, ...] = ()) -> list[Column]:
    """The columns the stage file actually has (stages may add columns; older files lack some)."""
    if df is None:
        return cols
    return [c for c in cols if c.key in df.columns or c.key in derived]


def _processes(df: pl.DataFrame | None) -> Table:
    cols = _present([
        Column("lane", "process", "lane"),
        Column("calls", "calls", "int"),
        Column("sessions", "sessions", "int"),
        Column("leaked_sessions", "left open", "int"),
        Column("max_concurrent_sessions", "max open at once", "int"),
        Column("logins", "logins", "int"),
        Column("login_failures", "failed logins", "int"),
        Column("logouts", "logouts", "int"),
        Column("logins_without_logout", "logins w/o logout", "int"),
        Column("finalized", "C_Finalize", "bool"),
    ], df, ("lane",))
    if df is None or not df.height:
        return Table("processes", cols, [], 0, "processes.parquet")
    df = df.with_columns(
        lane=pl.struct("source", "process", "pid").map_elements(
            lambda s: lane_name(s["source"], s["process"], s["pid"]), return_dtype=pl.String
        )
    ).sort(["source", "process"])
    return Table("processes", cols, _rows(df.head(MAX_PROCESS_ROWS)), df.height, "processes.parquet")


def _mechanisms(df: pl.DataFrame | None) -> Table:
    cols = _present([
        Column("mechanism", "mechanism", "code"),
        Column("family", "family", "text"),
        Column("calls", "calls", "int"),
        Column("errors", "errors", "int"),
        Column("with_latency", "timed", "int"),
        Column("p50_ms", "p50 ms", "ms"),
        Column("p95_ms", "p95 ms", "ms"),
        Column("weakness", "weakness", "text"),
    ], df)
    if df is None or not df.height:
        return Table("mechanisms", cols, [], 0, "mechanisms.parquet", "no call named a mechanism")
    df = df.sort(["calls", "mechanism"], descending=[True, False])
    return Table("mechanisms", cols, _rows(df.head(MAX_MECHANISM_ROWS)), df.height, "mechanisms.parquet")


def _findings(df: pl.DataFrame) -> tuple[list[FindingGroup], dict[str, int]]:
    by_sev = {s: 0 for s in SEVERITIES}
    if not df.height:
        return [], by_sev
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in df.iter_rows(named=True):
        groups[(r["severity"], r["code"])].append(r)
        by_sev[r["severity"]] = by_sev.get(r["severity"], 0) + 1
    out = []
    for (sev, code), rows in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], 9), -len(kv[1]), kv[0][1])):
        rows.sort(key=lambda r: (r["source"] or "", r["line"] if r["line"] is not None else -1))
        items = [
            FindingRef(r["source"], r["line"], r["message"], int(r["count"] or 1), tuple(r.get("lines") or ()))
            for r in rows[:MAX_FINDINGS_PER_CODE]
        ]
        out.append(FindingGroup(sev, code, len(rows), sum(int(r["count"] or 1) for r in rows), items))
    return out, by_sev
