"""Interleaved threads of a real trace: units of one call glued to another's line.

The trace (``tests/data/threads``) is a cut of a real 6-thread log, so it starts and ends
inside records.  Counts come from the log's own lines: every header is a call, every
``Returned:`` (at a line start or glued behind another unit) closes one.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from pipeline.parse import parse_logs

GLUED = Path(__file__).parent / "data" / "threads" / "glued-null-buffer_0.23.0-debian.log"


def test_a_buffer_rendering_cut_off_by_a_glued_returned_stays_spy_output(tmp_path):
    raw = GLUED.read_bytes()
    manifest = parse_logs([str(GLUED)], tmp_path)
    calls = pl.read_parquet(tmp_path / "calls.parquet")
    cov = manifest["inputs"][0]["coverage"]
    assert calls.height == len(re.findall(rb"^\d+: C_\w+$", raw, re.M))
    # Every line of the cut is spy output, none application text: "NULL [size : 0x0 (0)]" alone
    # on its line (48, 619) is the tail of a buffer rendering, a body unit (read or unreadable).
    assert cov["other_lines"] == 0
    # Every Returned: unit closed a call or is counted unreadable (a call whose header was cut off)
    lines = raw.split(b"\n")
    unread = {n for first, last in cov["unreadable_spans"] for n in range(first, last + 1)}
    lost = sum(lines[n - 1].count(b"Returned:") for n in unread)
    assert calls["complete"].sum() + lost == raw.count(b"Returned:")
    assert lost >= 1  # the cut's first line is the Returned: of a call before it


def test_prose_around_a_log_is_other_text_not_a_lost_call(tmp_path):
    """What users paste around a trace: a program's output, an indented stack trace, a comment.
    Indented lines are the spy's only inside a record; alone they are prose."""
    smoke = Path(__file__).resolve().parents[1] / "sample-logs" / "smoke.log"
    before = b"Started the app\n  at com.example.Main(Main.java:10)\n\tat java.base/Thread.run\n"
    after = b"# end of paste\n    indented note\n"
    log = tmp_path / "pasted.log"
    log.write_bytes(before + smoke.read_bytes() + after)
    cov = parse_logs([str(log)], tmp_path / "out")["inputs"][0]["coverage"]
    lines = log.read_bytes().count(b"\n")
    assert cov["unreadable_lines"] == 0
    assert cov["other_spans"] == [[1, 3], [lines - 1, lines]]


def test_a_call_never_takes_a_returned_from_before_its_header(tmp_path):
    log = GLUED.with_name("returned-before-header.log")
    parse_logs([str(log)], tmp_path)
    calls = pl.read_parquet(tmp_path / "calls.parquet")
    assert calls.height == len(re.findall(rb"^\d+: \S+[ \t\r]*$", log.read_bytes(), re.M))
    assert calls.filter(pl.col("end_line") < pl.col("line")).is_empty()
