"""`p11lens job`: incremental, idempotent, cron-safe — on real traces from the driver.

The invariant every test holds the job to: after any sequence of runs (appends, records cut at
the end of a file still being written, kill -9 at any point, rotation), the calls dataset
``OUT/calls/date=*/part-*.parquet`` equals a one-shot ``parse_logs`` of the files as they are
now, row for row (sorted on source + line; only the ``date`` partition column is ignored).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.errors import P11lensError
from pipeline.jobs.config import EXAMPLE, ConfigError, load_config, write_example
from pipeline.jobs.run import KILL_ENV, run_job
from pipeline.jobs.state import load_state
from pipeline.parse import parse_logs

P11LENS = str(Path(sys.executable).parent / "p11lens")


# -- helpers -----------------------------------------------------------------------------------
def drive(log: Path, workload: str, *args: str, append: bool = False) -> None:
    cmd = [P11LENS, "drive", "--workload", workload, *args, "-o", str(log)] + (["--append"] if append else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def config(tmp: Path, inputs: list[str], out: str = "out", **extra) -> Path:
    lines = [f"inputs = {json.dumps(inputs)}", f"output = {json.dumps(out)}"]
    extra.setdefault("formats", [])
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = tmp / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def job(cfg: Path):
    return run_job(load_config(cfg))


def cli(cfg: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([P11LENS, "job", str(cfg)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def dataset(out: Path) -> pl.DataFrame:
    frame = pl.scan_parquet(out / "calls", hive_partitioning=True).collect()
    return frame.drop("date").sort("source", "line")


def one_shot(paths: list[Path], where: Path) -> pl.DataFrame:
    parse_logs([str(p) for p in paths], where)
    return pl.read_parquet(where / "calls.parquet").sort("source", "line")


def assert_equals_one_shot(out: Path, paths: list[Path], where: Path) -> pl.DataFrame:
    expected = one_shot(paths, where)
    got = dataset(out)
    assert got.height == expected.height
    assert_frame_equal(got, expected)
    return got


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "runs.jsonl" and p.name != "lock"}


def grow(dst: Path, data: bytes, upto: int) -> None:
    """Append to ``dst`` (as the spy does: O_APPEND) until it holds ``data[:upto]``."""
    have = dst.stat().st_size if dst.exists() else 0
    with open(dst, "ab") as fh:
        fh.write(data[have:upto])


# -- real traces, made once ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("traces")
    mixed = tmp / "mixed.log"
    drive(mixed, "mixed", "--ops", "80", "--seed", "11")
    first = tmp / "mixed-first.log"
    first.write_bytes(mixed.read_bytes())
    drive(mixed, "processes", "--ops", "45", "--processes", "3", "--seed", "12", append=True)
    threads = tmp / "threads.log"
    drive(threads, "threads", "--ops", "60", "--threads", "3", "--seed", "13")
    errors = tmp / "errors.log"
    drive(errors, "errors", "--seed", "3")
    return {"first": first, "mixed": mixed, "threads": threads, "errors": errors}


# -- incremental = one shot --------------------------------------------------------------------------
def test_append_real_calls_then_run_again_equals_one_shot(traces, tmp_path):
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    log.write_bytes(traces["first"].read_bytes())
    cfg = config(tmp_path, [str(tmp_path / "logs" / "*.log")])
    first = job(cfg)
    assert first.changed == [str(log)] and first.exit_code == 0
    assert_equals_one_shot(tmp_path / "out", [log], tmp_path / "one1")
    drive(log, "processes", "--ops", "30", "--processes", "3", "--seed", "21", append=True)  # real appended calls
    before = load_state(tmp_path / "out" / "job" / "state.json").files[str(log)]
    second = job(cfg)
    assert second.bytes_parsed < log.stat().st_size  # it resumed from the checkpoint
    assert second.bytes_parsed <= log.stat().st_size - before.offset
    got = assert_equals_one_shot(tmp_path / "out", [log], tmp_path / "one2")
    assert second.new_records == got.height - first.new_records
    runs = [json.loads(line) for line in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    assert [r["new_records"] for r in runs] == [first.new_records, second.new_records]
    assert {"start", "end", "files", "new_records", "warnings"} <= set(runs[0])


@pytest.mark.parametrize("name", ["threads", "mixed"])
def test_file_growing_in_random_byte_pieces_equals_one_shot_after_every_run(traces, tmp_path, name):
    """Records (and lines) cut at the current end of a file still being written: every prefix."""
    data = traces[name].read_bytes()
    log = tmp_path / "live.log"
    cfg = config(tmp_path, [str(log)])
    rng = random.Random(name)
    cuts = sorted(rng.sample(range(1, len(data)), 5)) + [len(data)]
    for k, cut in enumerate(cuts):
        grow(log, data, cut)
        job(cfg)
        assert_equals_one_shot(tmp_path / "out", [log], tmp_path / f"one{k}")  # tail = what a one-shot says now
    state = load_state(tmp_path / "out" / "job" / "state.json")
    cp = state.files[str(log)]
    assert 0 < cp.offset < len(data) and cp.tail_bytes == len(data) - cp.offset
    assert cp.tail_bytes < 64 << 10  # only the last record(s) stay replaceable


def test_nothing_new_changes_nothing(traces, tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(traces["threads"].read_bytes())
    cfg = config(tmp_path, ["*.log"], formats=["md"])
    assert job(cfg).analyzed
    out = tmp_path / "out"
    before = digests(out)
    again = job(cfg)
    assert again.changed == [] and again.new_records == 0 and not again.analyzed
    assert digests(out) == before  # dataset, state, stage outputs, reports: byte for byte
    assert len((out / "runs.jsonl").read_text().splitlines()) == 2
    # sources are the paths as matched (relative to the config's folder)
    assert dataset(out)["source"].unique().to_list() == ["a.log"]


def test_dataset_is_one_hive_table_for_polars_and_duckdb(traces, tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(traces["mixed"].read_bytes())
    job(config(tmp_path, [str(log)]))
    out = tmp_path / "out"
    parts = sorted((out / "calls").glob("date=*/part-*.parquet"))
    assert parts and all(p.parent.name.startswith("date=") for p in parts)
    lazy = pl.scan_parquet(out / "calls", hive_partitioning=True).collect()
    assert lazy["date"].dtype == pl.Date
    assert (lazy["date"] == lazy["ts"].dt.date()).all()
    n = duckdb.sql(f"select count(*) from read_parquet('{out}/calls/*/*.parquet', hive_partitioning=true)").fetchall()[0][0]
    assert n == lazy.height


# -- rotation ------------------------------------------------------------------------------------
def test_logrotate_rename_is_followed_and_the_new_file_parsed_from_its_start(traces, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    data = traces["mixed"].read_bytes()
    log.write_bytes(data[: len(data) // 2])
    cfg = config(tmp_path, [str(logs / "app.log*")])
    job(cfg)
    grow(log, data, len(data))  # more calls before rotation
    log.rename(logs / "app.log.1")  # logrotate (create): same inode, new name
    log.write_bytes(traces["threads"].read_bytes())  # the spy's next processes write a new file
    report = job(cfg)
    assert any("renamed to" in w for w in report.warnings)
    assert_equals_one_shot(tmp_path / "out", [log, logs / "app.log.1"], tmp_path / "one")


def test_replaced_or_truncated_file_is_parsed_from_its_start_old_rows_kept(traces, tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(traces["mixed"].read_bytes())
    cfg = config(tmp_path, [str(log)])
    first = job(cfg)
    log.unlink()
    log.write_bytes(traces["threads"].read_bytes()[:50_000])  # a new, smaller file under the same name
    report = job(cfg)
    assert any("parsed from its start" in w for w in report.warnings)
    got = dataset(tmp_path / "out")
    current = got.filter(pl.col("source") == str(log))
    assert_frame_equal(current, one_shot([log], tmp_path / "one"))
    retired = got.filter(pl.col("source") != str(log))
    assert retired.height == first.new_records and retired["source"].unique().str.contains("rotated").all()
    # the same file truncated in place (copytruncate): same inode, smaller
    with open(log, "r+b") as fh:
        fh.truncate(10_000)
    job(cfg)
    current = dataset(tmp_path / "out").filter(pl.col("source") == str(log))
    assert_frame_equal(current, one_shot([log], tmp_path / "one2"))
    # a deleted file's rows stay
    log.unlink()
    other = tmp_path / "b.log"
    other.write_bytes(traces["errors"].read_bytes())
    cfg = config(tmp_path, [str(tmp_path / "*.log")])
    report = job(cfg)
    assert any("no longer found" in w for w in report.warnings)
    assert dataset(tmp_path / "out").filter(pl.col("source") == str(log)).height == current.height


# -- kill -9 at any point ---------------------------------------------------------------------------
KILL_POINTS = ["block:1", "parsed", "part:1", "part:2", "written", "committed", "removed", "analyzed"]


def test_killed_runs_then_rerun_equal_one_shot(traces, tmp_path):
    data = traces["threads"].read_bytes() + traces["mixed"].read_bytes()
    log = tmp_path / "live.log"
    cfg = config(tmp_path, [str(log)])
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(len(data) // 4, len(data)), len(KILL_POINTS)))
    grow(log, data, len(data) // 4)
    job(cfg)
    for point, cut in zip(KILL_POINTS, cuts):
        grow(log, data, cut)
        killed = cli(cfg, {KILL_ENV: point})
        assert killed.returncode == -9, (point, killed.stderr)
    job(cfg)  # the re-run after the last kill
    assert_equals_one_shot(tmp_path / "out", [log], tmp_path / "one")
    calls = tmp_path / "out" / "calls"
    listed = {p.file for p in load_state(tmp_path / "out" / "job" / "state.json").parts}
    assert {str(p.relative_to(calls)) for p in calls.rglob("*") if p.is_file()} == listed  # no leftovers


def test_first_run_killed_after_writing_parts_then_rerun_equals_one_shot(traces, tmp_path):
    """The random-moment kill below once landed here: parts written, no state committed yet."""
    log = tmp_path / "a.log"
    log.write_bytes(traces["mixed"].read_bytes())
    cfg = config(tmp_path, [str(log)])
    killed = cli(cfg, {KILL_ENV: "written"})
    assert killed.returncode == -9, killed.stderr
    assert any((tmp_path / "out" / "calls").glob("date=*/part-*.parquet"))
    job(cfg)
    assert_equals_one_shot(tmp_path / "out", [log], tmp_path / "one")


def test_killed_at_a_random_moment_then_rerun_equals_one_shot(traces, tmp_path):
    log = tmp_path / "big.log"
    log.write_bytes(traces["mixed"].read_bytes() * 6)
    cfg = config(tmp_path, [str(log)])
    proc = subprocess.Popen([P11LENS, "job", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=random.Random(3).uniform(1.0, 2.5))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    job(cfg)
    assert_equals_one_shot(tmp_path / "out", [log], tmp_path / "one")


# -- exit codes ----------------------------------------------------------------------------------
def test_second_run_while_one_holds_the_lock_exits_3(traces, tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(traces["first"].read_bytes())
    cfg = config(tmp_path, [str(log)])
    lock = tmp_path / "out" / "job" / "lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("pid 4242, since now\n")
        fh.flush()
        done = cli(cfg)
    assert done.returncode == 3
    assert "another job run holds" in done.stderr and "pid 4242" in done.stderr
    assert not (tmp_path / "out" / "calls").exists()
    assert cli(cfg).returncode == 0  # released: the next run goes ahead


def test_threshold_crossed_exits_1(traces, tmp_path):
    base = tmp_path / "baseline"
    done = subprocess.run([P11LENS, "run", str(traces["first"]), "-o", str(base), "--formats", "md"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "errors.log"
    log.write_bytes(traces["errors"].read_bytes())
    cfg = config(tmp_path, [str(log)], fail_on=["errors=+0", "rv=new"], baseline="baseline", formats=["md"])
    done = cli(cfg)
    assert done.returncode == 1, done.stderr
    assert "threshold crossed: errors=+0" in done.stderr
    assert (tmp_path / "out" / "report.md").is_file()
    last = json.loads((tmp_path / "out" / "runs.jsonl").read_text().splitlines()[-1])
    assert last["exit"] == 1 and last["thresholds_crossed"]
    ok = config(tmp_path, [str(log)], fail_on=["p99=+100000ms"], baseline="baseline")
    assert cli(ok).returncode == 0


def test_without_baseline_thresholds_compare_with_the_previous_run(traces, tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(traces["first"].read_bytes())
    cfg = config(tmp_path, [str(log)], fail_on=["rv=new"])
    first = job(cfg)
    assert first.exit_code == 0 and any("no previous run" in w for w in first.warnings)
    log.write_bytes(log.read_bytes() + traces["errors"].read_bytes())
    assert job(cfg).exit_code == 1  # return codes the previous run never saw


@pytest.mark.parametrize(
    "body, message",
    [
        ('inputs = ["*.log"]\n', "'output' is required"),
        ('output = "out"\n', "'inputs' is required"),
        ('inputs = ["*.log"]\noutput = "out"\nfail_on = ["p95=lots"]\n', "'fail_on'"),
        ('inputs = ["*.log"]\noutput = "out"\nformats = ["pdf"]\n', "unknown format"),
        ('inputs = ["*.log"]\noutput = "out"\nretention = 3\n', "unknown key"),
        ('inputs = ["*.log"]\noutput = "out"\nwindow_days = 0\n', "window_days"),
        ('inputs = "*.log\noutput = "out"\n', "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, body, message):
    cfg = tmp_path / "job.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)
    done = cli(cfg)
    assert done.returncode == 2 and message.strip("'") in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_no_matching_input_is_exit_2_and_init_writes_a_valid_example(tmp_path):
    done = cli(config(tmp_path, ["nothing/*.log"]))
    assert done.returncode == 2 and "no file matches" in done.stderr
    path = write_example(tmp_path / "example.toml")
    cfg = load_config(path)
    assert cfg.inputs == ["logs/*.log"] and cfg.output == tmp_path / "out" and cfg.formats == ["html", "md"]
    assert [str(t) for t in cfg.fail_on] == ["p95=+20%"]
    assert path.read_text() == EXAMPLE
    with pytest.raises(P11lensError, match="already exists"):
        write_example(path)
    done = subprocess.run([P11LENS, "job", "--init", str(tmp_path / "x.toml")], capture_output=True, text=True)
    assert done.returncode == 0 and (tmp_path / "x.toml").read_text() == EXAMPLE


def test_many_small_runs_are_compacted_and_still_equal_one_shot(traces, tmp_path):
    data = traces["mixed"].read_bytes()
    log = tmp_path / "live.log"
    cfg = config(tmp_path, [str(log)], compact_parts=2)
    for k in range(1, 6):
        grow(log, data, len(data) * k // 5)
        job(cfg)
    state = load_state(tmp_path / "out" / "job" / "state.json")
    committed = [p for p in state.parts if p.tail_of is None]
    assert 1 <= len(committed) <= 3
    assert_equals_one_shot(tmp_path / "out", [log], tmp_path / "one")
