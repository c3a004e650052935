"""Copies that users make of a log: each line padded (a terminal's width, `sed 's/$/ /'`,
an editor's tabs, a stray ``\\r``).  The grammar reads them as the log itself: the same calls
table (every column) and the same manifest (counts, coverage, dialects).

The originals are every real spy log of the test data and every sample log; the padded copy
differs from it only at line ends, so line numbers stay the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from spylogs import EXAMPLE_LOGS

from pipeline.parse import parse_logs

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sample-logs").glob("*.log"))
LOGS = EXAMPLE_LOGS + SAMPLES


def _pad_spaces(raw: bytes) -> bytes:
    return re.sub(rb"\n", b" \n", raw)


def _pad_tabs_cr(raw: bytes) -> bytes:
    return re.sub(rb"\n", b"\t \r\n", raw)  # ``\r\n`` is folded; the ``\r`` before it stays


def _pad_to_width(raw: bytes, width: int = 132) -> bytes:
    *lines, last = raw.split(b"\n")  # ``last``: after the final newline (empty), or a last line without one
    return b"".join(line.ljust(width) + b"\n" for line in lines) + last


def _collapse_returned(raw: bytes) -> bytes:
    """A web page's copy: the spy's two spaces after ``Returned:`` collapsed to one."""
    return re.sub(rb"^Returned:  ", b"Returned: ", raw, flags=re.M)


PADDINGS = {"space": _pad_spaces, "tab-cr": _pad_tabs_cr, "terminal": _pad_to_width, "web-returned": _collapse_returned}


def _parse(logs: list[Path], out: Path) -> tuple[pl.DataFrame, dict]:
    manifest = parse_logs([str(p) for p in logs], out)
    calls = pl.read_parquet(out / "calls.parquet").with_columns(pl.col("source").str.split("/").list.last())
    return calls.sort("source", "line"), manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return _parse(LOGS, tmp_path_factory.mktemp("pristine"))


@pytest.mark.parametrize("padding", PADDINGS)
def test_a_padded_copy_parses_like_the_log(tmp_path, pristine, padding):
    copies = []
    for log in LOGS:
        copy = tmp_path / log.name
        copy.write_bytes(PADDINGS[padding](log.read_bytes()))
        copies.append(copy)
    calls, manifest = _parse(copies, tmp_path / "out")
    want_calls, want = pristine
    assert calls.height == want_calls.height > 4000
    assert calls.equals(want_calls)
    for got, expected in zip(manifest["inputs"], want["inputs"], strict=True):
        assert Path(got["path"]).name == Path(expected["path"]).name
        assert got["coverage"] == expected["coverage"], got["path"]
        assert got["counts"] == expected["counts"] and got["dialects"] == expected["dialects"]
    assert json.dumps(manifest["counts"]) == json.dumps(want["counts"])
