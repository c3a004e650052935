"""Run-vs-run comparison: what changed between a baseline output folder and a candidate.

``compare_runs(base_dir, cand_dir, thresholds)`` loads both runs' stage files and returns a
`Comparison`: per-function latency percentiles with deltas, the call mix, return codes that
appeared or vanished, error-rate changes, findings that are new (or more frequent), and for
each ``--fail-on`` threshold whether it was crossed.  Like the report model, it is the one
payload the HTML, Markdown and text templates (``compare.*.j2``) lay out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from reports.model import (
    NO_RETURN,
    REQUIRED,
    STAGES,
    Column,
    Report,
    Table,
    build_report,
    read_manifest,
    read_stage,
)
from reports.thresholds import (
    MIN_SAMPLES,
    COUNT_METRICS,
    LATENCY_METRICS,
    Threshold,
    severity_at_least,
)

MAX_ROWS = 40


@dataclass
class Run:
    out_dir: Path
    report: Report
    frames: dict[str, pl.DataFrame | None]

    @property
    def per_func(self) -> pl.DataFrame:
        return self.frames["latency"].filter(pl.col("mechanism").is_null())

    @property
    def errors_per_func(self) -> pl.DataFrame:
        return self.frames["errors"].filter(pl.col("func").is_not_null())

    @property
    def calls(self) -> int:
        return self.report.run.records

    @property
    def error_count(self) -> int:
        e = self.frames["errors"]
        return int(e.filter(pl.col("func").is_null() & (pl.col("category") == "error"))["count"].sum())

    @property
    def leaked(self) -> int:
        return self.report.sessions_leaked


def load_run(out_dir: Path | str) -> Run:
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    frames = {name: read_stage(out_dir, name, name in REQUIRED) for name in STAGES}
    return Run(out_dir, build_report(out_dir, manifest, frames), frames)


@dataclass(frozen=True)
class Verdict:
    threshold: str
    crossed: bool
    detail: str
    # functions too rarely timed to be held to the threshold that moved beyond it all the same:
    # not a failure (a percentile of four calls is noise), but not to be passed over in silence
    unchecked: tuple[str, ...] = ()


@dataclass(frozen=True)
class SideBySide:
    label: str
    base: float | None
    cand: float | None
    kind: str  # how to format base / cand
    delta_kind: str  # how to format the delta
    worse_up: bool = True  # False: a change is neither good nor bad (calls, sessions)

    @property
    def delta(self) -> float | None:
        if self.base is None or self.cand is None:
            return None
        return self.cand - self.base


@dataclass
class Comparison:
    base: Run
    cand: Run
    summary: list[SideBySide]
    latency: Table
    mix: Table
    rv_new: Table
    rv_gone: Table
    error_rates: Table
    findings: Table
    verdicts: list[Verdict] = field(default_factory=list)
    charts: dict[str, str] = field(default_factory=dict)
    chart_rows: list[dict] = field(default_factory=list)
    min_samples: int = MIN_SAMPLES

    @property
    def failed(self) -> bool:
        return any(v.crossed for v in self.verdicts)

    @property
    def warnings(self) -> list[str]:
        """One line per threshold that moved on functions it did not check (too few timed calls)."""
        return [
            f"{v.threshold}: not checked, but beyond the limit: {'; '.join(v.unchecked)} "
            f"(fewer than {self.min_samples} timed calls in a run: too few to gate on, worth a look)"
            for v in self.verdicts
            if v.unchecked
        ]


def _rel(base: float | None, cand: float | None) -> float | None:
    if base is None or cand is None:
        return None
    if base == 0:
        return None if cand == 0 else math.inf
    return (cand - base) / base


def _latency_frame(base: Run, cand: Run) -> pl.DataFrame:
    cols = ["func", "count", "with_latency", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"]
    b = base.per_func.select(cols)
    c = cand.per_func.select(cols)
    j = b.join(c, on="func", how="full", suffix="_c", coalesce=True)
    j = j.rename({k: f"{k}_b" for k in cols[1:]})
    return j.with_columns(
        [(pl.col(f"{k}_c").cast(pl.Float64) - pl.col(f"{k}_b").cast(pl.Float64)).alias(f"{k}_d") for k in cols[1:]]
    ).with_columns(
        status=pl.when(pl.col("count_b").is_null()).then(pl.lit("candidate"))
        .when(pl.col("count_c").is_null()).then(pl.lit("baseline")).otherwise(pl.lit("")),
    )


def compare_runs(base_dir: Path | str, cand_dir: Path | str, thresholds: list[Threshold] | None = None) -> Comparison:
    base, cand = load_run(base_dir), load_run(cand_dir)
    lat = _latency_frame(base, cand)

    # latency: biggest p95 movement first (functions in both runs), then new / gone ones
    lat_sorted = lat.with_columns(
        p95_rel=pl.struct("p95_ms_b", "p95_ms_c").map_elements(lambda s: _rel(s["p95_ms_b"], s["p95_ms_c"]), return_dtype=pl.Float64),
        order=pl.col("p95_ms_d").abs().fill_null(-1),
    ).sort(["order", "count_c", "func"], descending=[True, True, False], nulls_last=True)
    lat_cols = [
        Column("func", "function", "code"),
        Column("status", "only in", "text"),
        Column("count_b", "calls base", "int"),
        Column("count_c", "calls cand", "int"),
        Column("p50_ms_b", "p50 base", "ms"),
        Column("p50_ms_c", "p50 cand", "ms"),
        Column("p95_ms_b", "p95 base", "ms"),
        Column("p95_ms_c", "p95 cand", "ms"),
        Column("p95_ms_d", "Δ p95 ms", "dms"),
        Column("p95_rel", "Δ p95", "dpct"),
        Column("p99_ms_b", "p99 base", "ms"),
        Column("p99_ms_c", "p99 cand", "ms"),
    ]
    latency = Table("cmp-latency", lat_cols, lat_sorted.head(MAX_ROWS).to_dicts(), lat_sorted.height, "latency.parquet")
    chart_rows = lat_sorted.filter(pl.col("status") == "").head(15).to_dicts()

    # call mix
    bt, ct = max(base.calls, 1), max(cand.calls, 1)
    mix_df = lat.select("func", "status", "count_b", "count_c").with_columns(
        share_b=pl.col("count_b").fill_null(0) / bt,
        share_c=pl.col("count_c").fill_null(0) / ct,
    ).with_columns(share_d=pl.col("share_c") - pl.col("share_b"))
    mix_df = mix_df.sort([pl.col("share_d").abs(), "func"], descending=[True, False])
    mix = Table(
        "cmp-mix",
        [Column("func", "function", "code"), Column("status", "only in", "text"), Column("count_b", "calls base", "int"),
         Column("share_b", "share base", "pct"), Column("count_c", "calls cand", "int"),
         Column("share_c", "share cand", "pct"), Column("share_d", "Δ share", "dpp", trend=False)],
        mix_df.head(MAX_ROWS).to_dicts(),
        mix_df.height,
        "latency.parquet",
    )

    # return codes per function: new and vanished (everything but CKR_OK)
    key = ["func", "rv"]
    no_ret = pl.when(pl.col("rv").is_null()).then(pl.lit(NO_RETURN)).otherwise(pl.col("rv_name")).alias("rv_name")
    eb = base.errors_per_func.filter(pl.col("category") != "ok").with_columns(no_ret)
    ec = cand.errors_per_func.filter(pl.col("category") != "ok").with_columns(no_ret)
    new_rv = ec.join(eb.select(key), on=key, how="anti", nulls_equal=True).sort(["count", "func"], descending=[True, False])
    gone_rv = eb.join(ec.select(key), on=key, how="anti", nulls_equal=True).sort(["count", "func"], descending=[True, False])
    rv_cols = [Column("func", "function", "code"), Column("rv_name", "return value", "code"), Column("rv", "code", "hex"),
               Column("category", "category", "category"), Column("count", "calls", "int")]
    rv_new = Table("cmp-rv-new", rv_cols + [Column("first_ts", "first seen", "ts")], new_rv.head(MAX_ROWS).to_dicts(),
                   new_rv.height, "errors.parquet", "no new return codes")
    rv_gone = Table("cmp-rv-gone", rv_cols + [Column("last_ts", "last seen", "ts")], gone_rv.head(MAX_ROWS).to_dicts(),
                    gone_rv.height, "errors.parquet", "no return code vanished")

    # error rate per function (functions with an error in either run)
    def err_counts(run: Run) -> pl.DataFrame:
        e = run.errors_per_func
        return e.group_by("func").agg(
            calls=pl.col("count").sum(),
            errors=pl.col("count").filter(pl.col("category") == "error").sum(),
        )

    er = err_counts(base).join(err_counts(cand), on="func", how="full", suffix="_c", coalesce=True).rename(
        {"calls": "calls_b", "errors": "errors_b"}
    ).with_columns(
        rate_b=pl.col("errors_b") / pl.col("calls_b"),
        rate_c=pl.col("errors_c") / pl.col("calls_c"),
    ).with_columns(rate_d=pl.col("rate_c").fill_null(0) - pl.col("rate_b").fill_null(0))
    er = er.filter((pl.col("errors_b").fill_null(0) > 0) | (pl.col("errors_c").fill_null(0) > 0)).sort(
        [pl.col("rate_d").abs(), "func"], descending=[True, False]
    )
    error_rates = Table(
        "cmp-error-rate",
        [Column("func", "function", "code"), Column("errors_b", "errors base", "int"), Column("calls_b", "calls base", "int"),
         Column("rate_b", "rate base", "pct"), Column("errors_c", "errors cand", "int"), Column("calls_c", "calls cand", "int"),
         Column("rate_c", "rate cand", "pct"), Column("rate_d", "Δ rate", "dpp")],
        er.head(MAX_ROWS).to_dicts(),
        er.height,
        "errors.parquet",
        "no errors in either run",
    )

    # findings per code
    def fcount(run: Run) -> pl.DataFrame:
        f = run.frames["findings"]
        return f.group_by("severity", "code").agg(n=pl.len(), ref=(pl.col("source") + ":" + pl.col("line").cast(pl.String)).first(),
                                                  message=pl.col("message").first())

    fb, fc = fcount(base), fcount(cand)
    fj = fc.join(fb.select("code", pl.col("n").alias("n_b")), on="code", how="full", coalesce=True).with_columns(
        n_b=pl.col("n_b").fill_null(0), n=pl.col("n").fill_null(0)
    )
    # fill severity/message of vanished codes from the baseline
    fj = fj.join(fb.select("code", pl.col("severity").alias("sev_b"), pl.col("message").alias("msg_b")), on="code", how="left").with_columns(
        severity=pl.coalesce("severity", "sev_b"), message=pl.coalesce("message", "msg_b")
    ).drop("sev_b", "msg_b")
    fj = fj.with_columns(
        status=pl.when(pl.col("n_b") == 0).then(pl.lit("new")).when(pl.col("n") == 0).then(pl.lit("gone"))
        .when(pl.col("n") > pl.col("n_b")).then(pl.lit("more")).when(pl.col("n") < pl.col("n_b")).then(pl.lit("fewer"))
        .otherwise(pl.lit("same")),
        sev_rank=pl.col("severity").replace_strict({"high": 0, "medium": 1, "low": 2, "info": 3}, default=4),
    ).filter(pl.col("status") != "same").sort(["sev_rank", "status", "code"])
    findings = Table(
        "cmp-findings",
        [Column("severity", "severity", "severity"), Column("code", "code", "code"), Column("status", "change", "text"),
         Column("n_b", "base", "int"), Column("n", "cand", "int"), Column("message", "example", "text"),
         Column("ref", "at", "ref")],
        fj.head(MAX_ROWS).to_dicts(),
        fj.height,
        "findings.parquet",
        "the same findings in both runs",
    )

    br, cr = base.report, cand.report
    summary = [
        SideBySide("calls", base.calls, cand.calls, "int", "dint", False),
        SideBySide("error returns", base.error_count, cand.error_count, "int", "dint"),
        SideBySide("error rate", base.error_count / bt if base.calls else None, cand.error_count / ct if cand.calls else None, "pct", "dpp"),
        SideBySide("sessions", br.session_count, cr.session_count, "int", "dint", False),
        SideBySide("sessions left open", br.sessions_leaked, cr.sessions_leaked, "int", "dint"),
        SideBySide("p95 latency (all calls)", br.overall_p95_ms, cr.overall_p95_ms, "ms", "dms"),
        SideBySide("findings", sum(br.findings_by_severity.values()), sum(cr.findings_by_severity.values()), "int", "dint"),
    ]
    comp = Comparison(base, cand, summary, latency, mix, rv_new, rv_gone, error_rates, findings, chart_rows=chart_rows)
    comp.verdicts = [evaluate(t, comp, lat, new_rv, fj) for t in thresholds or []]
    return comp


def _moves(rows: list[tuple[float, str, float, float]]) -> list[str]:
    """(change, function, base, candidate) rows as "C_Sign 1.0→9.0 ms", biggest change first."""
    return [f"{f} {b:.1f}→{c:.1f} ms" for _d, f, b, c in sorted(rows, reverse=True)]


def evaluate(t: Threshold, comp: Comparison, lat: pl.DataFrame, new_rv: pl.DataFrame, fj: pl.DataFrame) -> Verdict:
    base, cand = comp.base, comp.cand
    spec = str(t)
    if t.metric in LATENCY_METRICS:
        col = f"{t.metric}_ms"
        rows = lat.filter(pl.col("status") == "")
        if t.func:
            rows = rows.filter(pl.col("func") == t.func)
            if not rows.height:
                return Verdict(spec, False, f"{t.func} is not in both runs")
        crossed, unchecked, skipped = [], [], 0
        for r in rows.iter_rows(named=True):
            b, c = r[f"{col}_b"], r[f"{col}_c"]
            over = b is not None and c is not None and t.crossed(b, c)
            if (r["with_latency_b"] or 0) < MIN_SAMPLES or (r["with_latency_c"] or 0) < MIN_SAMPLES:
                skipped += 1
                if over:
                    unchecked.append((c - b, r["func"], b, c))
            elif over:
                crossed.append((c - b, r["func"], b, c))
        note = f" ({skipped} function(s) with under {MIN_SAMPLES} timed calls not checked)" if skipped else ""
        moved = tuple(_moves(unchecked))
        if crossed:
            more = f" and {len(crossed) - 5} more" if len(crossed) > 5 else ""
            return Verdict(spec, True, f"{len(crossed)} function(s) over the limit: {'; '.join(_moves(crossed)[:5])}{more}{note}", moved)
        return Verdict(spec, False, f"no function's {t.metric} rose beyond the limit{note}", moved)
    if t.metric in COUNT_METRICS:
        b, c = (base.error_count, cand.error_count) if t.metric == "errors" else (base.leaked, cand.leaked)
        what = "error returns" if t.metric == "errors" else "sessions left open"
        return Verdict(spec, t.crossed(b, c), f"{what}: {b:,} → {c:,}")
    if t.metric == "error_rate":
        b = base.error_count / base.calls if base.calls else 0.0
        c = cand.error_count / cand.calls if cand.calls else 0.0
        return Verdict(spec, t.crossed(b, c), f"error rate: {b * 100:.2f}% → {c * 100:.2f}%")
    if t.metric == "findings":
        hits = fj.filter(pl.col("status") == "new").filter(
            pl.col("severity").map_elements(lambda s: severity_at_least(s, t.severity), return_dtype=pl.Boolean)
        )
        if hits.height:
            codes = ", ".join(f"{r['code']} ({r['severity']})" for r in hits.head(8).iter_rows(named=True))
            return Verdict(spec, True, f"new finding(s): {codes}")
        return Verdict(spec, False, f"no new finding of severity {t.severity} or worse")
    if t.metric == "rv":
        hits = new_rv.filter(pl.col("category") != "benign")
        if hits.height:
            codes = ", ".join(f"{r['func']} {r['rv_name']}" for r in hits.head(8).iter_rows(named=True))
            return Verdict(spec, True, f"{hits.height} new return code(s): {codes}")
        return Verdict(spec, False, "no new return code")
    raise AssertionError(t.metric)
