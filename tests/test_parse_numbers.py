"""Numbers a damaged log cannot hold: ``CK_ULONG`` columns are unsigned 64-bit, a value that
fits none is a flagged call (never a crash), and so is a stamp that is no date.

Each case damages one record of a real driver trace (``sample-logs/smoke.log``) and checks
that record's row against the same row of the undamaged log.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.parse import parse_logs
from pipeline.records import CALLS_SCHEMA

SMOKE = Path(__file__).resolve().parents[1] / "sample-logs" / "smoke.log"
TOO_BIG = "1" + "0" * 20  # > 2**64


def _parse(tmp_path: Path, text: str) -> pl.DataFrame:
    log = tmp_path / "damaged.log"
    log.write_bytes(text.encode("latin-1"))
    parse_logs([str(log)], tmp_path / "out")
    return pl.read_parquet(tmp_path / "out" / "calls.parquet").sort("line")


def _damage_first(pattern: str, replace, text: str) -> tuple[str, int]:
    """``text`` with the first match of ``pattern`` replaced; and the line it is on."""
    match = re.search(pattern, text, re.M)
    assert match is not None, pattern
    return text[: match.start()] + replace(match) + text[match.end() :], text.count("\n", 0, match.start()) + 1


def _row_of(calls: pl.DataFrame, line: int) -> dict:
    """The call whose record holds ``line``."""
    return calls.filter((pl.col("line") <= line) & (pl.col("end_line") >= line)).row(0, named=True)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> pl.DataFrame:
    return _parse(tmp_path_factory.mktemp("pristine"), SMOKE.read_text("latin-1"))


def test_handles_and_codes_are_unsigned_64_bit():
    for column in ("pid", "tid", "rv", "slot", "session", "object", "in_len", "out_len"):
        assert CALLS_SCHEMA.field(column).type == "uint64", column
    assert str(CALLS_SCHEMA.field("created").type) == "list<item: uint64>"


@pytest.mark.parametrize(
    ("pattern", "replace", "column"),
    [
        (r"(?<=\[in\] hSession = 0x)[0-9a-f]+$", lambda m: "f" * 17, "session"),
        (r"(?<=\[in\] slotID = 0x)[0-9a-f]+$", lambda m: "1" + "0" * 16, "slot"),
        (r"(?<=^Returned:  )\d+(?= CKR_OK$)", lambda m: TOO_BIG, "rv"),
        (r"(?<= / )\d+$", lambda m: TOO_BIG, "in_len"),
    ],
    ids=["session", "slot", "rv", "length"],
)
def test_a_number_that_does_not_fit_is_null_and_flagged(tmp_path, pristine, pattern, replace, column):
    text, line = _damage_first(pattern, replace, SMOKE.read_text("latin-1"))
    calls = _parse(tmp_path, text)
    assert calls.height == pristine.height
    row, before = _row_of(calls, line), _row_of(pristine, line)
    assert f"out-of-range:{column}" in row["flags"]
    if column != "in_len":  # a length is one of the buffers summed: the others still count
        assert before[column] is not None and row[column] is None
    others = calls.filter(pl.col("line") != row["line"]).drop("flags", "source")
    assert others.equals(pristine.filter(pl.col("line") != row["line"]).drop("flags", "source"))


def test_a_huge_slot_within_64_bits_is_kept(tmp_path, pristine):
    text, line = _damage_first(r"(?<=\[in\] slotID = 0x)[0-9a-f]+$", lambda m: "f" * 16, SMOKE.read_text("latin-1"))
    row = _row_of(_parse(tmp_path, text), line)
    assert row["slot"] == 2**64 - 1 and not any(f.startswith("out-of-range") for f in row["flags"] or [])


def test_a_negative_code_is_the_32_bit_long_it_was(tmp_path, pristine):
    """64-bit Windows prints CKR_VENDOR_DEFINED (0x80000000) as -2147483648 (§3.4)."""
    text, line = _damage_first(r"^Returned:  0 CKR_OK$", lambda m: "Returned:  -2147483648 CKR_VENDOR_DEFINED", SMOKE.read_text("latin-1"))
    row = _row_of(_parse(tmp_path, text), line)
    assert row["rv"] == 0x80000000 and row["rv_name"] == "CKR_VENDOR_DEFINED"


@pytest.mark.parametrize("stamp", ["0000-11-28 15:13:15.057", "2026-13-28 15:13:15.057", "2026-11-28 25:13:15.057"])
def test_a_stamp_that_is_no_date_is_null_and_flagged(tmp_path, pristine, stamp):
    text, line = _damage_first(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$", lambda m: stamp, SMOKE.read_text("latin-1"))
    calls = _parse(tmp_path, text)
    row = _row_of(calls, line)
    assert row["ts"] is None and "bad-timestamp" in row["flags"]
    assert calls.height == pristine.height
    assert calls["ts"].null_count() == 1


def test_a_counter_that_does_not_fit_is_flagged(tmp_path, pristine):
    text, line = _damage_first(r"^\d+(?=: C_)", lambda m: "9" * 25, SMOKE.read_text("latin-1"))
    calls = _parse(tmp_path, text)
    row = _row_of(calls, line)
    assert row["seq"] is None and "out-of-range:seq" in row["flags"]
    assert pq.read_table(Path(tmp_path) / "out" / "calls.parquet").num_rows == pristine.height


def test_session_flags_that_do_not_fit_are_no_crash(tmp_path, pristine):
    """Found by the mutation fuzz: ``[in] flags = 0x<57 digits>`` of a C_OpenSession."""
    text, line = _damage_first(r"(?<=^\[in\] flags = 0x)[0-9a-f]+$", lambda m: "f" * 57, SMOKE.read_text("latin-1"))
    calls = _parse(tmp_path, text)
    row = _row_of(calls, line)
    assert row["func"] == "C_OpenSession" and calls.height == pristine.height
    assert not any(f.startswith("CKF_RW_SESSION") for f in row["flags"] or [])
