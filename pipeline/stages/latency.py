"""Latency per function, per (function, mechanism), and over time.

Why this shape: the spy stamps only a call's *entry*, to the millisecond (design.md), so the
only honest per-call figure is the gap to the next call entry of the same thread: an upper
bound that includes the application's own time between calls, with 1 ms resolution.  The
distribution of those bounds per function (and per mechanism, where the cost really differs:
an RSA-4096 C_Sign is not an ECDSA one) is what a reader can act on; ``with_latency`` says on
how many calls it rests.  Over time, calls, errors and p95 per bucket show load and slowdowns.

The mechanism of a row is the operation's mechanism (``op_mechanism``): C_Sign after
C_SignInit counts under the Init's mechanism.  Percentiles interpolate linearly between the
two nearest ranks (as numpy's default and DuckDB's ``quantile_cont``).

Application output: when the traced program prints into the log (a ``Please enter User PIN:``
prompt, its own messages), the gap to its next call is the time a person took to type, not
the token's.  A call whose window -- the log lines from its record to the next call entry of
its thread -- holds such "other text" (manifest ``coverage.other_spans``) is counted in
``app_output``.  It stays in every table (marked by that count) but is kept out of the
headline figures (``latency_all_calls``), which would otherwise report the human.

How: latencies are whole milliseconds, so the calls reduce, batch by batch, to counts per
(function, mechanism, error or not, application output or not, latency) -- a few thousand
rows however many calls there are -- and every figure, percentiles included, is computed
exactly from those counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import polars as pl

from pipeline.errors import P11lensError
from pipeline.stages.common import Batch, Reduction, line_kinds

QUANTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p95_ms": 0.95, "p99_ms": 0.99}

# Auto bucket sizes, seconds: 1s 5s 10s 30s 1m 5m 15m 30m 1h 3h 6h 12h 1d 7d 30d
BUCKET_LADDER = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_AUTO_BUCKETS = 200
MAX_BUCKETS = 1_000_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BUCKET_RE = re.compile(r"\s*(\d+)\s*(s|sec|m|min|h|d|w)?\s*", re.I)


COUNT_KEYS = ["func", "op_mechanism", "error", "app_output", "latency_ms"]
SPAN_SCHEMA = {"source": pl.String, "first": pl.Int64, "last": pl.Int64}


def app_output_spans(inputs: list[dict] | None) -> pl.DataFrame:
    """The line spans of application output ("other text") per source, from ``manifest.json``'s
    inputs: ``source``, ``first``, ``last`` (1-based, inclusive), sorted.

    ``coverage.other_spans`` holds them (``common.line_kinds``: older manifests' unparsed spans).
    """
    rows = [(item.get("path"), int(a), int(b)) for item in inputs or [] for a, b in line_kinds(item.get("coverage")).other_spans]
    return pl.DataFrame(rows, schema=SPAN_SCHEMA, orient="row").sort("source", "last")


def _app_output(rows: pl.LazyFrame, spans: pl.DataFrame, source: str | None) -> pl.LazyFrame:
    """``app_output``: a timed call's window (after its header line, before the header of the
    call its latency runs to) holds a line of an application-output span.

    Spans are disjoint and sorted, so the only candidate is the first span that ends after the
    header: the window holds output when that span starts before the next header.
    """
    mine = spans.lazy().filter(pl.col("source").eq_missing(pl.lit(source, pl.String))).select("first", "last")
    return (
        rows.with_columns((pl.col("line") + 1).alias("_after"))
        .sort("_after")
        .join_asof(mine, left_on="_after", right_on="last", strategy="forward", check_sortedness=False)
        .with_columns((pl.col("latency_ms").is_not_null() & (pl.col("first") < pl.col("next_line"))).fill_null(False).alias("app_output"))
        .drop("_after", "first", "last")
    )


def _latency_rows(batch: Batch) -> pl.LazyFrame:
    return batch.latency.lazy().with_columns((pl.col("category") == "error").alias("error"))


def latency_counts(spans: pl.DataFrame | None = None) -> Reduction:
    """Calls per (function, operation mechanism, error or not, application output in the
    window or not, latency ms): the input of ``latency`` and ``mechanisms``.

    ``spans``: ``app_output_spans(manifest inputs)``; none: no call is marked.
    """
    spans = pl.DataFrame(schema=SPAN_SCHEMA) if spans is None else spans
    return Reduction(
        partial=lambda batch: _app_output(_latency_rows(batch), spans, batch.source)
        .group_by(COUNT_KEYS)
        .agg(pl.len().cast(pl.Int64).alias("n")),
        combine=lambda counts: counts.group_by(COUNT_KEYS).agg(pl.col("n").sum()),
    )


def quantile(q: float) -> pl.Expr:
    """Percentile ``q`` of ``latency_ms`` weighted by ``n`` (an aggregation over count rows),
    exactly as ``quantile(q, "linear")`` over the calls themselves would give it."""
    known = pl.col("latency_ms").is_not_null()
    values = pl.col("latency_ms").filter(known).cast(pl.Float64)
    below = pl.col("n").filter(known).sort_by(values).cum_sum()
    values = values.sort()
    rank = (pl.col("n").filter(known).sum() - 1) * q
    low, high = (values.filter(below > bound).first() for bound in (rank.floor(), rank.ceil()))
    return low + (high - low) * (rank - rank.floor())


def stats() -> list[pl.Expr]:
    """count, with_latency, app_output, mean, percentiles, max and total of ``latency_ms``
    weighted by ``n``."""
    lat, n = pl.col("latency_ms"), pl.col("n")
    known = lat.is_not_null()
    with_latency = n.filter(known).sum()
    total = (lat * n).filter(known).sum()
    return [
        n.sum().cast(pl.Int64).alias("count"),
        with_latency.cast(pl.Int64).alias("with_latency"),
        n.filter(pl.col("app_output")).sum().cast(pl.Int64).alias("app_output"),
        pl.when(with_latency > 0).then(total.cast(pl.Float64) / with_latency).alias("mean_ms"),
        *[quantile(q).alias(name) for name, q in QUANTILES.items()],
        lat.max().cast(pl.Int64).alias("max_ms"),
        total.cast(pl.Int64).alias("total_ms"),
    ]


def latency(counts: pl.LazyFrame) -> pl.LazyFrame:
    """One row per function (``mechanism`` null) and one per (function, mechanism) it ran under.

    ``counts``: the combined ``latency_counts`` summary.
    """
    frame = counts.rename({"op_mechanism": "mechanism"})
    per_func = frame.group_by("func").agg(stats()).with_columns(pl.lit(None, pl.String).alias("mechanism"))
    per_mech = frame.filter(pl.col("mechanism").is_not_null()).group_by("func", "mechanism").agg(stats())
    columns = ["func", "mechanism", "count", "with_latency", "app_output", "mean_ms", *QUANTILES, "max_ms", "total_ms"]
    return (
        pl.concat([per_func.select(columns), per_mech.select(columns)])
        .with_columns(pl.col("total_ms").fill_null(0))
        .sort(["func", "mechanism"], nulls_last=False)
    )


def latency_all_calls(counts: pl.LazyFrame) -> dict:
    """The ``latency`` figures over all calls together (the report's headline p95), without the
    calls whose window holds application output; ``app_output_excluded`` says how many.

    ``counts``: the combined ``latency_counts`` summary.
    """
    figures = counts.filter(~pl.col("app_output")).select(stats()).collect().row(0, named=True)
    excluded = counts.select(pl.col("n").filter(pl.col("app_output")).sum()).collect().item()
    return {**{k: v for k, v in figures.items() if k != "app_output"}, "app_output_excluded": excluded}


def parse_bucket(text: str) -> int:
    """``"1m"`` → 60; plain numbers are seconds.  Raises ``P11lensError`` on anything else."""
    m = _BUCKET_RE.fullmatch(text or "")
    if m is None or int(m.group(1)) <= 0:
        raise P11lensError(f"bad --bucket {text!r}: use a whole number of seconds or minutes, hours, days (30s, 1m, 1h, 1d)")
    unit = (m.group(2) or "s").lower()[0]
    return int(m.group(1)) * _UNITS[unit]


def auto_bucket(span_ms: int | None) -> int:
    """The smallest ladder step that gives at most ``MAX_AUTO_BUCKETS`` buckets over ``span_ms``."""
    seconds = 0.0 if span_ms is None else span_ms / 1000
    for step in BUCKET_LADDER:
        if math.ceil(seconds / step) <= MAX_AUTO_BUCKETS:
            return step
    return math.ceil(seconds / MAX_AUTO_BUCKETS / BUCKET_LADDER[-1]) * BUCKET_LADDER[-1]


@dataclass(frozen=True)
class TimeAxis:
    """The buckets of ``latency_over_time``: size in seconds, first and last bucket start as
    ms since the epoch (None when no call has a stamp).

    A bucket start is aligned to the epoch, except that none starts before year 1 (the first
    then starts at 0001-01-01): every reader's datetime holds it (Python's, pyarrow's
    ``to_pylist``).  Integers, so the axis never needs a Python datetime."""

    step: int
    first: int | None
    last: int | None

    def bucket_of(self, ts: pl.Expr) -> pl.Expr:
        """The start of the bucket that holds each stamp."""
        step = self.step * 1000
        return (pl.lit(self.first) + (ts.dt.epoch("ms") - self.first) // step * step).cast(pl.Datetime("ms"))


YEAR_ONE_MS = -62_135_596_800_000  # 0001-01-01T00:00


def time_axis(calls: pl.LazyFrame, bucket: str | int | None = None) -> TimeAxis:
    """The buckets over the calls' stamps (one streaming min/max over ``ts``).

    ``bucket``: seconds, or text like ``"1m"``; None sizes it from the trace's time range
    (about 60-200 buckets, rounded to 1s/5s/10s/30s/1m/5m/15m/30m/1h/...).  Timestamps are the
    spy's local wall time; several sources share one axis.
    """
    ts = pl.col("ts").cast(pl.Datetime("ms"))
    lo, hi = (
        calls.select(ts.min().dt.epoch("ms").alias("lo"), ts.max().dt.epoch("ms").alias("hi"))
        .collect(engine="streaming")
        .row(0)
    )
    if bucket is None:
        step = auto_bucket(None if lo is None else hi - lo)
    else:
        step = bucket if isinstance(bucket, int) else parse_bucket(bucket)
    if lo is None:
        return TimeAxis(step, None, None)
    first = max(pl.select(pl.lit(lo).cast(pl.Datetime("ms")).dt.truncate(f"{step}s").dt.epoch("ms")).item(), YEAR_ONE_MS)
    last = first + (hi - first) // (step * 1000) * (step * 1000)  # the bucket of the last stamp (`TimeAxis.bucket_of`)
    if (last - first) / 1000 / step + 1 > MAX_BUCKETS:
        raise P11lensError(
            f"--bucket {step}s makes more than {MAX_BUCKETS:,} buckets over {(hi - lo) / 86_400_000:,.1f} days; use a larger one"
        )
    return TimeAxis(step, first, last)


def bucket_counts(axis: TimeAxis) -> Reduction:
    """Calls per (bucket, error or not, latency ms): the input of ``latency_over_time``."""
    bucket = axis.bucket_of(pl.col("ts")).alias("bucket_start")
    keys = ["bucket_start", "error", "latency_ms"]
    return Reduction(
        partial=lambda batch: _latency_rows(batch).filter(pl.col("ts").is_not_null()).group_by(bucket, "error", "latency_ms").agg(pl.len().cast(pl.Int64).alias("n")),
        combine=lambda counts: counts.group_by(keys).agg(pl.col("n").sum()),
    )


def latency_over_time(counts: pl.LazyFrame, axis: TimeAxis) -> pl.LazyFrame:
    """Calls, errors and p95 latency per time bucket, empty buckets included (calls = 0).

    ``counts``: the combined ``bucket_counts(axis)`` summary.
    """
    schema = {
        "bucket_start": pl.Datetime("ms"),
        "bucket_seconds": pl.Int64,
        "calls": pl.Int64,
        "errors": pl.Int64,
        "p95_ms": pl.Float64,
    }
    if axis.first is None:
        return pl.LazyFrame(schema=schema)
    per_bucket = counts.group_by("bucket_start").agg(
        pl.col("n").sum().cast(pl.Int64).alias("calls"),
        pl.col("n").filter(pl.col("error")).sum().cast(pl.Int64).alias("errors"),
        quantile(0.95).alias("p95_ms"),
    )
    buckets = pl.LazyFrame(
        {"bucket_start": pl.int_range(axis.first, axis.last + 1, axis.step * 1000, dtype=pl.Int64, eager=True).cast(pl.Datetime("ms"))}
    )
    return (
        buckets.join(per_bucket, on="bucket_start", how="left")
        .select(
            "bucket_start",
            pl.lit(axis.step, pl.Int64).alias("bucket_seconds"),
            pl.col("calls").fill_null(0),
            pl.col("errors").fill_null(0),
            "p95_ms",
        )
        .sort("bucket_start")
    )
