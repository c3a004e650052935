"""Markdown and plain-text reports show the same figures as the stage outputs."""

from __future__ import annotations

import polars as pl
import pytest
from test_report_runs import md_table, ms, run_dir, stage, text_table

from reports.model import NO_RETURN, load_report
from reports.render import render


@pytest.fixture(scope="module", params=["examples", "samples"])
def out(request):
    return run_dir(request.param)


@pytest.fixture(scope="module")
def docs(out):
    r = load_report(out)
    return {"md": render(r, "md"), "txt": render(r, "txt")}


def per_func(out):
    return {r["func"]: r for r in stage(out, "latency").filter(pl.col("mechanism").is_null()).to_dicts()}


@pytest.mark.parametrize("fmt", ["md", "txt"])
def test_latency_table(out, docs, fmt):
    heading = "### Latency per function" if fmt == "md" else "LATENCY PER FUNCTION"
    rows = (md_table if fmt == "md" else text_table)(docs[fmt], heading)
    want = per_func(out)
    assert len(rows) == min(len(want), 40)
    for row in rows:
        w = want[row["function"]]
        assert row["calls"] == f"{w['count']:,}"
        for col, key in (("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"), ("p99 ms", "p99_ms"), ("max ms", "max_ms")):
            assert row[col] == ms(w[key])


@pytest.mark.parametrize("fmt", ["md", "txt"])
def test_errors_table(out, docs, fmt):
    heading = "### Errors by return value" if fmt == "md" else "ERRORS BY RETURN VALUE"
    rows = (md_table if fmt == "md" else text_table)(docs[fmt], heading)
    want = {(r["rv_name"] or NO_RETURN): r for r in stage(out, "errors").filter(pl.col("func").is_null()).to_dicts()}
    assert {r["return value"] for r in rows} == set(want)
    for r in rows:
        assert r["calls"] == f"{want[r['return value']]['count']:,}"
        assert r["category"] == want[r["return value"]]["category"]


def test_summary_and_findings(out, docs):
    calls = pl.read_parquet(out / "calls.parquet").height
    sessions = stage(out, "sessions")
    findings = stage(out, "findings")
    md, txt = docs["md"], docs["txt"]
    assert f"**{calls:,}**" in md
    assert f"{sessions.height:,} session(s), **{int(sessions['leaked'].sum()):,} left open**" in md
    assert f"SESSIONS: {sessions.height:,}, {int(sessions['leaked'].sum()):,} left open" in txt
    for f in findings.group_by("code").agg(pl.col("source").first(), pl.col("line").min()).to_dicts():
        assert f"`{f['code']}`" in md and f"] {f['code']} (" in txt
    first = findings.filter(pl.col("source").is_not_null() & pl.col("line").is_not_null()).sort("line").row(0, named=True)
    assert f"{first['source']}:{first['line']}" in md and f"{first['source']}:{first['line']}" in txt


def test_markdown_is_pasteable(docs):
    """GitHub-flavoured: every table row has as many cells as its header; no HTML but <details>."""
    md = docs["md"]
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") or line.startswith("|--"):
            n = lines[i - 1].count(" | ")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].replace("\\|", "").count(" | ") == n, lines[j]
                j += 1
    assert "<table" not in md and "<svg" not in md


def test_text_is_terminal_friendly(docs):
    txt = docs["txt"]
    assert "\t" not in txt and "<" not in txt.replace("<0.01%", "")
    assert "\x1b" not in txt  # no escape codes: safe in a pipe, a file or a mail
    assert txt.startswith("p11lens report:")


def test_secret_warning_in_md_and_txt(docs):
    assert "> [!CAUTION]" in docs["md"] and "secret-pin-in-trace" in docs["md"]
    assert "!! THIS TRACE CONTAINS SECRETS" in docs["txt"]
