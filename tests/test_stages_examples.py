"""Stages on every real example log: outputs exist and read in DuckDB, counts and latencies
agree with values computed independently (from the calls table or the raw log text)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from spylogs import EXAMPLE_LOGS, PINS, header_counts, pin_patterns, returned_counts, string_values

from pipeline.analyze import OUTPUTS, analyze
from pipeline.parse import parse_logs

DATA = Path(__file__).parent / "data" / "spy-examples"


@pytest.fixture(scope="session")
def analyzed(tmp_path_factory) -> dict[str, Path]:
    """Every example log parsed and analyzed once: name (file stem) -> OUT folder."""
    root = tmp_path_factory.mktemp("stages")
    out = {}
    for log in EXAMPLE_LOGS:
        folder = root / log.stem
        parse_logs([str(log)], folder)
        analyze(folder)
        out[log.stem] = folder
    return out


def _ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


_TS_RE = re.compile(r"(?:P:\d+; T:(?:0x)?\d+ )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})$")


def raw_records(log: Path) -> list[tuple[int, str, datetime]]:
    """(header line, function, timestamp) of each record, read straight from the text."""
    lines = log.read_bytes().decode("latin-1").split("\n")
    out = []
    for i, text in enumerate(lines[:-1]):
        m = re.fullmatch(r"\d+: (\S+)", text)
        t = _TS_RE.fullmatch(lines[i + 1])
        if m and t:
            out.append((i + 1, m.group(1), _ts(t.group(1))))
    return out


@pytest.mark.parametrize("log", EXAMPLE_LOGS, ids=lambda p: p.stem)
def test_every_output_written_and_read_by_duckdb(analyzed, log):
    out = analyzed[log.stem]
    for name in OUTPUTS:
        path = out / f"{name}.parquet"
        assert path.is_file(), name
        rows = duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall()[0][0]
        assert rows == pl.read_parquet(path).height
        duckdb.sql(f"SELECT * FROM '{path}'").fetchall()
    manifest = (out / "manifest.json").read_text()
    assert '"stages"' in manifest


@pytest.mark.parametrize("log", EXAMPLE_LOGS, ids=lambda p: p.stem)
def test_per_function_counts_match_calls_table(analyzed, log):
    out = analyzed[log.stem]
    calls = pl.read_parquet(out / "calls.parquet")
    expected = dict(calls.group_by("func").len().iter_rows())
    errors = pl.read_parquet(out / "errors.parquet").filter(pl.col("func").is_not_null())
    got = dict(errors.group_by("func").agg(pl.col("count").sum()).iter_rows())
    assert got == expected
    latency = pl.read_parquet(out / "latency.parquet").filter(pl.col("mechanism").is_null())
    assert dict(latency.select("func", "count").iter_rows()) == expected
    per_rv = pl.read_parquet(out / "errors.parquet").filter(pl.col("func").is_null())
    assert per_rv["count"].sum() == calls.height
    if calls.height:
        assert abs(per_rv["share"].sum() - 1.0) < 1e-9


@pytest.mark.parametrize("name", ["02-keygen-sign_0.27.1", "02-keygen-sign_0.20.0", "01-basic-session_0.23.0-debian", "05-secrets_0.27.1"])
def test_counts_match_the_raw_log(analyzed, name):
    """Clean single-process logs: function counts = headers, per-rv counts = Returned: lines."""
    raw = (DATA / f"{name}.log").read_bytes()
    errors = pl.read_parquet(analyzed[name] / "errors.parquet")
    per_func = errors.filter(pl.col("func").is_not_null()).group_by("func").agg(pl.col("count").sum())
    assert dict(per_func.iter_rows()) == dict(header_counts(raw))
    per_rv = errors.filter(pl.col("func").is_null())
    assert dict(per_rv.select("rv", "count").iter_rows()) == dict(returned_counts(raw))


def test_categories():
    path = DATA / "02-keygen-sign_0.27.1.log"
    out = Path(pytest.importorskip("tempfile").mkdtemp())
    parse_logs([str(path)], out)
    analyze(out)
    errors = pl.read_parquet(out / "errors.parquet").filter(pl.col("func").is_not_null())
    cat = {(r["func"], r["rv_name"]): r["category"] for r in errors.iter_rows(named=True)}
    assert cat[("C_GetAttributeValue", "CKR_ATTRIBUTE_TYPE_INVALID")] == "benign"
    assert cat[("C_GetInterface", "CKR_ARGUMENTS_BAD")] == "error"
    assert cat[("C_Sign", "CKR_OK")] == "ok"
    share = errors.filter(pl.col("func") == "C_GetInterface")["share"].to_list()
    assert share == [1.0]


def test_incomplete_records_are_their_own_category(analyzed):
    out = analyzed["08-truncated-exit-midcall_0.27.1"]
    per_rv = pl.read_parquet(out / "errors.parquet").filter(pl.col("func").is_null())
    incomplete = per_rv.filter(pl.col("category") == "incomplete")
    assert incomplete["rv"].to_list() == [None]
    calls = pl.read_parquet(out / "calls.parquet")
    assert incomplete["count"].item() == calls.filter(~pl.col("complete")).height > 0


def test_latency_of_chosen_calls_recomputed_from_the_log_text(analyzed):
    """C_GenerateKeyPair (one call) in 02-keygen-sign_0.27.1: its stamp and the next record's."""
    name = "02-keygen-sign_0.27.1"
    records = raw_records(DATA / f"{name}.log")
    i = next(k for k, r in enumerate(records) if r[1] == "C_GenerateKeyPair")
    by_hand = (records[i + 1][2] - records[i][2]).total_seconds() * 1000
    lat = pl.read_parquet(analyzed[name] / "latency.parquet")
    row = lat.filter((pl.col("func") == "C_GenerateKeyPair") & pl.col("mechanism").is_null()).row(0, named=True)
    assert row["count"] == 1 and row["with_latency"] == 1
    assert row["max_ms"] == row["p50_ms"] == row["total_ms"] == round(by_hand) == 9
    # the last call of the process has no latency
    fin = lat.filter((pl.col("func") == "C_Finalize") & pl.col("mechanism").is_null()).row(0, named=True)
    assert records[-1][1] == "C_Finalize" and fin["with_latency"] == 0 and fin["max_ms"] is None


