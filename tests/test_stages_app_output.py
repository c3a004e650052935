"""A call whose latency window holds application output (the program printed a PIN prompt into
the log, and the gap is the time a person took to type) is marked in the latency tables and
kept out of the headline figures.

The trace is the driver's real ``smoke.log`` with ``Please enter User PIN:`` lines inserted
after the record of its slowest call, the way an application that shares the spy's stream
(PKCS11SPY_OUTPUT unset: stderr) writes them.
"""

from __future__ import annotations

import polars as pl
import pytest
from test_report_runs import SAMPLES, as_dicts, html_tables, manifest, md_table, records, run_log, stage, text_table

from pipeline.stages.common import derive

SMOKE = next((p for p in SAMPLES if p.name == "smoke.log"), None)
PROMPT = b"Please enter User PIN: \nPlease enter User PIN: \n"


def timed_calls(out) -> pl.DataFrame:
    return derive(pl.scan_parquet(out / "calls.parquet")).filter(pl.col("latency_ms").is_not_null()).collect()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if SMOKE is None:
        pytest.skip("sample-logs/ is empty")
    raw = SMOKE.read_bytes()
    root = tmp_path_factory.mktemp("app-output")
    plain = run_log(raw, root / "plain")
    slow = timed_calls(plain).sort(["latency_ms", "line"], descending=[True, False]).row(0, named=True)
    heads = [at for at, _name in records(raw)]
    # right before the record that follows the slowest call's: inside its latency window
    at = next(b for a, b in zip(heads, heads[1:]) if raw[:a].count(b"\n") + 1 == slow["line"])
    prompted = run_log(raw[:at] + PROMPT + raw[at:], root / "prompted")
    return plain, prompted, slow, raw[:at].count(b"\n") + 1


def test_the_prompt_is_other_text(runs):
    _plain, prompted, _slow, first = runs
    cov = manifest(prompted)["inputs"][0]["coverage"]
    assert cov["other_spans"] == [[first, first + 1]] and cov["unreadable_lines"] == 0


def test_headline_leaves_the_call_out(runs):
    plain, prompted, slow, _first = runs
    headline = manifest(prompted)["stages"]["latency_all_calls"]
    assert headline["app_output_excluded"] == 1
    kept = timed_calls(prompted).filter(pl.col("line") != slow["line"])["latency_ms"]
    assert headline["with_latency"] == kept.len() == manifest(plain)["stages"]["latency_all_calls"]["with_latency"] - 1
    assert headline["p95_ms"] == pytest.approx(kept.cast(pl.Float64).quantile(0.95, "linear"))
    assert headline["max_ms"] == kept.max() <= slow["latency_ms"]
    assert manifest(plain)["stages"]["latency_all_calls"]["max_ms"] == slow["latency_ms"]  # it was the headline's max


def test_tables_keep_the_call_and_mark_it(runs):
    plain, prompted, slow, _first = runs
    row = stage(prompted, "latency").filter(pl.col("func") == slow["func"], pl.col("mechanism").is_null()).row(0, named=True)
    before = stage(plain, "latency").filter(pl.col("func") == slow["func"], pl.col("mechanism").is_null()).row(0, named=True)
    assert row["app_output"] == 1 and before["app_output"] == 0
    assert (row["with_latency"], row["max_ms"], row["p95_ms"]) == (before["with_latency"], before["max_ms"], before["p95_ms"])
    assert stage(prompted, "latency").filter(pl.col("func") != slow["func"], pl.col("mechanism").is_null())["app_output"].sum() == 0
    tables = {
        "html": as_dicts(html_tables((prompted / "report.html").read_text())["t-latency"]),
        "md": md_table((prompted / "report.md").read_text(), "### Latency per function"),
        "txt": text_table((prompted / "report.txt").read_text(), "LATENCY PER FUNCTION"),
    }
    for fmt, rows in tables.items():
        marked = {r["function"]: r["app output"] for r in rows if r["app output"] != "0"}
        assert marked == {slow["func"]: "1"}, fmt
    assert "1 call(s) with application output in their window" in (prompted / "report.txt").read_text()
