"""No PIN from the traces appears in any report format, in any of its spellings."""

from __future__ import annotations

import pytest
from test_report_runs import RUNS, pin_needles, run_dir

from reports.compare import compare_runs
from reports.model import load_report
from reports.render import render, render_comparison


def test_needles_cover_every_pin_form():
    needles = pin_needles()
    assert "31 32 33 34 35 36" in needles and "313233343536" in needles and "123456" in needles
    assert "1234" not in needles  # too short to search as text (line numbers); its hex forms are in
    assert "31 32 33 34" in needles


@pytest.mark.parametrize("name", ["examples", "samples"])
@pytest.mark.parametrize("fmt", ["html", "md", "txt"])
def test_no_pin_in_report(name, fmt):
    if not RUNS[name]:
        pytest.skip("no sample logs")
    text = render(load_report(run_dir(name)), fmt)
    leaked = [n for n in pin_needles() if n in text]
    assert not leaked


@pytest.mark.parametrize("fmt", ["html", "md", "txt"])
def test_no_pin_in_comparison(fmt):
    text = render_comparison(compare_runs(run_dir("keygen"), run_dir("examples")), fmt)
    assert not [n for n in pin_needles() if n in text]
