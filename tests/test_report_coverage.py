"""Every input line is accounted for, and the reports tell the two kinds of lines no record
took apart: unreadable call records (calls are missing: a warning in the report's header) and
other text (application output: no warning).  Real traces, damaged the way users damage them.
"""

from __future__ import annotations

import re

import pytest
from spylogs import DATA
from test_report_runs import manifest, records, run_log, stage

LOG = DATA / "02-keygen-sign_0.27.1.log"
WARNING = "look like spy call records but could not be read"


def reports(out) -> dict[str, str]:
    return {ext: (out / f"report.{ext}").read_text() for ext in ("html", "md", "txt")}


def header(text: str, fmt: str) -> str:
    """What comes before the first section: the report's header."""
    return {"html": text.split('<section id="run">')[0], "md": text.split("\n- **Time range:**")[0], "txt": text.split("\ntime range")[0]}[fmt]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """The trace with one record header garbled (junk after the function name): the rest of
    its record can no longer be read (and the header itself is other text); and a line of
    application output between two later records."""
    raw = LOG.read_bytes()
    at, _name = records(raw)[20]
    end = raw.index(b"\n", at)
    raw = raw[:at] + raw[at:end] + b" junk" + raw[end:]
    at = records(raw)[30][0]
    raw = raw[:at] + b"Enter PIN for token: done\n" + raw[at:]
    return run_log(raw, tmp_path_factory.mktemp("damaged"))


def test_manifest_and_reports_agree_on_both_kinds(damaged):
    out = damaged
    cov = manifest(out)["coverage"]
    assert cov["unreadable_lines"] > 0 and cov["other_lines"] >= 1
    for fmt, text in reports(out).items():
        plain = re.sub(r"<[^>]+>|\*\*", "", text)
        assert f"{cov['unreadable_lines']:,} unreadable call records" in plain, fmt
        assert f"{cov['other_lines']:,} other text" in plain, fmt
        assert "parsed" in plain and "accounted for" not in plain, fmt


def test_unreadable_records_warn_in_every_header(damaged):
    out = damaged
    for fmt, text in reports(out).items():
        assert WARNING in header(text, fmt), fmt
    codes = set(stage(out, "findings")["code"])
    assert {"unreadable-call-records", "other-text"} <= codes


def test_other_text_alone_is_no_warning(tmp_path):
    raw = LOG.read_bytes()
    at = records(raw)[30][0]
    out = run_log(raw[:at] + b"Enter PIN for token: done\n" + raw[at:], tmp_path)
    assert manifest(out)["coverage"]["unreadable_lines"] == 0
    for fmt, text in reports(out).items():
        assert WARNING not in text, fmt
    assert "unreadable-call-records" not in set(stage(out, "findings")["code"])
