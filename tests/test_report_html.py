"""The HTML report: figures equal the stage outputs, one self-contained file, and it loads in
real headless Chromium with no console error, its sections and SVG charts present."""

from __future__ import annotations

import re
import time

import polars as pl
import pytest
from test_report_runs import as_dicts, chromium_run, html_tables, ms, run_dir, stage

from reports.model import NO_RETURN, load_report
from reports.render import render, write_reports

SECTIONS = ("run", "summary", "latency", "activity", "errors", "sessions", "mechanisms", "findings")


@pytest.fixture(scope="module", params=["examples", "samples"])
def out(request):
    out = run_dir(request.param)
    write_reports(out, ["html"])
    return out


@pytest.fixture(scope="module")
def page(out):
    return (out / "report.html").read_text()


def test_latency_table_shows_the_stage_figures(out, page):
    rows = as_dicts(html_tables(page)["t-latency"])
    per_func = {r["func"]: r for r in stage(out, "latency").filter(pl.col("mechanism").is_null()).to_dicts()}
    assert rows
    for row in rows:
        want = per_func[row["function"]]
        assert row["calls"] == f"{want['count']:,}"
        for col, key in (("p50 ms", "p50_ms"), ("p90 ms", "p90_ms"), ("p95 ms", "p95_ms"), ("p99 ms", "p99_ms"), ("max ms", "max_ms")):
            assert row[col] == ms(want[key]), (row["function"], col)


def test_summary_errors_sessions_findings_shown(out, page):
    calls = pl.read_parquet(out / "calls.parquet").height
    assert re.search(rf'id="fig-calls">.*?<div class="value">{calls:,}<', page)
    errors = as_dicts(html_tables(page)["t-errors-rv"])
    per_rv = {r["rv_name"] or NO_RETURN: r for r in stage(out, "errors").filter(pl.col("func").is_null()).to_dicts()}
    assert {r["return value"] for r in errors} == set(per_rv)
    for r in errors:
        want = per_rv[r["return value"]]
        assert r["calls"] == f"{want['count']:,}" and r["category"] == want["category"]
        assert r["first seen"].startswith(want["first_ts"].strftime("%Y-%m-%d %H:%M:%S"))
    sessions = stage(out, "sessions")
    assert f"{sessions.height:,} session(s)" in page
    if sessions.height:
        assert len(as_dicts(html_tables(page)["t-sessions"])) == min(sessions.height, 100)
    for f in stage(out, "findings").sort("line", nulls_last=True).group_by("code").head(1).to_dicts():
        assert f"{f['code']}" in page
        if f["source"] is not None:
            assert f"{f['source']}:" in page


def test_secrets_banner(page):
    assert 'id="secrets"' in page and "This trace contains secrets" in page
    assert "secret-pin-in-trace" in page.split('id="secrets"', 1)[1].split("</div>", 1)[0]


def test_inputs_with_sizes_and_hashes(out, page):
    from test_report_runs import manifest

    for i in manifest(out)["inputs"]:
        assert i["path"] in page and i["sha256"] in page


def test_self_contained_no_external_reference(page):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", page, re.I)
    assert not re.search(r"<(link|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"<script[^>]+src=", page, re.I)
    # every internal link points at something in the page
    ids = set(re.findall(r'id="([^"]+)"', page))
    for target in re.findall(r'href="#([^"]+)"', page):
        assert target in ids, target


def test_reads_without_javascript(page):
    """Everything is in the markup: tables are filled and charts drawn before any script runs."""
    before_script = page.split("<script>", 1)[0]
    for s in SECTIONS:
        assert f'<section id="{s}">' in before_script
    assert before_script.count("<svg") >= 3
    assert page.count("<script>") == 1


def test_html_is_deterministic():
    out = run_dir("examples")
    r1, r2 = render(load_report(out), "html"), render(load_report(out), "html")
    assert r1 == r2


PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
var _ce = console.error; console.error = function () { window.__errors.push([].join.call(arguments, " ")); _ce.apply(console, arguments); };
</script>"""
AFTER = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var t = performance.timing, th = document.querySelector("#t-latency thead th:nth-child(2)");
    th.click(); th.click(); th.click();  // calls: descending, ascending, descending
    var first = document.querySelector("#t-latency tbody tr td").textContent;
    var out = document.createElement("pre");
    out.id = "probe";
    out.textContent = JSON.stringify({errors: window.__errors, load_ms: t.loadEventStart - t.navigationStart,
      svgs: document.querySelectorAll("svg.chart").length, sorted_first: first,
      sections: Array.prototype.map.call(document.querySelectorAll("section"), function (s) { return s.id; })});
    document.body.appendChild(out);
  }, 0);
});
</script>"""


def test_loads_in_headless_chromium(out, page, tmp_path):
    import json

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1).replace("</body>", AFTER + "</body>", 1))
    result = chromium_run(probed.as_uri(), "--virtual-time-budget=10000", "--dump-dom")
    m = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert m, result.stderr[-2000:]
    probe = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["errors"] == []
    assert "Uncaught" not in result.stderr
    assert probe["sections"] == list(SECTIONS)
    assert probe["svgs"] >= 3
    assert probe["load_ms"] < 2000
    busiest = stage(out, "latency").filter(pl.col("mechanism").is_null()).sort("count", descending=True)["count"][0]
    first = [r for r in as_dicts(html_tables(page)["t-latency"]) if r["calls"] == f"{busiest:,}"][0]["function"]
    assert probe["sorted_first"] == first  # the sort script ran and sorted by calls, biggest first


def test_screenshot(tmp_path):
    out = run_dir("examples")
    write_reports(out, ["html"])
    shot = tmp_path / "report.png"
    started = time.perf_counter()
    result = chromium_run((out / "report.html").as_uri(), f"--screenshot={shot}", "--window-size=1280,4000")
    assert shot.exists() and shot.stat().st_size > 50_000, result.stderr[-2000:]
    assert time.perf_counter() - started < 60
