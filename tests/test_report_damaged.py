"""A damaged output folder given to ``report`` is bad input: one line on stderr, exit 2.

The folder is a real run's on a sample log; the damage is what a disk error or a hand edit
does (a manifest that is JSON but no manifest, zstd pages cut and overwritten).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from spylogs import p11lens

SMOKE = Path(__file__).resolve().parents[1] / "sample-logs" / "smoke.log"


@pytest.fixture
def out(tmp_path) -> Path:
    assert p11lens("-q", "run", str(SMOKE), "-o", str(tmp_path / "out")).returncode == 0
    return tmp_path / "out"


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr.decode()
    return lines[0]


@pytest.mark.parametrize("text", ["[1, 2]", '{"inputs": 5}', '"manifest"'])
def test_a_manifest_that_is_no_manifest(out, tmp_path, text):
    (out / "manifest.json").write_text(text)
    line = _one_error_line(p11lens("report", str(out), "--format", "txt", "-o", str(tmp_path / "r.txt")))
    assert "manifest.json" in line


def test_a_stage_file_with_damaged_pages(out, tmp_path):
    stage = out / "latency.parquet"
    raw = bytearray(stage.read_bytes())
    raw[100:140] = b"\xff" * 40
    stage.write_bytes(bytes(raw))
    line = _one_error_line(p11lens("report", str(out), "--format", "md", "-o", str(tmp_path / "r.md")))
    assert "latency.parquet" in line
