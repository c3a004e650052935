"""The parser on every real example log, checked against the log's own lines."""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest
from spylogs import EXAMPLE_LOGS, PINS, header_counts, line_count, pin_patterns, returned_counts, spy_version, string_values

from pipeline.parse import parse_logs


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    out = tmp_path_factory.mktemp("examples")
    manifest = parse_logs([str(p) for p in EXAMPLE_LOGS], out)
    calls = pl.read_parquet(out / "calls.parquet")
    return out, manifest, calls


def _rows(calls: pl.DataFrame, path) -> pl.DataFrame:
    return calls.filter(pl.col("source") == str(path))


@pytest.mark.parametrize("path", EXAMPLE_LOGS, ids=lambda p: p.name)
def test_records_per_function_equal_header_lines(parsed, path):
    _, _, calls = parsed
    got = Counter(_rows(calls, path)["func"].to_list())
    assert got == header_counts(path.read_bytes())


@pytest.mark.parametrize("path", EXAMPLE_LOGS, ids=lambda p: p.name)
def test_records_per_return_value_equal_returned_occurrences(parsed, path):
    _, _, calls = parsed
    rows = _rows(calls, path)
    raw = path.read_bytes()
    assert Counter(rows["rv"].drop_nulls().to_list()) == returned_counts(raw)
    incomplete = rows.filter(~pl.col("complete"))
    assert incomplete.height == sum(header_counts(raw).values()) - sum(returned_counts(raw).values())
    assert incomplete["rv"].null_count() == incomplete.height  # never counted as success


@pytest.mark.parametrize("path", EXAMPLE_LOGS, ids=lambda p: p.name)
def test_pid_and_tid_exactly_for_0_24_and_later(parsed, path):
    _, _, calls = parsed
    stamped = _rows(calls, path).filter(pl.col("ts").is_not_null())
    if spy_version(path) >= (0, 24):
        assert stamped["pid"].null_count() == 0 and stamped["tid"].null_count() == 0
    else:
        assert stamped["pid"].null_count() == stamped.height and stamped["tid"].null_count() == stamped.height


@pytest.mark.parametrize("path", EXAMPLE_LOGS, ids=lambda p: p.name)
def test_every_line_is_accounted_for(parsed, path):
    _, manifest, _ = parsed
    report = next(i for i in manifest["inputs"] if i["path"] == str(path))
    cov = report["coverage"]
    raw = path.read_bytes()
    assert cov["lines"] == line_count(raw)
    assert cov["lines"] == cov["record_lines"] + cov["banner_lines"] + cov["blank_lines"] + cov["unreadable_lines"] + cov["other_lines"]
    assert cov["unparsed_lines"] == cov["unreadable_lines"] + cov["other_lines"]
    for kind in ("unreadable", "other"):
        assert cov[f"{kind}_lines"] == sum(last - first + 1 for first, last in cov[f"{kind}_spans"])
    assert report["size"] == len(raw)


@pytest.mark.parametrize("path", EXAMPLE_LOGS, ids=lambda p: p.name)
def test_header_line_numbers_point_at_the_header(parsed, path):
    _, _, calls = parsed
    lines = path.read_bytes().split(b"\n")
    for line, seq, func in _rows(calls, path).select("line", "seq", "func").iter_rows():
        assert lines[line - 1].rstrip(b"\r") == f"{seq}: {func}".encode()


def test_other_lines_are_foreign_text(parsed):
    """Lines filed as other text are application stderr or fragments of a split line, never spy lines."""
    _, manifest, _ = parsed
    seen = {}
    for report in manifest["inputs"]:
        lines = open(report["path"], "rb").read().split(b"\n")
        for first, last in report["coverage"]["other_spans"]:
            for n in range(first, last + 1):
                seen[(report["path"].rsplit("/", 1)[-1], n)] = lines[n - 1]
    for (name, n), text in seen.items():
        assert not text.startswith((b"[in]", b"[out]", b"Returned:")), (name, n, text)
    stderr_mixed = [t for (name, _), t in seen.items() if name.startswith("09-")]
    assert stderr_mixed and all(t.startswith(b"app") for t in stderr_mixed)


def test_several_processes_get_their_own_banner_index(parsed):
    _, _, calls = parsed
    path = next(p for p in EXAMPLE_LOGS if p.name == "07-multiprocess-append_0.27.1.log")
    rows = _rows(calls, path)
    per_pid = rows.group_by("pid").agg(pl.col("process").n_unique().alias("n"), pl.col("process").first())
    assert per_pid.height == 4 and per_pid["n"].to_list() == [1, 1, 1, 1]
    assert sorted(per_pid["process"].to_list()) == [0, 1, 2, 3]
    # each process's counter restarts at 0 under its own banner
    assert rows.filter(pl.col("seq") == 0).height == 4


def test_interleaved_threads_are_marked_uncertain(parsed):
    _, _, calls = parsed
    for name in ("06-multithread_0.27.1.log", "06b-multithread-python-pkcs11_0.27.1.log"):
        rows = _rows(calls, next(p for p in EXAMPLE_LOGS if p.name == name))
        assert rows["uncertain"].sum() > 0
    single = _rows(calls, next(p for p in EXAMPLE_LOGS if p.name == "02-keygen-sign_0.27.1.log"))
    assert single["uncertain"].sum() == 0


def test_truncated_records_are_kept_incomplete(parsed):
    _, _, calls = parsed
    for name, func in (
        ("08-truncated-kill-stderr_0.27.1.log", "C_GenerateKeyPair"),
        ("08-truncated-exit-midcall_0.23.0-debian.log", "C_GenerateKeyPair"),
    ):
        rows = _rows(calls, next(p for p in EXAMPLE_LOGS if p.name == name))
        last = rows.filter(~pl.col("complete"))
        assert last["func"].to_list() == [func]
        assert last["rv"].to_list() == [None] and last["rv_name"].to_list() == [None]


def test_manifest_totals_add_up(parsed):
    out, manifest, calls = parsed
    assert manifest["counts"]["records"] == calls.height
    assert manifest["counts"]["records"] == manifest["counts"]["complete"] + manifest["counts"]["incomplete"]
    cov = manifest["coverage"]
    assert cov["lines"] == sum(line_count(p.read_bytes()) for p in EXAMPLE_LOGS)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert set(manifest["dialects"]) == {"<=0.21", "0.22-0.23", "0.24-0.26", "0.24+", "0.27"}


def test_no_pin_reaches_the_outputs(parsed):
    out, _, _ = parsed
    strings = string_values(out / "calls.parquet") + [(out / "manifest.json").read_text()]
    blob = "\n".join(strings)
    for pin in PINS:
        for pattern in pin_patterns(pin)[:2]:  # hex forms: unambiguous anywhere
            assert pattern not in blob
    long_pins = [p for p in PINS if len(p) >= 6]
    for value in string_values(out / "calls.parquet"):
        assert not any(pin in value for pin in long_pins), value
