"""Fragments of real traces: a log that starts mid-run (sessions used without their
C_OpenSession) or is cut at any byte still gives all three reports, and they list its sessions.

Every fragment is cut from a real trace (the driver's ``sample-logs/`` and example spy logs),
at a record boundary (everything before the first C_Sign dropped) and at a random byte (a
seed per log, so a failure can be replayed).
"""

from __future__ import annotations

import random

import polars as pl
import pytest
from spylogs import DATA, p11lens
from test_report_runs import SAMPLES, STAMP, as_dicts, cut_before, html_tables, md_table, run_log, stage, text_table

LOGS = SAMPLES + [DATA / f"{name}.log" for name in ("01-basic-session_0.27.1", "06-multithread_0.27.1", "02-keygen-sign_0.20.0")]


def cut_at_byte(raw: bytes, seed: str) -> bytes:
    """A stretch of the log from a random byte in its first half to a random byte after it:
    it starts and ends mid-record (mid-line, even)."""
    rng = random.Random(seed)
    start = rng.randrange(1, len(raw) // 2)
    return raw[start:rng.randrange(start + len(raw) // 4, len(raw))]


def session_rows(out) -> dict[str, list[dict[str, str]]]:
    """The sessions table of each report format, as dicts of cell text."""
    return {
        "html": as_dicts(html_tables((out / "report.html").read_text())["t-sessions"]),
        "md": md_table((out / "report.md").read_text(), "### Sessions"),
        "txt": text_table((out / "report.txt").read_text(), "SESSIONS:"),
    }


def assert_reports_list_sessions(out) -> pl.DataFrame:
    """Every report lists every session (handle, and whether it was opened in the log)."""
    ses = stage(out, "sessions")
    assert ses.height <= 100  # the table's cap: all of them are shown
    want = sorted((str(r["session"]), "yes" if r["opened_in_log"] else "no") for r in ses.iter_rows(named=True))
    for fmt, rows in session_rows(out).items():
        got = sorted((r["handle"], r["opened in log"]) for r in rows)
        assert got == want, fmt
    return ses


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.stem)
def test_log_that_starts_mid_run(tmp_path, log):
    out = run_log(cut_before(log.read_bytes(), "C_Sign"), tmp_path)
    ses = assert_reports_list_sessions(out)
    before = ses.filter(~pl.col("opened_in_log"))
    assert before.height >= 1  # C_Sign's session was opened before the cut
    assert before["opened_ts"].is_null().all() and before["first_line"].is_not_null().all()
    procs = stage(out, "processes")
    assert procs["sessions_before_log"].sum() == before.height
    txt = (out / "report.txt").read_text()
    assert f"{before.height:,} opened before the log starts" in txt
    assert "opened before the log starts" in (out / "report.md").read_text()
    assert "opened before the log (drawn from its first call)" in (out / "report.html").read_text()  # the chart's legend


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.stem)
def test_log_cut_at_random_bytes(tmp_path, log):
    out = run_log(cut_at_byte(log.read_bytes(), log.name), tmp_path)
    assert_reports_list_sessions(out)


def test_fragment_through_the_console_entry_point(tmp_path):
    """The exit 70 of the issue: `run` on a fragment, as a user runs it."""
    log = tmp_path / "fragment.log"
    log.write_bytes(cut_before(LOGS[0].read_bytes(), "C_Sign"))
    result = p11lens("run", str(log), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr.decode()
    assert all((tmp_path / "out" / f"report.{ext}").stat().st_size > 0 for ext in ("html", "md", "txt"))


def test_stamps_at_the_ends_of_the_calendar(tmp_path):
    """A real trace whose stamps were moved to year 1 and year 9999 (a stamp the parser keeps:
    they are real dates) renders in every format."""
    raw = cut_before(LOGS[0].read_bytes(), "C_Sign")
    lines = raw.split(b"\n")
    stamps = [i for i, line in enumerate(lines) if line[:4].isdigit() and line[4:5] == b"-"]
    lines[stamps[0]] = b"0001-01-01 00:00:00.000"
    lines[stamps[-1]] = b"9999-12-31 23:59:59.999"
    out = run_log(b"\n".join(lines), tmp_path)
    txt = (out / "report.txt").read_text()
    assert "0001-01-01 00:00:00.000 -> 9999-12-31 23:59:59.999 (3,652,059.0 days)" in txt
    assert_reports_list_sessions(out)


def test_impossible_stamps(tmp_path):
    """A real fragment whose every stamp names no date (month 13, year 0): the parser nulls and
    flags them (``bad-timestamp``); with no time at all, every report still lists the sessions."""
    raw = STAMP.sub(lambda m: m.group(1) + (b"0000-01-01" if m.start() % 2 else b"2026-13-45") + m.group(2)[10:] + m.group(3),
                    cut_before(LOGS[0].read_bytes(), "C_Sign"))
    out = run_log(raw, tmp_path)
    calls = pl.read_parquet(out / "calls.parquet")
    assert calls["ts"].is_null().all() and calls["flags"].list.contains("bad-timestamp").all()
    assert_reports_list_sessions(out)
    assert "– -> – (–)" in (out / "report.txt").read_text()


def test_no_calls_at_all(tmp_path):
    """A log with a spy banner and nothing else: zero calls, every report written."""
    raw = LOGS[0].read_bytes()
    out = run_log(raw[: raw.index(b"\n0: ")], tmp_path)
    assert stage(out, "sessions").height == 0
    md, txt, html = ((out / f"report.{ext}").read_text() for ext in ("md", "txt", "html"))
    assert "0 session(s)" in md and "SESSIONS: 0, 0 left open" in txt and "0 session(s)" in html
    assert all("unknown (no version marker)" in doc for doc in (md, txt, html))  # no record: no version told
