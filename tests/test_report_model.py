"""The report model shows what the stages computed: summary figures and tables against the
stage Parquet files and the manifest of real traces."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_report_runs import manifest, run_dir, stage

from reports import model
from reports.model import is_secret_code, load_report


@pytest.fixture(scope="module", params=["examples", "samples"])
def out(request):
    return run_dir(request.param)


def figure(report, key):
    return next(f for f in report.figures if f.key == key).value


def test_summary_figures_equal_stage_outputs(out):
    r = load_report(out)
    m = manifest(out)
    calls = pl.read_parquet(out / "calls.parquet")
    errors = stage(out, "errors").filter(pl.col("func").is_null())
    sessions = stage(out, "sessions")
    findings = stage(out, "findings")
    assert figure(r, "calls") == m["counts"]["records"] == calls.height
    n_err = errors.filter(pl.col("category") == "error")["count"].sum()
    assert figure(r, "error_rate") == pytest.approx(n_err / calls.height)
    assert figure(r, "sessions") == sessions.height
    assert figure(r, "leaked") == sessions["leaked"].sum()
    assert figure(r, "findings") == findings.height
    assert r.findings_by_severity == {s: findings.filter(pl.col("severity") == s).height for s in model.SEVERITIES}
    # the time range is the calls' own
    assert r.run.first_ts == calls["ts"].min() and r.run.last_ts == calls["ts"].max()
    assert [i.sha256 for i in r.run.inputs] == [i["sha256"] for i in m["inputs"]]
    assert r.run.coverage.unreadable_lines + r.run.coverage.other_lines == m["coverage"]["unparsed_lines"]


def test_latency_rows_are_the_stage_rows(out):
    r = load_report(out)
    per_func = stage(out, "latency").filter(pl.col("mechanism").is_null())
    by_func = {row["func"]: row for row in per_func.to_dicts()}
    assert r.latency.total == per_func.height
    for row in r.latency.rows:
        for key in ("count", "with_latency", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "total_ms"):
            assert row[key] == by_func[row["func"]][key]
    counts = [row["count"] for row in r.latency.rows]
    assert counts == sorted(counts, reverse=True)  # busiest first


def test_overall_p95_recomputed_by_hand():
    """One process, one thread, every record complete: latency is the gap to the next entry."""
    out = run_dir("keygen")
    calls = pl.read_parquet(out / "calls.parquet").sort("line")
    assert calls["complete"].all() and calls["tid"].n_unique() == 1
    ts = calls["ts"].cast(pl.Int64).to_numpy()
    gaps = np.diff(ts).astype(float)
    assert load_report(out).overall_p95_ms == pytest.approx(np.percentile(gaps, 95))


def test_errors_sessions_findings_tables():
    out = run_dir("examples")
    r = load_report(out)
    per_rv = stage(out, "errors").filter(pl.col("func").is_null())
    assert {row["rv_name"] for row in r.errors_by_rv.rows} == {n or model.NO_RETURN for n in per_rv["rv_name"]}
    assert r.errors_by_rv.rows[0]["category"] == "error"  # errors first
    assert "CKR_PIN_INCORRECT" in {row["rv_name"] for row in r.errors_by_func.rows}
    assert r.sessions.total == stage(out, "sessions").height
    findings = stage(out, "findings")
    assert sum(g.total for g in r.findings) == findings.height
    assert [g.severity for g in r.findings] == sorted((g.severity for g in r.findings), key=model.SEVERITIES.index)
    secret_codes = {c for c in findings["code"] if is_secret_code(c)}
    assert secret_codes and {g.code for g in r.secrets} == secret_codes
    assert "secret-pin-in-trace" in secret_codes
    for g in r.findings:
        for item in g.items:
            if item.source is not None:
                assert item.ref == (f"{item.source}:{item.line}" if item.line is not None else item.source)


def test_secret_codes():
    assert is_secret_code("secret-pin-in-trace") and is_secret_code("plaintext-in-trace")
    assert not is_secret_code("session-leaked") and not is_secret_code("pin-failures-repeated")


def test_tables_are_capped_with_a_note(monkeypatch):
    out = run_dir("examples")
    monkeypatch.setattr(model, "MAX_LATENCY_ROWS", 5)
    monkeypatch.setattr(model, "MAX_FINDINGS_PER_CODE", 1)
    r = load_report(out)
    total = stage(out, "latency").filter(pl.col("mechanism").is_null()).height
    assert len(r.latency.rows) == 5 and r.latency.total == total
    assert r.latency.note == f"showing 5 of {total} rows; all {total} are in latency.parquet"
    assert all(len(g.items) == 1 for g in r.findings)


def test_missing_stage_files_is_a_one_line_error(tmp_path):
    from pipeline.errors import InputError

    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="run `p11lens analyze"):
        load_report(tmp_path)
