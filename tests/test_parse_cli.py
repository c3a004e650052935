"""`p11lens parse` as a user or cron job runs it: outputs, stdin, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess

import polars as pl
import pytest
from spylogs import DATA, PINS, header_counts, pin_patterns, p11lens

KEYGEN = DATA / "02-keygen-sign_0.27.1.log"
MULTI = DATA / "07-multiprocess-append_0.23.0-debian.log"


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert needle in stderr


def test_parse_writes_calls_and_manifest_with_summary_line(tmp_path):
    result = p11lens("parse", str(KEYGEN), str(MULTI), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    calls = pl.read_parquet(tmp_path / "out" / "calls.parquet")
    assert sorted(set(calls["source"].to_list())) == sorted([str(KEYGEN), str(MULTI)])
    expected = sum(header_counts(p.read_bytes()).total() for p in (KEYGEN, MULTI))
    assert calls.height == expected
    assert f"{expected} records" in result.stdout.decode()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]] == [str(KEYGEN), str(MULTI)]
    assert manifest["inputs"][1]["counts"]["banners"] == 4
    assert not [p for p in os.listdir(tmp_path / "out") if ".tmp-" in p]
    stdout = result.stdout.decode()
    for pin in PINS:
        assert pin_patterns(pin)[0] not in stdout


def test_stdin_is_read_with_dash(tmp_path):
    result = p11lens("parse", "-", "-o", str(tmp_path), stdin=KEYGEN.read_bytes())
    assert result.returncode == 0, result.stderr
    calls = pl.read_parquet(tmp_path / "calls.parquet")
    assert calls.height == header_counts(KEYGEN.read_bytes()).total()
    assert set(calls["source"].to_list()) == {"-"}


@pytest.mark.parametrize("command", ["parse", "run"])
def test_no_input_with_a_single_line_is_one_line_exit_2(tmp_path, command):
    """An empty file or stdin gives one clear line, not a report of 0 calls (random bytes exit 2 too)."""
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    quiet = ["-q"] if command == "run" else []  # run's progress lines aside
    assert_one_line_error(p11lens(*quiet, command, str(empty), "-o", str(tmp_path / "out")), "empty.log is empty")
    assert_one_line_error(p11lens(*quiet, command, "-", "-o", str(tmp_path / "out"), stdin=b""), "stdin is empty")
    assert not (tmp_path / "out" / "calls.parquet").exists()


def test_an_empty_input_beside_a_real_one_is_a_warning(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    result = p11lens("parse", str(empty), str(KEYGEN), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().strip() == f"p11lens: {empty} is empty (not a single line)"
    assert pl.read_parquet(tmp_path / "out" / "calls.parquet").height == header_counts(KEYGEN.read_bytes()).total()


def test_missing_file(tmp_path):
    assert_one_line_error(p11lens("parse", str(tmp_path / "nope.log"), "-o", str(tmp_path)), "no such file")


def test_directory_as_input(tmp_path):
    assert_one_line_error(p11lens("parse", str(tmp_path), "-o", str(tmp_path / "o")), "is a directory")


def test_not_a_spy_log(tmp_path):
    text = tmp_path / "readme.txt"
    text.write_text("hello\nthis is not a pkcs11 spy log\n" * 50)
    result = p11lens("parse", str(text), "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "not a pkcs11-spy log")
    assert not (tmp_path / "out" / "calls.parquet").exists()


def test_binary_junk(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(300_000))
    assert_one_line_error(p11lens("parse", str(junk), "-o", str(tmp_path / "out")), "not a pkcs11-spy log")


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(p11lens("parse", str(KEYGEN), "-o", str(blocker / "out")), "cannot create output folder")


def test_wrong_options_exit_2_without_traceback(tmp_path):
    result = p11lens("parse", str(KEYGEN))  # no -o
    assert_one_line_error(result, "-o")


def test_help_explains_the_command():
    result = p11lens("parse", "--help")
    assert result.returncode == 0
    assert b"manifest.json" in result.stdout and b"stdin" in result.stdout


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_top_level_flags(flag):
    assert p11lens(flag).returncode == 0


def test_many_batches_keep_every_row(tmp_path, monkeypatch):
    """Rows survive batch flushes (a regression: rows after the first batch were once dropped)."""
    from pipeline import store
    from pipeline.parse import parse_logs

    monkeypatch.setattr(store, "BATCH_ROWS", 7)
    parse_logs([str(KEYGEN), str(MULTI)], tmp_path)
    calls = pl.read_parquet(tmp_path / "calls.parquet")
    assert calls.height == sum(header_counts(p.read_bytes()).total() for p in (KEYGEN, MULTI))
    assert calls.select("source", "line").is_unique().all()


@pytest.mark.parametrize("preset", [None, "jemalloc"])
def test_command_picks_the_system_arrow_allocator_unless_one_is_set(monkeypatch, preset):
    """Freed batches go back to the OS (bounded RSS); a user's own choice is kept."""
    from pipeline.cli import main

    if preset is None:
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    else:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", preset)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == (preset or "system")
