"""The two engines are two implementations of one contract: the native scanner (Rust,
`pipeline.native`) and the reference grammar (``grammars/``) give identical ``calls`` frames
(all columns) and identical manifests, on every real log and on thousands of damaged ones."""

from __future__ import annotations

import functools
from pathlib import Path

import polars as pl
import pytest
from engine_mutations import ROOT, cases
from shapes import SHAPES, Trace, make, zstd_available
from polars.testing import assert_frame_equal

from pipeline.errors import InputError
from pipeline.parse import NATIVE, REFERENCE, parse_logs

REAL_LOGS = sorted((ROOT / "sample-logs").glob("*.log")) + sorted((ROOT / "tests" / "data").rglob("*.log"))
MUTATIONS = 3000
GROUP = 100
_ACCOUNTS = ("size", "sha256", "dialects", "counts", "processes", "coverage", "compression")


def _parse(paths: list[Path], out: Path, engine: str) -> tuple[pl.DataFrame, dict]:
    manifest = parse_logs([str(p) for p in paths], out / engine, engine=engine)
    return pl.read_parquet(out / engine / "calls.parquet").sort("source", "line"), manifest


def _assert_same(paths: list[Path], out: Path) -> None:
    (ref, ref_manifest), (nat, nat_manifest) = (_parse(paths, out, e) for e in (REFERENCE, NATIVE))
    assert_frame_equal(nat, ref)
    for mine, theirs in zip(nat_manifest["inputs"], ref_manifest["inputs"], strict=True):
        assert {k: mine[k] for k in _ACCOUNTS} == {k: theirs[k] for k in _ACCOUNTS}, mine["path"]
    for key in ("dialects", "counts", "processes", "coverage"):
        assert nat_manifest[key] == ref_manifest[key]


def test_engines_agree_on_every_real_log(tmp_path):
    assert len(REAL_LOGS) >= 40
    _assert_same(REAL_LOGS, tmp_path)


@functools.cache
def _cases() -> list[bytes]:
    return cases(MUTATIONS, seed=16)


def test_engines_agree_on_compressed_logs(tmp_path):
    """Read through the same decompressing reader, in the same reads: the same blocks."""
    import bz2
    import gzip
    import lzma

    logs = []
    for source, (suffix, compress) in zip(REAL_LOGS[:3], [(".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress)]):
        path = tmp_path / (source.name + suffix)
        path.write_bytes(compress(source.read_bytes()))
        logs.append(path)
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(logs[0].read_bytes()[: logs[0].stat().st_size // 2])  # a file still being compressed
    _assert_same([*logs, cut], tmp_path)


SHAPE_LOGS = sorted((ROOT / "sample-logs").glob("*.log")) + [
    ROOT / "tests" / "data" / "spy-examples" / name
    for name in ("06-multithread_0.27.1.log", "07-multiprocess-append_0.23.0-debian.log", "13-coverage_0.20.0.log")
]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_engines_agree_on_user_shaped_copies(tmp_path, shape):
    """Issue 9's corpus: every user shape (`tests/shapes.py`) of the sample logs and three examples."""
    if SHAPES[shape].compression == "zst" and not zstd_available():
        pytest.skip("no zstd")
    paths = []
    for log in SHAPE_LOGS:
        shaped = make(shape, Trace.load(log), seed=16)
        path = tmp_path / (log.stem + shaped.suffix)
        path.write_bytes(shaped.data)
        paths.append(path)
    _assert_same(paths, tmp_path)


def _refused(path: Path, out: Path, engine: str) -> str | None:
    try:
        parse_logs([str(path)], out / engine, engine=engine)
    except InputError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("group", range(MUTATIONS // GROUP))
def test_engines_agree_on_damaged_logs(tmp_path, group):
    paths = []
    for i, data in enumerate(_cases()[group * GROUP : (group + 1) * GROUP]):
        path = tmp_path / f"case{i:03d}.log"
        path.write_bytes(data)
        paths.append(path)
    refused = [p for p in paths if _refused(p, tmp_path / p.stem, REFERENCE) is not None]
    for path in refused:  # not a spy log: both engines say so, in the same words
        assert _refused(path, tmp_path / path.stem, NATIVE) == _refused(path, tmp_path / path.stem, REFERENCE)
    _assert_same([p for p in paths if p not in refused], tmp_path)


def test_native_report_adds_up():
    """The scanner's own accounting: every line is somewhere, each span's lines counted once."""
    from pipeline.native import Scanner

    for path in REAL_LOGS[:10]:
        scanner = Scanner()
        scanner.read(path.read_bytes())
        scanner.finish()
        cov = scanner.report()["coverage"]
        parts = ("record_lines", "banner_lines", "blank_lines", "unreadable_lines", "other_lines")
        assert cov["lines"] == sum(cov[k] for k in parts) == path.read_bytes().count(b"\n") + (not path.read_bytes().endswith(b"\n"))
