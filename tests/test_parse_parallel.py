"""Several workers give the rows one worker gives, on real traces cut into many small ranges."""

from __future__ import annotations


import polars as pl
import pytest
from spylogs import DATA

from pipeline import parallel
from pipeline.parse import parse_logs
from pipeline.store import CallsWriter

# Real multi-process, multi-threaded, truncated and stderr-mixed traces (0.24+, with pids);
# appended several times over so that there are banners, pids and open records on both
# sides of every cut.
NAMES = [
    "07-multiprocess-append_0.27.1.log", "06-multithread_0.27.1.log", "06b-multithread-python-pkcs11_0.27.1.log",
    "09-stderr-mixed_0.27.1.log", "08-truncated-exit-midcall_0.27.1.log", "13-coverage_0.24.0.log",
    "02-keygen-sign_0.26.1.log",
]


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("par") / "mixed.log"
    path.write_bytes(b"".join((DATA / n).read_bytes() for n in NAMES) * 3)
    return path


def parse_single(path, out):
    manifest = parse_logs([str(path)], out, workers=1)
    return pl.read_parquet(out / "calls.parquet"), manifest["inputs"][0]


def parse_split(path, out, range_bytes, warmup):
    layout_tasks = parallel.plan(str(path), 64, min_range=range_bytes, warmup=warmup)
    assert layout_tasks is not None and len(layout_tasks[1]) >= 5
    target = out / "calls.parquet"
    writer = CallsWriter(target)
    _, results = parallel.parse_parallel(str(path), layout_tasks, writer)
    writer.close()
    assert writer.written == sum(r.counts.records for r in results)
    return pl.read_parquet(target), results


@pytest.mark.parametrize("range_bytes", [64 << 10, 200 << 10])
def test_parallel_rows_equal_single_worker_rows(big_log, tmp_path, range_bytes):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    single, report = parse_single(big_log, tmp_path / "a")
    split, results = parse_split(big_log, tmp_path / "b", range_bytes, warmup=256 << 10)
    key = ["source", "line"]
    assert split.sort(key).equals(single.sort(key))
    assert sum(r.counts.records for r in results) == report["counts"]["records"]
    assert sum(r.coverage.lines for r in results) == report["coverage"]["lines"]
    assert sum(r.coverage.unparsed_lines for r in results) == report["coverage"]["unparsed_lines"]
    assert split["process"].n_unique() > 3 and split["uncertain"].sum() > 0  # the cuts crossed real mess


def test_parse_logs_uses_workers_and_writes_the_same_table(big_log, tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_RANGE_BYTES", 100 << 10)
    single, report = parse_single(big_log, tmp_path / "a")
    manifest = parse_logs([str(big_log)], tmp_path / "b", workers=2)
    split = pl.read_parquet(tmp_path / "b" / "calls.parquet")
    assert split.sort(["line"]).equals(single.sort(["line"]))
    got = manifest["inputs"][0]
    assert {k: v for k, v in got.items()} == {k: v for k, v in report.items()}


def test_pidless_multithreaded_log_split_equals_single(tmp_path):
    """Debian's 0.23 spy (no pids), one process, interleaved threads, cut into 8 KiB ranges."""
    path = DATA / "06-multithread_0.23.0-debian.log"
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    single, _ = parse_single(path, tmp_path / "a")
    split, _ = parse_split(path, tmp_path / "b", 8 << 10, warmup=16 << 10)
    assert split.sort("line").equals(single.sort("line"))


def test_pidless_processes_sharing_a_file_split_equals_single(tmp_path):
    """Before 0.24 processes are told apart by their counters; the pre-pass replays that state."""
    path = tmp_path / "mp.log"
    names = ["07-multiprocess-append_0.23.0-debian.log", "01-basic-session_0.23.0-debian.log", "03-wrong-pin_0.23.0-debian.log"]
    path.write_bytes(b"".join((DATA / n).read_bytes() for n in names) * 4)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    single, _ = parse_single(path, tmp_path / "a")
    split, _ = parse_split(path, tmp_path / "b", 32 << 10, warmup=256 << 10)
    assert split.sort("line").equals(single.sort("line"))
    assert single["process"].n_unique() > 10


def test_small_file_stays_single(tmp_path):
    assert parallel.plan(str(DATA / "02-keygen-sign_0.27.1.log"), 2) is None