@pytest.mark.parametrize("name", ["02-keygen-sign_0.27.1", "02-keygen-sign_0.22.0", "02-keygen-sign_0.24.0", "13-coverage_0.24.0"])
def test_latencies_telescope_to_the_trace_span(analyzed, name):
    """Single-threaded, all complete: the latencies add up to last stamp - first stamp."""
    records = raw_records(DATA / f"{name}.log")
    span = (records[-1][2] - records[0][2]).total_seconds() * 1000
    lat = pl.read_parquet(analyzed[name] / "latency.parquet").filter(pl.col("mechanism").is_null())
    assert lat["total_ms"].sum() == round(span)
    assert lat["with_latency"].sum() == len(records) - 1


def test_uncertain_records_get_no_latency(analyzed):
    out = analyzed["06-multithread_0.27.1"]
    calls = pl.read_parquet(out / "calls.parquet")
    lat = pl.read_parquet(out / "latency.parquet").filter(pl.col("mechanism").is_null())
    certain_complete = calls.filter(~pl.col("uncertain") & pl.col("complete")).height
    assert lat["with_latency"].sum() <= certain_complete < calls.height


def test_mechanism_of_later_calls_comes_from_the_init(analyzed):
    """Walk the raw text: each C_Sign belongs to the latest C_SignInit's pMechanism->type."""
    name = "02-keygen-sign_0.27.1"
    text = (DATA / f"{name}.log").read_text(encoding="latin-1")
    current, expected = None, {}
    for block in text.split("\n\n"):
        head = re.match(r"\d+: (\S+)", block.strip("\n"))
        if not head:
            continue
        func = head.group(1)
        m = re.search(r"pMechanism->type = (\S+)", block)
        if func == "C_SignInit":
            current = m.group(1)
            expected[(current, "init")] = expected.get((current, "init"), 0) + 1
        elif func == "C_Sign":
            expected[(current, "sign")] = expected.get((current, "sign"), 0) + 1
    mech = pl.read_parquet(analyzed[name] / "mechanisms.parquet").filter(pl.col("family") == "sign")
    got = dict(mech.select("mechanism", "calls").iter_rows())
    for (mechanism, _), _n in expected.items():
        assert got[mechanism] == expected.get((mechanism, "init"), 0) + expected.get((mechanism, "sign"), 0)
    lat = pl.read_parquet(analyzed[name] / "latency.parquet")
    signs = lat.filter((pl.col("func") == "C_Sign") & pl.col("mechanism").is_not_null())
    assert dict(signs.select("mechanism", "count").iter_rows()) == {k[0]: v for k, v in expected.items() if k[1] == "sign"}


def test_mechanism_info_queries_are_not_uses(analyzed):
    mech = pl.read_parquet(analyzed["12-mechinfo_0.24.0"] / "mechanisms.parquet")
    assert mech.height == 0


def test_sessions_and_processes_of_a_clean_log(analyzed):
    """01-basic-session_0.23.0-debian: two runs, each opens one read-only session, logs in, closes it."""
    name = "01-basic-session_0.23.0-debian"
    text = (DATA / f"{name}.log").read_text(encoding="latin-1")
    opens = len(re.findall(r"\n\d+: C_OpenSession\n", text))
    ses = pl.read_parquet(analyzed[name] / "sessions.parquet")
    assert ses.height == opens == 2
    assert ses["rw"].to_list() == [False, False]  # "[in] flags = 0x4": CKF_SERIAL_SESSION only
    assert ses["ended_by"].to_list() == ["C_CloseSession", "C_CloseSession"]
    assert not ses["leaked"].any()
    assert (ses["duration_ms"] >= 0).all()
    procs = pl.read_parquet(analyzed[name] / "processes.parquet")
    assert procs["sessions"].sum() == 2 and procs["finalized"].all()


def test_killed_process_leaks_its_session(analyzed):
    out = analyzed["08-truncated-kill-file_0.27.1"]
    ses = pl.read_parquet(out / "sessions.parquet")
    assert ses["leaked"].all() and set(ses["ended_by"]) == {"never"}
    procs = pl.read_parquet(out / "processes.parquet")
    assert not procs["finalized"].any()
    assert procs["logins_without_logout"].sum() == procs["logins"].sum() > 0


@pytest.mark.parametrize("log", EXAMPLE_LOGS, ids=lambda p: p.stem)
def test_no_pin_in_any_output(analyzed, log):
    out = analyzed[log.stem]
    values = [v for name in OUTPUTS for v in string_values(out / f"{name}.parquet")]
    for pin in PINS:
        for pattern in pin_patterns(pin)[:2]:  # hex forms; the digits alone occur in line numbers
            assert not any(pattern in v for v in values), (pin, pattern)


def test_over_time_buckets_hold_every_call(analyzed):
    out = analyzed["07-multiprocess-append_0.27.1"]
    calls = pl.read_parquet(out / "calls.parquet")
    over = pl.read_parquet(out / "latency_over_time.parquet")
    assert over["calls"].sum() == calls.filter(pl.col("ts").is_not_null()).height
    assert 1 <= over.height <= 200 and over["bucket_seconds"].n_unique() == 1
    assert over["bucket_start"].is_sorted()
