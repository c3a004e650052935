"""Inputs as users have them: compressed logs (told by content, streamed), empty files, odd
names, a closed stdin — through the real command and the job, on real traces."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal
from spylogs import DATA, header_counts, p11lens

from pipeline import parallel
from pipeline.jobs.config import load_config
from pipeline.jobs.run import run_job
from pipeline.parse import parse_logs

SAMPLES = Path(__file__).parent.parent / "sample-logs"
MIXED = SAMPLES / "mixed.log"
THREADS = SAMPLES / "threads.log"
COMPRESSORS = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda data: pa.compress(data, "zstd", asbytes=True),
}


def calls(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "calls.parquet").drop("source").sort("line")


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    done = p11lens("-q", "parse", str(MIXED), "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_compressed_log_is_read_by_content_whatever_its_name(tmp_path, plain, fmt):
    """A rotated ``.log.1.gz``, or the same bytes saved as ``.log``: the rows and the line
    accounting of the plain log; the manifest says how it was stored."""
    data = COMPRESSORS[fmt](MIXED.read_bytes())
    for name in (f"mixed.log.1.{fmt}", "saved-as-plain.log"):
        log = tmp_path / name
        log.write_bytes(data)
        out = tmp_path / f"out-{name}"
        done = p11lens("-q", "run", str(log), "-o", str(out), "--formats", "txt")
        assert done.returncode == 0 and done.stderr == b"", done.stderr
        assert_frame_equal(calls(out), calls(plain))
        entry = manifest(out)["inputs"][0]
        assert entry["coverage"] == manifest(plain)["inputs"][0]["coverage"]
        assert entry["compression"] == {"format": fmt, "uncompressed_size": MIXED.stat().st_size, "complete": True}
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()  # the file as stored
    assert manifest(plain)["inputs"][0]["compression"] is None


def test_compressed_stdin_and_a_plain_file_named_gz(tmp_path, plain):
    done = p11lens("-q", "parse", "-", "-o", str(tmp_path / "a"), stdin=gzip.compress(MIXED.read_bytes()))
    assert done.returncode == 0, done.stderr
    assert_frame_equal(calls(tmp_path / "a"), calls(plain))
    fake = tmp_path / "plain.log.gz"
    fake.write_bytes(MIXED.read_bytes())
    assert p11lens("-q", "parse", str(fake), "-o", str(tmp_path / "b")).returncode == 0
    assert_frame_equal(calls(tmp_path / "b"), calls(plain))


def test_cut_compressed_log_reads_up_to_the_cut_with_a_warning(tmp_path):
    data = gzip.compress(MIXED.read_bytes())
    log = tmp_path / "cut.log.gz"
    log.write_bytes(data[: len(data) * 2 // 3])
    done = p11lens("parse", str(log), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    err = done.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "gzip data ends early" in err[0]
    got = pl.read_parquet(tmp_path / "out" / "calls.parquet")
    assert 0.5 < got.height / header_counts(MIXED.read_bytes()).total() < 1
    assert manifest(tmp_path / "out")["inputs"][0]["compression"]["complete"] is False


@pytest.mark.parametrize("fmt", ["gzip", "xz"])
def test_damaged_compressed_log_is_one_line_exit_2(tmp_path, fmt):
    data = bytearray(COMPRESSORS[fmt](MIXED.read_bytes()))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    log = tmp_path / "bad.log.z"
    log.write_bytes(bytes(data))
    done = p11lens("-q", "run", str(log), "-o", str(tmp_path / "out"))
    err = done.stderr.decode()
    assert done.returncode == 2 and len(err.strip().splitlines()) == 1 and f"damaged {fmt} data" in err, err


def test_empty_compressed_log_is_empty_input(tmp_path):
    log = tmp_path / "empty.log.gz"
    log.write_bytes(gzip.compress(b""))
    done = p11lens("-q", "parse", str(log), "-o", str(tmp_path / "out"))
    assert done.returncode == 2 and b"is empty" in done.stderr


def test_a_large_compressed_log_is_parsed_by_one_worker_with_the_same_rows(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(parallel, "MIN_RANGE_BYTES", 16 << 10)
    log = tmp_path / "big.log.gz"
    log.write_bytes(gzip.compress(MIXED.read_bytes() + THREADS.read_bytes()))
    caplog.set_level("INFO", logger="pipeline.parallel")
    parse_logs([str(log)], tmp_path / "j2", workers=2)
    assert "gzip-compressed: parsed by one worker" in caplog.text
    parse_logs([str(log)], tmp_path / "j1", workers=1)
    assert pl.read_parquet(tmp_path / "j2" / "calls.parquet").equals(pl.read_parquet(tmp_path / "j1" / "calls.parquet"))


def _peak_rss_kib(*args: str) -> int:
    script = ("import resource, sys; from pipeline.cli import main; code = main(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "-q", *args], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_compressed_log_is_streamed_in_bounded_memory(tmp_path):
    """A 64 MB log compressed: peak memory as for the plain log, not the log's size more."""
    log = tmp_path / "big.log"
    chunk = MIXED.read_bytes()
    with open(log, "wb") as fh:
        for _ in range((64 << 20) // len(chunk)):
            fh.write(chunk)
    packed = tmp_path / "big.log.xz"
    packed.write_bytes(lzma.compress(log.read_bytes(), preset=0))
    plain_kib = _peak_rss_kib("parse", str(log), "-j", "1", "-o", str(tmp_path / "a"))
    packed_kib = _peak_rss_kib("parse", str(packed), "-j", "1", "-o", str(tmp_path / "b"))
    assert packed_kib < plain_kib + (24 << 10), (plain_kib, packed_kib)


def test_file_name_that_is_not_utf8_is_read_and_named_with_escapes(tmp_path):
    odd = Path(f"{tmp_path}/trace-\udcff.log")  # how Python holds a file name with the byte 0xff
    odd.write_bytes(MIXED.read_bytes())
    out = tmp_path / "out"
    done = p11lens("-q", "run", str(odd), "-o", str(out), "--formats", "md,html")
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(out / "calls.parquet")["source"].unique().to_list() == [f"{tmp_path}/trace-\\xff.log"]
    odd_out = Path(f"{tmp_path}/out-\udcff")
    done = p11lens("-q", "parse", str(MIXED), "-o", str(odd_out))
    assert done.returncode == 2 and b"not UTF-8" in done.stderr


def test_closed_stdin_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline", "parse", "-", "-o", str(tmp_path)], stdin=subprocess.DEVNULL,
                          capture_output=True, preexec_fn=lambda: __import__("os").close(0))
    assert done.returncode == 2 and done.stderr.decode().strip() == "p11lens: error: stdin is closed (give a log file, or pipe one in)"


