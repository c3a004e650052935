"""The fast path (``grammars/blocks.py``) reads a block as the grammar's scanner alone would.

A record the numpy / Rust cut takes as clean skips pyparsing and the state machine, so it
must come out exactly as they would make it: the same rows, counts, line coverage and
dialects. Checked against the same assembler with no piece marked clean (everything then
goes through the pyparsing scanner), on every real example log and driver trace, whole and
damaged, with blocks of several sizes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spylogs import EXAMPLE_LOGS

from grammars import blocks
from pipeline.assemble import Assembler
from pipeline.stream import iter_blocks

LOGS = EXAMPLE_LOGS + sorted((Path(__file__).parent.parent / "sample-logs").glob("*.log"))
SOURCES = [p.read_bytes() for p in LOGS if p.stat().st_size > 1000]


def _nothing_clean(cut: blocks.Cut) -> blocks.Cut:
    pieces, parts = cut.pieces, cut.parts
    none = slice(0, 0)
    return cut._replace(
        pieces=pieces._replace(clean=np.zeros_like(pieces.clean)),
        parts=blocks.Parts(parts.frame.head(0), parts.before[none], parts.nlines[none], parts.seq[none], parts.pid[none]),
    )


def assemble(raw: bytes, block_size: int, fast: bool):
    records = []
    assembler = Assembler("mem", records.append)
    for text in iter_blocks(io.BytesIO(raw), block_size=block_size):
        cut = blocks.cut_pieces(text)
        assembler.feed(text, cut if fast else _nothing_clean(cut))
    assembler.finish()
    return sorted(records, key=lambda r: r.line), assembler.counts, assembler.coverage, assembler.dialects


def assert_fast_path_agrees(raw: bytes, block_size: int = 1 << 20) -> None:
    fast, scanned = assemble(raw, block_size, True), assemble(raw, block_size, False)
    assert fast[0] == scanned[0]
    assert fast[1:] == scanned[1:]


def test_real_logs_read_alike_with_and_without_the_fast_path():
    for path in LOGS:
        assert_fast_path_agrees(path.read_bytes()), path.name


def test_the_fast_path_takes_most_records_of_a_plain_log():
    """Otherwise the agreement above would be empty: a driver trace is nearly all clean records."""
    text = (LOGS[-1].parent / "smoke.log").read_text(encoding="latin-1")
    pieces = blocks.cut_pieces(text).pieces
    assert pieces.clean.sum() > 0.9 * text.count("\n\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.integers(0, len(SOURCES) - 1),
    kind=st.sampled_from(["cut", "inject", "crlf", "glue"]),
    at=st.floats(0, 1),
    junk=st.binary(min_size=1, max_size=32) | st.sampled_from([b"\xa0", b"\x80\n", b"\n\n\n", b"Returned:  0 CKR_OK"]),
    block=st.sampled_from([256, 4096, 1 << 20]),
)
def test_damaged_real_logs_read_alike_with_and_without_the_fast_path(base, kind, at, junk, block):
    raw = SOURCES[base]
    i = int(at * len(raw))
    if kind == "cut":
        raw = raw[:i]
    elif kind == "inject":
        raw = raw[:i] + junk + raw[i:]
    elif kind == "glue":  # another thread's unit glued to the end of a line
        end = raw.find(b"\n", i)
        raw = raw if end < 0 else raw[:end] + b"2026-11-28 16:27:22.768" + raw[end:]
    else:
        raw = raw.replace(b"\n", b"\r\n")
    assert_fast_path_agrees(raw, block)


# Hand-made fragments (labelled): one real record, edited where the cut reads fields by position.
_RECORD = b"\n7: C_Sign\nP:9257; T:0x140234567890 2026-11-28 16:27:22.777\n[in] hSession = 0x7\nReturned:  0 CKR_OK\n"


def test_edge_cases_of_the_cut_read_alike():
    for raw in (
        b"\n" + _RECORD * 3,
        _RECORD * 2 + _RECORD.rstrip(b"\n"),  # the log ends without a newline
        _RECORD.replace(b"7: C_Sign", b"1234567890123456789012: C_Sign") + _RECORD,  # a counter over int64
        _RECORD.replace(b"0x140234567890", b"140234567890") + _RECORD,  # tid without 0x
        _RECORD.replace(b"Returned:  0", b"Returned:  -1") + _RECORD,  # a negative rv
        _RECORD.replace(b"0x7\n", b"0x7 \xe9\n") + _RECORD,  # a Latin-1 byte in the body
        _RECORD.replace(b"P:9257; T:0x140234567890 ", b"") + b"\n\n" + _RECORD,  # pid-less, two blank lines
        _RECORD.replace(b"[in] hSession = 0x7\n", b"") * 2,  # no body lines
    ):
        for block in (16, 1 << 20):
            assert_fast_path_agrees(raw, block)
