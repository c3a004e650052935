"""Stages against the driver's ground truth (``sample-logs/*.log`` + ``.truth.json``).

Latency: the spy stamps only call entry, so a call's latency is estimated as the gap to the
next entry of its thread.  The driver timed each operation itself (perf_counter around the
python-pkcs11 call); an operation's estimate is the sum of the estimated latencies of its
records (the records inside its ``trace_lines``).  ``python tests/test_stages_truth.py`` prints
the error figures quoted in docs/stages.md.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.analyze import analyze
from pipeline.parse import parse_logs
from pipeline.stages.common import derive

SAMPLES = Path(__file__).parent.parent / "sample-logs"
SINGLE_PROCESS = ("smoke", "mixed", "errors", "threads")
ALL = (*SINGLE_PROCESS, "processes")

pytestmark = pytest.mark.skipif(
    not all((SAMPLES / f"{w}.log.truth.json").exists() for w in ALL), reason="sample-logs with truth files not present"
)


def truth(workload: str) -> dict:
    return json.loads((SAMPLES / f"{workload}.log.truth.json").read_text())


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    folders = {}
    for w in ALL:
        folders[w] = root / w
        parse_logs([str(SAMPLES / f"{w}.log")], folders[w])
        analyze(folders[w])
    return folders


def latency_errors(workload: str, folder: Path) -> tuple[list[float], list[float]]:
    """Signed errors (estimate - driver's duration, ms): single-call operations, all operations."""
    calls = derive(pl.scan_parquet(folder / "calls.parquet")).select("line", "process", "latency_ms").collect()
    facts = truth(workload)
    banner = {p["index"]: p["banner_index"] for p in facts["processes"]}
    single, whole = [], []
    for op in facts["ops"]:
        if not op.get("trace_lines"):
            continue
        first, last = op["trace_lines"]  # other processes' records can fall inside this range
        mine = calls.filter(pl.col("line").is_between(first, last) & (pl.col("process") == banner[op["process"]]))
        if mine.height == 0 or mine["latency_ms"].null_count():
            continue
        error = mine["latency_ms"].sum() - (op["end_ns"] - op["start_ns"]) / 1e6
        whole.append(error)
        if mine.height == 1:
            single.append(error)
    return single, whole


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(abs(v) for v in values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]


@pytest.mark.parametrize("workload", SINGLE_PROCESS)
def test_sessions_left_open_match_truth(out, workload):
    ses = pl.read_parquet(out[workload] / "sessions.parquet")
    mine = sorted(
        (r["session"], r["rw"], r["ended_by"] in ("C_Finalize", "never")) for r in ses.iter_rows(named=True)
    )
    theirs = sorted((s["handle"], s["rw"], s["left_open"]) for s in truth(workload)["sessions"])
    assert mine == theirs


def test_sessions_of_three_processes_match_truth_per_process(out):
    """Three processes append to one file under a 0.23 spy (no pid): each session is found in
    the right process (banner order), with its rw flag and its end."""
    facts = truth("processes")
    banner = {p["index"]: p["banner_index"] for p in facts["processes"]}
    ses = pl.read_parquet(out["processes"] / "sessions.parquet")
    mine = sorted(
        (r["process"], r["session"], r["rw"], r["ended_by"] in ("C_Finalize", "never")) for r in ses.iter_rows(named=True)
    )
    theirs = sorted((banner[s["process"]], s["handle"], s["rw"], s["left_open"]) for s in facts["sessions"])
    assert mine == theirs


@pytest.mark.parametrize("workload", SINGLE_PROCESS)
def test_logins_and_logouts_match_truth(out, workload):
    auth = truth(workload)["auth"]
    ok = [a for a in auth if a["rv"] and a["rv"]["value"] == 0]
    procs = pl.read_parquet(out[workload] / "processes.parquet")
    assert procs["logins"].sum() == sum(a["func"] == "C_Login" for a in ok)
    assert procs["logouts"].sum() == sum(a["func"] == "C_Logout" for a in ok)


def test_sessions_left_to_finalize_are_reported(out):
    f = pl.read_parquet(out["errors"] / "findings.parquet")
    left = sum(s["left_open"] for s in truth("errors")["sessions"])
    row = f.filter(pl.col("code") == "session-closed-by-finalize")
    assert row["count"].sum() == left > 0
    assert pl.read_parquet(out["smoke"] / "findings.parquet").filter(pl.col("code") == "session-closed-by-finalize").height == 0


def test_latency_estimates_within_resolution_of_driver_timings(out):
    single, whole = [], []
    for w in SINGLE_PROCESS:
        s, a = latency_errors(w, out[w])
        single += s
        whole += a
    assert len(single) >= 50 and len(whole) >= 200
    assert nearest_rank(single, 0.5) <= 1.0 and nearest_rank(single, 0.95) <= 2.0
    assert nearest_rank(whole, 0.5) <= 1.0 and nearest_rank(whole, 0.95) <= 2.0


def test_error_counts_match_truth(out):
    """Every provoked failure the driver saw (got_rv) is in errors.parquet."""
    got = [op["got_rv"]["value"] for op in truth("errors")["ops"] if op.get("got_rv") and op["got_rv"]["value"] != 0]
    per_rv = pl.read_parquet(out["errors"] / "errors.parquet").filter(pl.col("func").is_null())
    counts = dict(per_rv.select("rv", "count").iter_rows())
    for rv in set(got):
        assert counts.get(rv, 0) >= got.count(rv), hex(rv)


if __name__ == "__main__":  # the figures for docs/stages.md
    import tempfile

    root = Path(tempfile.mkdtemp())
    rows = []
    for w in ALL:
        parse_logs([str(SAMPLES / f"{w}.log")], root / w)
        analyze(root / w)
        s, a = latency_errors(w, root / w)
        rows.append((w, s, a))
    groups = [(w, s, a) for w, s, a in rows] + [
        ("single-process, all", [x for w, s, _ in rows if w in SINGLE_PROCESS for x in s], [x for w, _, a in rows if w in SINGLE_PROCESS for x in a])
    ]
    print("| trace | single-call ops | median abs err | p95 abs err | all ops | median abs err | p95 abs err | median signed |")
    print("|---|---|---|---|---|---|---|---|")
    for w, s, a in groups:
        print(
            f"| {w} | {len(s)} | {nearest_rank(s, .5):.2f} | {nearest_rank(s, .95):.2f} | {len(a)} | "
            f"{nearest_rank(a, .5):.2f} | {nearest_rank(a, .95):.2f} | {statistics.median(a):+.2f} |",
            file=sys.stdout,
        )
