"""``p11lens analyze`` as a user runs it: outputs, manifest, one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from spylogs import p11lens

LOG = Path(__file__).parent / "data" / "spy-examples" / "07-multiprocess-append_0.27.1.log"


def test_analyze_writes_files_and_manifest(tmp_path):
    assert p11lens("parse", str(LOG), "-o", str(tmp_path)).returncode == 0
    run = p11lens("analyze", str(tmp_path), "--bucket", "1m")
    assert run.returncode == 0, run.stderr
    assert "findings" in run.stdout.decode()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stages = manifest["stages"]
    assert stages["bucket_seconds"] == 60
    for name, info in stages["outputs"].items():
        assert pl.read_parquet(tmp_path / info["file"]).height == info["rows"], name
    assert manifest["inputs"] and manifest["counts"]  # parse's sections kept
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_missing_calls_is_one_line_exit_2(tmp_path):
    run = p11lens("analyze", str(tmp_path))
    assert run.returncode == 2
    err = run.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "calls.parquet" in err[0]


def test_bad_bucket_is_one_line_exit_2(tmp_path):
    assert p11lens("parse", str(LOG), "-o", str(tmp_path)).returncode == 0
    run = p11lens("analyze", str(tmp_path), "--bucket", "soon")
    assert run.returncode == 2 and len(run.stderr.decode().strip().splitlines()) == 1


def test_not_a_calls_table_is_exit_2(tmp_path):
    pl.DataFrame({"x": [1]}).write_parquet(tmp_path / "calls.parquet")
    run = p11lens("analyze", str(tmp_path))
    assert run.returncode == 2 and "not a p11lens calls table" in run.stderr.decode()


def test_auto_bucket_sizes():
    from pipeline.stages.latency import auto_bucket, parse_bucket

    minute = 60_000  # the span is in ms
    assert auto_bucket(200) == 1
    assert auto_bucket(10 * minute) == 5  # 120 buckets
    assert auto_bucket(120 * minute) == 60
    assert auto_bucket(1440 * minute) == 900
    assert auto_bucket(9998 * 365 * 1440 * minute) % (30 * 86400) == 0  # year 1 to 9999: whole 30-day steps
    assert parse_bucket("1m") == 60 and parse_bucket("30s") == 30 and parse_bucket("2h") == 7200
