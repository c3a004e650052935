"""``analyze`` works in batches of line ranges carrying per-thread and per-session state; its
results must not depend on the batch size or on the row order of calls.parquet.

Real driver traces: threads.log (four threads whose calls straddle every batch boundary when
batches are a few dozen calls), processes.log (three processes appending to one file) and
errors.log (logins, failures, PIN administration), parsed together into one table.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.analyze import OUTPUTS, analyze
from pipeline.parse import parse_logs
from pipeline.stages.common import derive

SAMPLES = Path(__file__).parent.parent / "sample-logs"
LOGS = [SAMPLES / name for name in ("threads.log", "processes.log", "errors.log")]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batches") / "one"
    parse_logs([str(p) for p in LOGS], out)
    return out


def _copy(parsed: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("calls.parquet", "manifest.json"):
        shutil.copy(parsed / name, dest / name)
    return dest


def _outputs(folder: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(folder / f"{name}.parquet") for name in OUTPUTS}


def _same(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    for name in OUTPUTS:
        assert a[name].height > 0 or name == "findings", name
        assert_frame_equal(a[name], b[name])


def test_batch_size_does_not_change_results(parsed, tmp_path):
    whole = _copy(parsed, tmp_path / "whole")
    small = _copy(parsed, tmp_path / "small")
    analyze(whole, batch_rows=10**9)
    analyze(small, batch_rows=37)
    _same(_outputs(whole), _outputs(small))


def test_per_call_latency_does_not_depend_on_batches(parsed):
    calls = pl.scan_parquet(parsed / "calls.parquet")
    one = derive(calls, batch_rows=10**9).select("source", "line", "latency_ms", "op_mechanism", "life").collect()
    many = derive(calls, batch_rows=11).select("source", "line", "latency_ms", "op_mechanism", "life").collect()
    assert one["latency_ms"].is_not_null().sum() > 100
    assert_frame_equal(one.sort("source", "line"), many.sort("source", "line"))


def test_row_order_of_the_calls_table_does_not_matter(parsed, tmp_path):
    """The parser writes nearly, not exactly, in line order; a shuffled table is the extreme case."""
    ordered = _copy(parsed, tmp_path / "ordered")
    shuffled = _copy(parsed, tmp_path / "shuffled")
    pl.read_parquet(parsed / "calls.parquet").sample(fraction=1.0, shuffle=True, seed=3).write_parquet(shuffled / "calls.parquet")
    analyze(ordered)
    analyze(shuffled, batch_rows=50)
    _same(_outputs(ordered), _outputs(shuffled))
