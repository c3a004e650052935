"""Benchmark p11lens against yardsticks measured in the same run.

    python bench/run.py [--size-mb 100 300] [--rounds 3] [--json bench/results.json]

It builds realistic traces (driver traces and real example logs, repeated with fresh
process banners) of the given sizes, then measures, in interleaved rounds, the median wall
time and the peak RSS of each command:

* ``wc -l`` and ``grep -c '^[0-9]*: C_'``: what merely reading the file costs;
* ``bench/naive.py``: a plain line-by-line regex parser, the baseline;
* ``p11lens parse`` with 1 and 2 workers (the native engine), the reference engine with one,
  ``p11lens analyze``, ``p11lens run``;
* ``p11lens analyze`` on calls tables of 1 and 3 million rows (the parsed trace, repeated):
  its peak RSS should be the same for both (bounded memory).

Figures are MB/s, records/s, CPU seconds, peak RSS (of the largest process, from GNU time) and
ratios to the baseline and to ``grep -c``.  Ratios are what to compare across machines; absolute numbers
drift with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
P11LENS = [sys.executable, "-m", "pipeline"]
SOURCES = sorted((ROOT / "sample-logs").glob("*.log")) + sorted((ROOT / "tests" / "data" / "spy-examples").glob("*.log"))


def build_trace(size_mb: int) -> Path:
    """Real traces repeated until ``size_mb``; each repeat starts with its own spy banner."""
    path = DATA / f"trace-{size_mb}mb.log"
    if path.exists() and path.stat().st_size >= size_mb * 1_000_000:
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    blobs = [p.read_bytes() for p in SOURCES if p.stat().st_size > 2000]
    with open(path, "wb") as out:
        written = 0
        while written < size_mb * 1_000_000:
            for blob in blobs:
                out.write(blob)
                written += len(blob)
    return path


def measure(cmd: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (KiB) of one command's largest process, and CPU seconds (user +
    system, all its processes and threads: more than the wall time when it uses both cores).

    Output goes to a file, not /dev/null (GNU grep stops at the first match when it sees
    /dev/null); the RSS comes from GNU time, since a forked child's ``wait4`` figure would
    include the Python parent's memory from before ``exec``.
    """
    timed = ["/usr/bin/time", "-f", "%M %U %S", *cmd] if os.path.exists("/usr/bin/time") else cmd
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.run(timed, stdout=out, stderr=err, cwd=ROOT)
        elapsed = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {stderr[-500:]}")
    if timed is cmd:
        return elapsed, 0, 0.0
    peak, user, system = stderr.strip().splitlines()[-1].split()
    return elapsed, int(peak), float(user) + float(system)


def calls_of(out: Path) -> int:
    return pl.scan_parquet(out / "calls.parquet").select(pl.len()).collect().item()


def big_calls(out: Path, target_rows: int, name: str) -> Path:
    """A copy of ``out`` whose calls table is repeated (each copy its own source) to ``target_rows``."""
    big = DATA / name
    shutil.rmtree(big, ignore_errors=True)
    big.mkdir(parents=True)
    shutil.copy(out / "manifest.json", big / "manifest.json")
    calls = pl.read_parquet(out / "calls.parquet")
    copies = -(-target_rows // calls.height)
    frames = [calls.with_columns(pl.col("source") + f"#{i}") for i in range(copies)]
    pl.concat(frames).write_parquet(big / "calls.parquet", compression="zstd", row_group_size=65536)
    return big


def run(sizes: list[int], rounds: int) -> dict:
    results: dict = {"machine": machine(), "sizes": {}}
    for size in sizes:
        trace = build_trace(size)
        mb = trace.stat().st_size / 1e6
        out1, out2 = DATA / f"out-{size}-j1", DATA / f"out-{size}-j2"
        commands = {
            "wc -l": ["wc", "-l", str(trace)],
            "grep -c": ["grep", "-c", "^[0-9]*: C_", str(trace)],
            "naive baseline": [sys.executable, str(ROOT / "bench" / "naive.py"), str(trace)],
            "parse -j1": [*P11LENS, "parse", "-j", "1", str(trace), "-o", str(out1)],
            "parse -j2": [*P11LENS, "parse", "-j", "2", str(trace), "-o", str(out2)],
            "parse reference -j1": [*P11LENS, "parse", "--engine", "reference", "-j", "1", str(trace), "-o", str(DATA / f"out-{size}-ref")],
            "analyze": [*P11LENS, "analyze", str(out1)],
            "run -j2": [*P11LENS, "run", "-j", "2", str(trace), "-o", str(DATA / f"out-{size}-run")],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        rss: dict[str, int] = {name: 0 for name in commands}
        for _ in range(rounds):  # interleaved: every command once per round
            for name, cmd in commands.items():
                seconds, peak, cpu_seconds = measure(cmd)
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
                rss[name] = max(rss[name], peak)
        records = calls_of(out1)
        assert records == calls_of(out2), "parse -j1 and -j2 disagree on the row count"
        base = statistics.median(times["naive baseline"])
        grep = statistics.median(times["grep -c"])
        rows = {}
        for name in commands:
            t = statistics.median(times[name])
            rows[name] = {
                "seconds": round(t, 3),
                "cpu_seconds": round(statistics.median(cpu[name]), 2),
                "MB/s": round(mb / t, 1),
                "records/s": round(records / t),
                "peak_rss_mib": round(rss[name] / 1024, 1),
                "x_baseline": round(base / t, 2),
                "x_grep": round(grep / t, 3),
            }
        rows["parse -j2"]["x_parse_j1"] = round(statistics.median(times["parse -j1"]) / statistics.median(times["parse -j2"]), 2)
        results["sizes"][size] = {"trace_mb": round(mb, 1), "records": records, "commands": rows}
    for key, rows in (("analyze_1m", 1_000_000), ("analyze_3m", 3_000_000)):
        big = big_calls(DATA / f"out-{max(sizes)}-j1", rows, key.replace("_", "-"))
        seconds, peak, _ = min(measure([*P11LENS, "analyze", str(big)]) for _ in range(rounds))
        results[key] = {"rows": calls_of(big), "seconds": round(seconds, 2), "peak_rss_mib": round(peak / 1024, 1)}
    return results


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "processor": platform.processor() or platform.machine(),
        "load_avg_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def print_table(results: dict) -> None:
    for size, entry in results["sizes"].items():
        print(f"\n{size} MB trace ({entry['trace_mb']} MB, {entry['records']} records)")
        print("| command | s | CPU s | MB/s | records/s | peak RSS MiB | × baseline | × grep -c |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in entry["commands"].items():
            print(
                f"| {name} | {r['seconds']} | {r['cpu_seconds']} | {r['MB/s']} | {r['records/s']} | {r['peak_rss_mib']} "
                f"| {r['x_baseline']} | {r['x_grep']} |"
            )
        print(f"parse -j2 / parse -j1 speed-up: {entry['commands']['parse -j2']['x_parse_j1']}")
    for key in ("analyze_1m", "analyze_3m"):
        a = results[key]
        print(f"analyze on {a['rows']} calls: {a['seconds']} s, peak RSS {a['peak_rss_mib']} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()
    results = run(args.size_mb, args.rounds)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
