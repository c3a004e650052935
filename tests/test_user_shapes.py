"""Real traces in the shapes users hand them over: every call record is still read.

Each shape of `tests/shapes.py` (padded, tabbed, CRLF, terminal-width, cut, commented, with
prose, module debug output or a code fence, compressed, two runs in one) is applied to the
driver's sample logs and to spy logs of several OpenSC versions.  What must come out is known
without the parser: the header lines the shaped copy still holds (a plain scan of the pristine
log, moved with the lines), and the pristine log's line accounting plus the lines the shape
inserted (issue 15; accounting split of the shared contract).

Three levels, so the whole matrix stays well under a minute:

* every shape x every log through the library's parse (`parse_logs`, in-process, fast);
* every shape once through the whole `run` (parse, analyze, three reports; `pipeline.cli.main`);
* a few shapes through the real console command in a subprocess, one of them on stdin.

``P11LENS_SHAPES_ALL=1`` runs every shape x every log through `run` as well (slow).
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shapes import (
    SHAPES, Trace, check_accounting, expected_accounting, header_calls, leaked, line_count, make, span_lines, zstd_available,
)
from spylogs import DATA, PINS, p11lens

from pipeline.cli import main as cli_main
from pipeline.parse import parse_logs

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample-logs").glob("*.log"))
EXAMPLES = [
    DATA / name
    for name in (
        "02-keygen-sign_0.20.0.log",  # oldest dialect
        "13-coverage_0.22.0.log",
        "12-mechinfo_0.24.0.log",  # P:/T: stamps
        "05-secrets_0.27.1.log",  # PINs in the hexdumps
        "09-stderr-mixed_0.27.1.log",  # already holds application output
    )
]
LOGS = {p.name: p for p in SAMPLES + EXAMPLES}
# The larger sample logs are used up to their record that ends near line 1,500 (all three
# banners of processes.log are in it): a real trace's head is still a real trace, and the matrix
# stays within its time (the pyparsing reference engine reads about 1 MB/s).
HEAD_LINES = int(os.environ.get("P11LENS_SHAPES_HEAD", "1500"))
SEED = int(os.environ.get("P11LENS_SHAPES_SEED", "15"))
ALL = os.environ.get("P11LENS_SHAPES_ALL") == "1"


@functools.lru_cache(maxsize=None)
def trace_of(log: str) -> Trace:
    """The log, or its head: whole records up to the first header at or after HEAD_LINES."""
    trace = Trace.load(LOGS[log])
    later = [h for h in trace.header_indexes() if h >= HEAD_LINES]
    if not later or HEAD_LINES <= 0:
        return trace
    end = later[0] - 1 if trace.lines[later[0] - 1].text.strip() == b"" else later[0]
    return trace.with_lines(trace.lines[:end])


def raw_of(log: str) -> bytes:
    return trace_of(log).to_bytes()


@functools.lru_cache(maxsize=None)
def shaped_copy(shape: str, log: str):
    return make(shape, trace_of(log), SEED)


def pins_of(path: Path) -> list[str]:
    truth = path.with_name(path.name + ".truth.json")
    if truth.exists():
        return sorted(json.loads(truth.read_text())["pins"].values())
    return list(PINS)


def _skip_unavailable(shape: str) -> None:
    if SHAPES[shape].compression == "zst" and not zstd_available():
        pytest.skip("no zstd compressor here (neither the zstandard module nor the zstd command)")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Each log parsed as the spy wrote it: its accounting, the reference for the shaped copies."""
    out = {}
    for name in LOGS:
        d = tmp_path_factory.mktemp("pristine")
        path = d / name
        path.write_bytes(raw_of(name))
        manifest = parse_logs([str(path)], d / "out")
        d = d / "out"
        rows = pq.read_table(d / "calls.parquet", columns=["seq", "func", "line"]).to_pydict()
        out[name] = (manifest["inputs"][0]["coverage"], Counter(zip(rows["seq"], rows["func"], rows["line"])))
    return out


def rows_of(out_dir: Path) -> Counter:
    t = pq.read_table(out_dir / "calls.parquet", columns=["seq", "func", "line"]).to_pydict()
    return Counter(zip(t["seq"], t["func"], t["line"]))


def write_input(tmp_path: Path, shaped, stem: str) -> Path:
    path = tmp_path / f"{stem}{shaped.suffix}"
    path.write_bytes(shaped.data)
    return path


