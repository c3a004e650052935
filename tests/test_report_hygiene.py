"""What a log's file name (or anything else from a log) holds reaches the reports as text:
no HTML through Markdown, no terminal control sequences through the text report.

The log is a real trace under a hostile name (a file name may hold anything but ``/``).
"""

from __future__ import annotations

import re

import pytest
from spylogs import DATA
from test_report_runs import run_log

from reports.compare import compare_runs
from reports.render import md_code, md_text, render_comparison

HOSTILE = "x<script>alert(1)<img src=x onerror=alert(1)>`|*_[a](b)#$\\frac{$\x1b[31m\u202e.log"
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
OWN_TAGS = re.compile(r"</?(details|summary)>")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return run_log((DATA / "02-keygen-sign_0.27.1.log").read_bytes(), tmp_path_factory.mktemp("hygiene"), HOSTILE)


def markup_left(md: str) -> str:
    """The Markdown without its code spans (their content is literal text), its own tags and
    its block-quote markers: what is left must hold no ``<`` or ``>``."""
    return re.sub(r"(?m)^> ?", "", OWN_TAGS.sub("", CODE_SPAN.sub("", md)))


def test_markdown_has_no_html_but_its_own(out):
    md = (out / "report.md").read_text()
    left = markup_left(md)
    assert "<" not in left and ">" not in left
    assert "\x1b" not in md and "\u202e" not in md
    assert md_code(str(out.parent / HOSTILE), cell=True) in md  # the inputs table: the name exactly, as code
    assert md_text(HOSTILE) in md  # the sessions table's process lane: the name as escaped text


def test_markdown_escapes_markup_in_text():
    assert md_text("<b>*x*</b> [a](javascript:b) `c` |d| ~~e~~") == (
        "&lt;b&gt;\\*x\\*&lt;/b&gt; \\[a\\](javascript:b) \\`c\\` \\|d\\| \\~\\~e\\~\\~"
    )
    assert md_text("# not a heading") == "\\# not a heading" and md_text("1. not a list") == "1\\. not a list"
    assert md_text("C_Login_") == "C_Login\\_"  # inside a word "_" stays; at its edge it is escaped
    assert md_code("a``b") == "```a``b```" and md_code("`x") == "`` `x ``" and md_code("a|b", cell=True) == "`a\\|b`"


def test_text_report_shows_controls_instead_of_obeying_them(out):
    txt = (out / "report.txt").read_text()
    assert "\x1b" not in txt and "\u202e" not in txt
    assert "#$\\frac{$\\x1b[31m\\u202e.log" in txt


def test_html_escapes_the_name(out):
    html = (out / "report.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "x&lt;script&gt;alert(1)&lt;img src=x onerror=alert(1)&gt;" in html


def test_comparison_escapes_folder_names(out, tmp_path):
    evil = tmp_path / "b<script>x<img src=y>"
    evil.symlink_to(out, target_is_directory=True)
    comp = compare_runs(out, evil)
    md = render_comparison(comp, "md")
    assert "<" not in markup_left(md) and ">" not in markup_left(md)
    assert md_code(str(evil)) in md
    txt = render_comparison(comp, "txt")
    assert "\x1b" not in txt and "\x1b" not in md
