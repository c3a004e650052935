"""``p11lens --help`` and ``--version`` start at once: building the whole command line (every
subcommand's options) loads no data library; a subcommand loads what it needs when it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("polars", "pyarrow", "pyparsing", "numpy", "jinja2", "pkcs11", "matplotlib", "tqdm", "pipeline._native")
_PROBE = """
import sys
from pipeline.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("loaded:" + ",".join(sorted(m for m in sys.modules if m in {heavy!r})))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["parse", "--help"], ["run", "--help"], ["compare", "--help"], ["drive", "--help"], ["job", "--help"]])
def test_help_loads_no_data_library(argv):
    probe = _PROBE.format(argv=argv, heavy=set(HEAVY))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "loaded:", result.stdout


def test_a_subcommand_still_finds_its_libraries(tmp_path):
    """The imports moved into the commands are there when they run (a report of a real parse)."""
    from spylogs import p11lens

    log = __import__("pathlib").Path(__file__).resolve().parents[1] / "sample-logs" / "smoke.log"
    assert p11lens("-q", "run", str(log), "-o", str(tmp_path / "out")).returncode == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"report.html", "report.md", "report.txt", "calls.parquet"}
