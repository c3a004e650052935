"""Run-vs-run comparison on real traces with a known difference, and the --fail-on grammar."""

from __future__ import annotations

import pytest
from spylogs import DATA, p11lens
from test_report_runs import SAMPLES, run_dir

from reports.compare import compare_runs
from reports.render import render_comparison
from reports.thresholds import Threshold, ThresholdError, parse_fail_on, parse_fail_on_list, severity_at_least

# ---- the spec parser (pure; the job scheduler reuses it) ---------------------------------------


@pytest.mark.parametrize(
    "spec, want",
    [
        ("p95=+20%", Threshold("p95", 20.0, "%")),
        ("p95=20%", Threshold("p95", 20.0, "%")),
        (" p99 = +5ms ", Threshold("p99", 5.0, "ms")),
        ("p50@C_Sign=+12.5%", Threshold("p50", 12.5, "%", func="C_Sign")),
        ("max=+100ms", Threshold("max", 100.0, "ms")),
        ("errors=+0", Threshold("errors", 0.0, "")),
        ("errors=+10%", Threshold("errors", 10.0, "%")),
        ("error_rate=+0.5pp", Threshold("error_rate", 0.5, "pp")),
        ("leaked=+0", Threshold("leaked", 0.0, "")),
        ("findings=high", Threshold("findings", severity="high")),
        ("findings=MEDIUM", Threshold("findings", severity="medium")),
        ("rv=new", Threshold("rv")),
    ],
)
def test_parse_valid(spec, want):
    got = parse_fail_on(spec)
    assert got == want
    assert parse_fail_on(str(got)) == got  # str() is the canonical, re-parseable spelling


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("", "expected METRIC=LIMIT"),
        ("p95", "expected METRIC=LIMIT"),
        ("p95>20%", "expected METRIC=LIMIT"),
        ("p96=+20%", "unknown metric"),
        ("p95=-20%", "is not an increase"),
        ("p95=20", "takes '%' or 'ms'"),
        ("p95=+20pp", "takes '%' or 'ms'"),
        ("errors=+1ms", "errors takes"),
        ("error_rate=+1", "error_rate takes"),
        ("errors@C_Sign=+0", "latency metrics only"),
        ("findings=critical", "takes a severity"),
        ("findings=+0", "takes a severity"),
        ("rv=old", "takes 'new'"),
        ("p95=+abc%", "is not an increase"),
    ],
)
def test_parse_invalid(spec, needle):
    with pytest.raises(ThresholdError, match=needle) as exc:
        parse_fail_on(spec)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)


def test_parse_list_splits_commas():
    assert parse_fail_on_list(["p95=+20%,errors=+0", "findings=high"]) == [
        Threshold("p95", 20.0, "%"), Threshold("errors", 0.0, ""), Threshold("findings", severity="high")]
    assert parse_fail_on_list(None) == [] and parse_fail_on_list([" , "]) == []


def test_crossed_semantics():
    p95 = parse_fail_on("p95=+20%")
    assert p95.crossed(10.0, 12.5) and not p95.crossed(10.0, 12.0)
    assert not p95.crossed(0.0, 1.0)  # one 1 ms step is the spy's resolution, not a regression
    assert p95.crossed(0.0, 3.0) and not p95.crossed(5.0, None)
    assert parse_fail_on("p95=+5ms").crossed(10, 15.5) and not parse_fail_on("p95=+5ms").crossed(10, 15)
    errors = parse_fail_on("errors=+0")
    assert errors.crossed(4, 5) and not errors.crossed(4, 4) and not errors.crossed(4, 3)
    assert parse_fail_on("errors=+50%").crossed(4, 7) and not parse_fail_on("errors=+50%").crossed(4, 6)
    rate = parse_fail_on("error_rate=+0.5pp")
    assert rate.crossed(0.010, 0.016) and not rate.crossed(0.010, 0.014)
    assert severity_at_least("high", "medium") and not severity_at_least("low", "medium")


# ---- comparing real runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comp():
    """Baseline: the keygen/sign trace. Candidate: the same plus a wrong-PIN trace."""
    return compare_runs(run_dir("keygen"), run_dir("keygen+wrongpin"),
                        parse_fail_on_list(["errors=+0", "rv=new", "findings=low", "p95=+1000%", "leaked=+5"]))


def test_known_difference_is_reported(comp):
    new = {(r["func"], r["rv_name"]) for r in comp.rv_new.rows}
    assert ("C_Login", "CKR_PIN_INCORRECT") in new
    assert not comp.rv_gone.rows
    rates = {r["func"]: r for r in comp.error_rates.rows}
    assert rates["C_Login"]["errors_b"] in (0, None) and rates["C_Login"]["errors_c"] > 0
    assert rates["C_Login"]["rate_d"] > 0
    codes = {r["code"]: r for r in comp.findings.rows}
    assert any(c.startswith("pin-failure") for c in codes)
    pin_fail = next(r for c, r in codes.items() if c.startswith("pin-failure"))
    assert pin_fail["status"] == "new" and pin_fail["n_b"] == 0
    calls = {s.label: s for s in comp.summary}["calls"]
    assert calls.base < calls.cand  # the candidate has the wrong-PIN trace's calls on top
    mix = {r["func"]: r for r in comp.mix.rows}
    assert mix["C_Login"]["count_c"] > mix["C_Login"]["count_b"]