def test_full_stdout_is_one_line_naming_stdout(tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "pipeline", "parse", str(MIXED), "-o", str(tmp_path)], stdout=full,
                              stderr=subprocess.PIPE)
    assert done.returncode == 2 and done.stderr.decode().strip() == "p11lens: error: stdout: cannot write (No space left on device)"


# -- jobs --------------------------------------------------------------------------------------------
def job_config(tmp: Path, inputs: list[str]) -> Path:
    path = tmp / "job.toml"
    path.write_text(f"inputs = {json.dumps(inputs)}\noutput = \"out\"\nformats = []\n")
    return path


def dataset(out: Path) -> pl.DataFrame:
    return pl.scan_parquet(out / "calls", hive_partitioning=True).collect().drop("date").sort("source", "line")


def one_shot(paths: list[Path], where: Path) -> pl.DataFrame:
    parse_logs([str(p) for p in paths], where)
    return pl.read_parquet(where / "calls.parquet").sort("source", "line")


def test_job_reads_a_compressed_file_whole_and_again_when_it_grows(tmp_path):
    """logrotate compressing while the job runs: the cut stream gives its calls so far; once the
    file is complete it is parsed again from its start, its earlier rows replaced, not doubled."""
    logs = tmp_path / "logs"
    logs.mkdir()
    data = gzip.compress(MIXED.read_bytes() + THREADS.read_bytes())
    rotated = logs / "app.log.2.gz"
    rotated.write_bytes(data[: len(data) // 2])
    cfg = load_config(job_config(tmp_path, ["logs/*"]))
    first = run_job(cfg)
    assert any("gzip data ends early" in w for w in first.warnings)
    assert_frame_equal(dataset(tmp_path / "out"), one_shot([rotated], tmp_path / "one1").with_columns(
        pl.lit("logs/app.log.2.gz").alias("source")))
    with open(rotated, "ab") as fh:
        fh.write(data[len(data) // 2 :])
    second = run_job(cfg)
    whole = one_shot([rotated], tmp_path / "one2").with_columns(pl.lit("logs/app.log.2.gz").alias("source"))
    assert_frame_equal(dataset(tmp_path / "out"), whole)
    assert first.new_records + second.new_records == whole.height
    state = json.loads((tmp_path / "out" / "job" / "state.json").read_text())
    assert state["files"]["logs/app.log.2.gz"]["compression"] == "gzip"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["inputs"][0]["compression"] == "gzip"
    # unchanged, then renamed by the next rotation: nothing parsed, the rows follow the name
    assert run_job(cfg).changed == []
    rotated.rename(logs / "app.log.3.gz")
    moved = run_job(cfg)
    assert moved.changed == [] and moved.new_records == 0
    assert dataset(tmp_path / "out")["source"].unique().to_list() == ["logs/app.log.3.gz"]


def test_job_treats_an_empty_file_as_no_new_data(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    done = subprocess.run([str(Path(sys.executable).parent / "p11lens"), "job", str(job_config(tmp_path, ["app.log"]))],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "0 changed, 0 new record(s)" in done.stdout
    log.write_bytes(MIXED.read_bytes())
    report = run_job(load_config(tmp_path / "job.toml"))
    assert report.changed == ["app.log"] and report.new_records == header_counts(MIXED.read_bytes()).total()


# -- unreadable call records: a warning, or exit 1 with --strict ---------------------------------------
def damaged(tmp: Path) -> Path:
    """mixed.log with two record headers lost (as a bad copy loses them): their bodies remain,
    shaped like spy output but belonging to no call."""
    lines = MIXED.read_bytes().split(b"\n")
    headers = [i for i, line in enumerate(lines) if line[:1].isdigit() and b": C_" in line]
    lost = {headers[100], headers[400]}
    path = tmp / "damaged.log"
    path.write_bytes(b"\n".join(line for i, line in enumerate(lines) if i not in lost))
    return path


def test_unreadable_call_records_warn_in_one_line_per_input(tmp_path):
    log = damaged(tmp_path)
    done = p11lens("parse", str(log), str(DATA / "09-stderr-mixed_0.27.1.log"), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    entry = manifest(tmp_path / "out")["inputs"][0]["coverage"]
    assert entry["unreadable_lines"] > 0 and len(entry["unreadable_spans"]) == 2
    spans = ", ".join(f"{a}-{b}" for a, b in entry["unreadable_spans"])
    assert done.stderr.decode().splitlines() == [  # the stderr log's application output is no lost record
        f"p11lens: {log}: {entry['unreadable_lines']} unreadable call-record line(s), shaped like spy output but not "
        f"read into a call (lines {spans}); --strict makes this exit 1"
    ]


@pytest.mark.parametrize("command", ["parse", "run"])
def test_strict_exits_1_on_unreadable_call_records_with_the_outputs_written(tmp_path, command):
    out = tmp_path / "out"
    done = p11lens("-q", command, "--strict", str(damaged(tmp_path)), "-o", str(out))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == ["p11lens: --strict: 1 of 1 input(s) have unreadable call records"]
    assert (out / "calls.parquet").is_file() and (command == "parse" or (out / "report.html").is_file())
    clean = p11lens("-q", command, "--strict", str(DATA / "09-stderr-mixed_0.27.1.log"), "-o", str(out))
    assert clean.returncode == 0 and clean.stderr == b""  # other text is not a lost record


def test_job_warns_once_and_strict_keeps_exit_1(tmp_path):
    log = damaged(tmp_path)
    cfg = job_config(tmp_path, ["damaged.log"])
    report = run_job(load_config(cfg))
    assert report.exit_code == 0 and [w for w in report.warnings if "unreadable call-record line(s)" in w]
    cfg.write_text(cfg.read_text() + "strict = true\n")
    p11lens_job = [str(Path(sys.executable).parent / "p11lens"), "job", str(cfg)]
    done = subprocess.run(p11lens_job, capture_output=True, text=True)
    assert done.returncode == 1 and "strict: unreadable call-record lines in damaged.log" in done.stderr
    assert "unreadable call-record line(s)" not in done.stderr  # nothing new: no warning again, the verdict stays
    with open(log, "ab") as fh:
        fh.write(THREADS.read_bytes())
    done = subprocess.run(p11lens_job, capture_output=True, text=True)
    assert done.returncode == 1 and "unreadable call-record line(s)" not in done.stderr  # the new calls read well


# -- damaged outputs given back as input -------------------------------------------------------------
def test_analyze_of_damaged_outputs_is_one_line_exit_2(tmp_path, plain):
    for name, damage in {
        "manifest": lambda out: (out / "manifest.json").write_text("[1, 2]\n"),
        "pages": lambda out: _scribble(out / "calls.parquet"),
    }.items():
        out = tmp_path / name
        shutil.copytree(plain, out)
        damage(out)
        done = p11lens("-q", "analyze", str(out))
        err = done.stderr.decode()
        assert done.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert {"manifest": "not a p11lens manifest", "pages": "damaged Parquet data"}[name] in err


def _scribble(path: Path) -> None:
    """Overwrite a stretch in the middle of a file (its pages, not its footer), as a bad disk would."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 2000] = bytes(range(256)) * 7 + bytes(208)
    path.write_bytes(bytes(data))


def test_read_only_output_folder_is_one_line(tmp_path, plain):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(plain), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        for args in (["analyze", str(ro)], ["parse", str(MIXED), "-o", str(ro)], ["report", str(tmp_path / "ro")]):
            done = p11lens("-q", *args)
            assert done.returncode == 2 and done.stderr.decode().strip() == f"p11lens: error: output folder {ro} is not writable"
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