def check_outputs(out_dir: Path, shaped, pristine_cov: dict) -> None:
    """calls.parquet has exactly the expected rows; the manifest accounts for every line."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    got = rows_of(out_dir)
    missing, extra = shaped.calls - got, got - shaped.calls
    assert not missing and not extra, (
        f"{shaped.shape}: {sum(missing.values())} call record(s) not read, {sum(extra.values())} unexpected; "
        f"first missing {sorted(missing)[:3]}, first extra {sorted(extra)[:3]}"
    )
    cov = manifest["inputs"][0]["coverage"]
    check_accounting(cov, line_count(shaped.text))
    want = expected_accounting(pristine_cov, shaped)
    if shaped.coverage == "blank-or-record":
        merged = want.pop("record_lines") + want.pop("blank_lines")
        assert cov["record_lines"] + cov["blank_lines"] == merged, f"{shaped.shape}: record + blank lines differ"
    if shaped.coverage in ("same", "blank-or-record"):
        assert {k: cov[k] for k in want} == want, f"{shaped.shape}: accounting differs from the pristine log's"
        if pristine_cov["other_lines"] == 0 and pristine_cov["unreadable_lines"] == 0:
            # the very lines inserted are the other text, at their line numbers
            assert span_lines(cov["other_spans"]) == set(shaped.other_at), f"{shaped.shape}: other_spans are not the inserted lines"
            assert cov["unreadable_spans"] == []


# ---- the pristine logs themselves --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOGS))
def test_pristine_log_reads_every_header(name, pristine):
    """The reference is sound: the pristine parse has one row per header line, and no unread line."""
    cov, rows = pristine[name]
    raw = raw_of(name)
    assert rows == header_calls(raw)
    check_accounting(cov, line_count(raw))


def test_every_log_has_calls_and_the_catalogue_is_complete():
    assert len(SAMPLES) >= 5 and all(p.exists() for p in EXAMPLES)
    for log in LOGS:
        assert sum(trace_of(log).calls().values()) > 0
    assert trace_of("processes.log").to_bytes().count(b"OpenSC PKCS#11 spy") == 3
    issue_shapes = {"pad-spaces", "pad-tabs", "crlf", "terminal-120", "cut-records", "cut-lines", "prose",
                    "debug-inside", "comments", "fence", "gz", "bz2", "xz", "zst", "concat"}
    assert issue_shapes <= set(SHAPES)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shape_keeps_its_header_lines(shape):
    """The shaped text itself still shows the expected headers to a plain scan (the shapes are sound)."""
    _skip_unavailable(shape)
    for log in LOGS:
        shaped = shaped_copy(shape, log)
        assert header_calls(shaped.text) == shaped.calls, (shape, log)


# ---- every shape x every log: the parse ---------------------------------------------------------


@pytest.mark.parametrize("log", sorted(LOGS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shape_parse(shape, log, pristine, tmp_path):
    _skip_unavailable(shape)
    shaped = shaped_copy(shape, log)
    path = write_input(tmp_path, shaped, Path(log).stem)
    parse_logs([str(path)], tmp_path / "out")
    check_outputs(tmp_path / "out", shaped, pristine[log][0])


def test_byte_cuts_parse(pristine, tmp_path):
    """Cuts at arbitrary bytes (mid-line at both ends): the kept header lines, all of them."""
    from shapes import byte_cut

    rng = random.Random(SEED)
    for i in range(12):
        log = rng.choice(sorted(LOGS))
        shaped = byte_cut(trace_of(log), SEED * 100 + i)
        if not shaped.calls:
            continue
        path = write_input(tmp_path, shaped, f"cut{i}")
        parse_logs([str(path)], tmp_path / f"out{i}")
        check_outputs(tmp_path / f"out{i}", shaped, pristine[log][0])


# ---- every shape once: the whole run -------------------------------------------------------------


def _run_cases():
    """Each shape with one log (a fixed, seeded choice that visits every log); all logs with ALL."""
    names = sorted(LOGS)
    rng = random.Random(SEED)
    cases = []
    for i, shape in enumerate(sorted(SHAPES)):
        logs = names if ALL else [names[(i + rng.randrange(len(names))) % len(names)]]
        cases += [(shape, log) for log in logs]
    return cases


def assert_reports(out_dir: Path) -> None:
    for name in ("report.html", "report.md", "report.txt"):
        path = out_dir / name
        assert path.exists() and path.stat().st_size > 0, f"{name} not written"


@pytest.mark.parametrize(("shape", "log"), _run_cases())
def test_shape_run(shape, log, pristine, tmp_path, capsys):
    """``p11lens run LOG -o OUT`` on the shaped copy: exit 0, three reports, every call, no PIN."""
    _skip_unavailable(shape)
    shaped = shaped_copy(shape, log)
    path = write_input(tmp_path, shaped, Path(log).stem)
    out = tmp_path / "out"
    rc = cli_main(["-q", "run", str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, f"{shape} on {log}: exit {rc}: {err.strip()[-500:]}"
    assert_reports(out)
    check_outputs(out, shaped, pristine[log][0])
    assert not leaked(out, pins_of(LOGS[log]))


# ---- a few through the console command ----------------------------------------------------------

CLI_CASES = [
    ("pad-spaces", "smoke.log", True),  # the issue's `sed 's/$/ /' good.log | p11lens run - -o o`
    ("gz-named-log", "errors.log", False),
    ("crlf+terminal", "12-mechinfo_0.24.0.log", False),
    ("fence+pad+prose", "threads.log", False),
    ("concat-labelled", "02-keygen-sign_0.20.0.log", True),
]


@pytest.mark.parametrize(("shape", "log", "stdin"), CLI_CASES)
def test_shape_console(shape, log, stdin, pristine, tmp_path):
    shaped = shaped_copy(shape, log)
    out = tmp_path / "out"
    if stdin:
        proc = p11lens("run", "-", "-o", str(out), stdin=shaped.data)
    else:
        proc = p11lens("run", str(write_input(tmp_path, shaped, Path(log).stem)), "-o", str(out))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-800:]
    assert_reports(out)
    check_outputs(out, shaped, pristine[log][0])
    assert not leaked(out, pins_of(LOGS[log]))