def test_latency_deltas_are_candidate_minus_baseline(comp):
    for r in comp.latency.rows:
        if r["p95_ms_b"] is not None and r["p95_ms_c"] is not None:
            assert r["p95_ms_d"] == pytest.approx(r["p95_ms_c"] - r["p95_ms_b"])


def test_verdicts(comp):
    v = {x.threshold: x for x in comp.verdicts}
    assert v["errors=+0"].crossed and "→" in v["errors=+0"].detail
    assert v["rv=new"].crossed and "C_Login CKR_PIN_INCORRECT" in v["rv=new"].detail
    assert v["findings=low"].crossed
    assert not v["p95=+1000%"].crossed
    assert not v["leaked=+5"].crossed
    assert comp.failed


@pytest.mark.parametrize("fmt", ["html", "md", "txt"])
def test_every_format_shows_the_difference(comp, fmt):
    text = render_comparison(comp, fmt)
    assert "CKR_PIN_INCORRECT" in text and "errors=+0" in text
    if fmt == "html":
        assert "<svg" in text and "http://" not in text.replace("http://www.w3.org/", "")


def test_cli_exit_codes(tmp_path, capsysbinary):
    from test_report_cli import inproc

    base, cand = str(run_dir("keygen")), str(run_dir("keygen+wrongpin"))
    r = p11lens("compare", base, cand, "--fail-on", "errors=+0")  # the real entry point, once
    assert r.returncode == 1 and "CKR_PIN_INCORRECT" in r.stdout.decode()
    assert "threshold crossed: errors=+0" in r.stderr.decode()
    r = inproc(capsysbinary, "compare", base, base, "--fail-on", "errors=+0", "--fail-on", "rv=new,findings=info,p95=+20%")
    assert r.returncode == 0, r.stderr.decode()
    r = inproc(capsysbinary, "compare", base, cand)  # no thresholds: a report, never a failure
    assert r.returncode == 0
    r = inproc(capsysbinary, "compare", base, cand, "--fail-on", "p95=fast")
    assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) == 1
    r = inproc(capsysbinary, "compare", base, str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such output folder" in r.stderr.decode()
    out = tmp_path / "cmp.md"
    r = inproc(capsysbinary, "compare", base, cand, "-o", str(out), "--fail-on", "rv=new")
    assert r.returncode == 1 and out.read_text().startswith("## p11lens compare")


def test_driver_workloads_with_and_without_errors():
    """Driver traces: the smoke workload vs smoke + the errors workload."""
    names = {p.name: p for p in SAMPLES}
    if not {"smoke.log", "errors.log"} <= set(names):
        pytest.skip("driver sample logs not present")
    from test_report_runs import RUNS

    RUNS["smoke"] = [names["smoke.log"]]
    RUNS["smoke+errors"] = [names["smoke.log"], names["errors.log"]]
    comp = compare_runs(run_dir("smoke"), run_dir("smoke+errors"), parse_fail_on_list(["errors=+0", "error_rate=+1pp"]))
    assert comp.failed and all(v.crossed for v in comp.verdicts)
    assert {r["rv_name"] for r in comp.rv_new.rows} >= {"CKR_PIN_INCORRECT"}


def test_ungated_function_that_moved_is_said_loudly(tmp_path):
    """The keygen trace against itself with a 50 ms pause after its first C_Sign: C_Sign has
    under MIN_SAMPLES timed calls, so p95=+20% does not fail on it, but says it moved."""
    from test_report_runs import records, run_log, shift_stamps

    from reports.compare import MIN_SAMPLES

    raw = (DATA / "02-keygen-sign_0.27.1.log").read_bytes()
    heads = records(raw)
    after_sign = next(b for (_a, name), (b, _n) in zip(heads, heads[1:]) if name == "C_Sign")
    cand = run_log(shift_stamps(raw, after_sign, 50), tmp_path / "cand")
    base = run_dir("keygen")
    signs = [r for r in compare_runs(base, cand).latency.rows if r["func"] == "C_Sign"][0]
    assert signs["p95_ms_c"] - signs["p95_ms_b"] > 20 and signs["count_b"] < MIN_SAMPLES

    r = p11lens("compare", str(base), str(cand), "--fail-on", "p95=+20%")  # stderr as a user sees it
    assert r.returncode == 0  # not gated: a percentile of so few calls is noise
    err = r.stderr.decode()
    assert "warning" in err and "p95=+20%" in err and "C_Sign" in err and f"fewer than {MIN_SAMPLES} timed calls" in err
    comp = compare_runs(base, cand, parse_fail_on_list(["p95=+20%"]))
    for fmt in ("html", "md", "txt"):
        text = render_comparison(comp, fmt)
        assert "not checked, but beyond the limit" in text and "C_Sign" in text, fmt
    # the same move on the same function, gated by an absolute limit it does not reach: no warning
    quiet = compare_runs(base, cand, parse_fail_on_list(["p95=+1000ms"]))
    assert not quiet.warnings and not quiet.failed
