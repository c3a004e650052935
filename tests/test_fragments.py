"""Fragments of real traces: cut anywhere, `run` still writes all three reports (issue 15).

A user who pastes part of a log wants the report most.  Hypothesis cuts real traces (the
driver's sample logs and spy logs of every OpenSC version) at random record, line and byte
boundaries; `p11lens run` (in-process, `pipeline.cli.main`) must exit 0 with report.html,
report.md and report.txt, one calls row per header line the fragment holds (a plain scan of
the kept bytes: the independent count), every line accounted for, and every session the calls
use present in the sessions stage ("opened before the log starts" when its C_OpenSession was
cut away).

``P11LENS_FRAGMENT_EXAMPLES`` sets how many random fragments are tried (default 40).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import os
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from shapes import Trace, check_accounting, header_calls, line_count
from spylogs import DATA

from pipeline.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
LOGS = sorted((ROOT / "sample-logs").glob("*.log")) + [
    DATA / n
    for n in (
        "02-keygen-sign_0.20.0.log",
        "03-wrong-pin_0.27.1.log",
        "06-multithread_0.23.0-debian.log",
        "06b-multithread-python-pkcs11_0.27.1.log",
        "07-multiprocess-append_0.27.1.log",
        "08-truncated-kill-file_0.23.0-debian.log",
        "09-stderr-mixed_0.23.0-debian.log",
        "12-mechinfo_0.24.0.log",
        "13-coverage_0.26.1.log",
    )
]
RAW = {p.name: p.read_bytes() for p in LOGS}
TRACES = {name: Trace.from_bytes(raw, name) for name, raw in RAW.items()}
EXAMPLES = int(os.environ.get("P11LENS_FRAGMENT_EXAMPLES", "40"))


def fragment(name: str, kind: str, a: float, b: float) -> bytes:
    """The part of log ``name`` between fractions ``a`` < ``b``, cut at records, lines or bytes."""
    raw, trace = RAW[name], TRACES[name]
    lo, hi = sorted((a, b))
    if kind == "bytes":
        i, j = int(lo * len(raw)), max(int(hi * len(raw)), int(lo * len(raw)) + 1)
        return raw[i:j]
    if kind == "lines":
        n = len(trace.lines)
        i, j = int(lo * n), max(int(hi * n), int(lo * n) + 1)
        return trace.with_lines(trace.lines[i:j]).to_bytes()
    heads = trace.header_indexes()
    i, j = int(lo * len(heads)), max(int(hi * len(heads)), int(lo * len(heads)) + 1)
    start = heads[i]
    end = heads[j] - 1 if j < len(heads) else len(trace.lines)  # without record j's blank line
    return trace.with_lines(trace.lines[start:end]).to_bytes()


def run_fragment(tmp: Path, data: bytes) -> Path:
    path, out = tmp / "fragment.log", tmp / "out"
    path.write_bytes(data)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli_main(["-q", "run", str(path), "-o", str(out)])
    assert rc == 0, f"run exited {rc} on a fragment of {len(data)} bytes: {err.getvalue().strip()[-300:]}"
    return out


def check_fragment_outputs(out: Path, data: bytes) -> None:
    for report in ("report.html", "report.md", "report.txt"):
        assert (out / report).stat().st_size > 0, f"{report} missing"
    calls = pl.read_parquet(out / "calls.parquet")
    expected = header_calls(data)
    got = {}
    for row in calls.select("seq", "func", "line").iter_rows():
        got[row] = got.get(row, 0) + 1
    assert got == dict(expected), "calls rows differ from the fragment's header lines"
    manifest = json.loads((out / "manifest.json").read_text())
    check_accounting(manifest["inputs"][0]["coverage"], line_count(data))
    used = calls.filter(pl.col("session").is_not_null()).select("process", "session").unique()
    sessions = pl.read_parquet(out / "sessions.parquet").select("process", "session").unique()
    lost = used.join(sessions, on=["process", "session"], how="anti")
    assert lost.height == 0, f"sessions used by calls but missing from the sessions stage: {lost.to_dicts()[:5]}"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(sorted(RAW)),
    kind=st.sampled_from(["records", "lines", "bytes"]),
    a=st.floats(0, 1),
    b=st.floats(0, 1),
)
@example(name="smoke.log", kind="records", a=0.5, b=1.0)  # starts mid-session: C_OpenSession cut away
@example(name="mixed.log", kind="lines", a=0.3, b=0.31)  # a few records, none opening its session
@example(name="threads.log", kind="bytes", a=0.42, b=0.9)
@example(name="07-multiprocess-append_0.27.1.log", kind="bytes", a=0.2, b=0.7)  # banners of 2 of 3 processes
def test_fragment_run_writes_all_reports(tmp_path_factory, name, kind, a, b):
    data = fragment(name, kind, a, b)
    assume(header_calls(data))  # a fragment without a single call record is not a spy log (exit 2)
    tmp = tmp_path_factory.mktemp("fragment")
    out = run_fragment(tmp, data)
    check_fragment_outputs(out, data)


def _records_without_open(name: str) -> bytes:
    """The longest run of whole records of ``name`` without C_OpenSession or C_CloseSession in
    which calls use a session: every session in it was opened before the fragment starts."""
    trace = TRACES[name]
    spans = trace.record_spans()
    runs, current = [], []
    for h, end in spans:
        if trace.lines[h].call[1] in ("C_OpenSession", "C_CloseSession", "C_CloseAllSessions"):
            runs.append(current)
            current = []
        else:
            current.append((h, end))
    runs.append(current)

    def uses_session(run):
        return any(b"hSession" in trace.lines[i].text for h, end in run for i in range(h, end + 1))

    best = max((r for r in runs if uses_session(r)), key=len)
    return trace.with_lines(trace.lines[best[0][0] : best[-1][1] + 1]).to_bytes()


@pytest.mark.parametrize("name", ["smoke.log", "errors.log", "mixed.log", "02-keygen-sign_0.20.0.log", "13-coverage_0.26.1.log"])
def test_sessions_opened_before_the_log_starts(tmp_path, name):
    """The issue's crash: sessions used, never opened in the log.  The sessions stage has them and
    every report says they were "opened before the log starts" (the issue's words)."""
    data = _records_without_open(name)
    assert not re.search(rb"^\d+: C_(Open|Close)Session", data, re.M)
    out = run_fragment(tmp_path, data)
    check_fragment_outputs(out, data)
    sessions = pl.read_parquet(out / "sessions.parquet")
    assert sessions.height >= 1
    for report in ("report.txt", "report.md", "report.html"):
        text = (out / report).read_text().lower()
        assert "opened before the log" in text, f"{report} does not say its sessions were opened before the log starts"


@pytest.mark.parametrize("name", ["smoke.log", "05-secrets_0.27.1.log"])
def test_log_that_ends_mid_record(tmp_path, name):
    """Cut inside the last record's body: the record is kept, incomplete, and the reports written."""
    raw = RAW.get(name) or (DATA / name).read_bytes()
    at = raw.rfind(b"\nReturned:", 0, len(raw) // 2)  # just before a Returned: line half-way in
    data = raw[:at + 1]
    out = run_fragment(tmp_path, data)
    check_fragment_outputs(out, data)
    calls = pl.read_parquet(out / "calls.parquet").sort("line")
    assert calls["complete"][-1] is False
