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

How: latencies are whole milliseconds, so the calls reduce, batch by batch, to counts per
(function, mechanism, error or not, latency) -- a few thousand rows however many calls there
are -- and every figure, percentiles included, is computed exactly from those counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from pipeline.errors import P11lensError
from pipeline.stages.common import Batch, Reduction

QUANTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p95_ms": 0.95, "p99_ms": 0.99}

# Auto bucket sizes, seconds: 1s 5s 10s 30s 1m 5m 15m 30m 1h 3h 6h 12h 1d 7d 30d
BUCKET_LADDER = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_AUTO_BUCKETS = 200
MAX_BUCKETS = 1_000_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BUCKET_RE = re.compile(r"\s*(\d+)\s*(s|sec|m|min|h|d|w)?\s*", re.I)


COUNT_KEYS = ["func", "op_mechanism", "error", "latency_ms"]


def _counts(keys: list[str]) -> Reduction:
    """Calls per ``keys`` (``n``) from each batch's calls with a known latency."""
    return Reduction(
        partial=lambda batch: _latency_rows(batch).group_by(keys).agg(pl.len().cast(pl.Int64).alias("n")),
        combine=lambda counts: counts.group_by(keys).agg(pl.col("n").sum()),
    )


def _latency_rows(batch: Batch) -> pl.LazyFrame:
    return batch.latency.lazy().with_columns((pl.col("category") == "error").alias("error"))


def latency_counts() -> Reduction:
    """Calls per (function, operation mechanism, error or not, latency ms): the input of
    ``latency`` and ``mechanisms``."""
    return _counts(COUNT_KEYS)


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
    """count, with_latency, mean, percentiles, max and total of ``latency_ms`` weighted by ``n``."""
    lat, n = pl.col("latency_ms"), pl.col("n")
    known = lat.is_not_null()
    with_latency = n.filter(known).sum()
    total = (lat * n).filter(known).sum()
    return [
        n.sum().cast(pl.Int64).alias("count"),
        with_latency.cast(pl.Int64).alias("with_latency"),
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
    columns = ["func", "mechanism", "count", "with_latency", "mean_ms", *QUANTILES, "max_ms", "total_ms"]
    return (
        pl.concat([per_func.select(columns), per_mech.select(columns)])
        .with_columns(pl.col("total_ms").fill_null(0))
        .sort(["func", "mechanism"], nulls_last=False)
    )


def latency_all_calls(counts: pl.LazyFrame) -> dict:
    """The ``latency`` figures over all calls together (the report's headline p95).

    ``counts``: the combined ``latency_counts`` summary.
    """
    return counts.select(stats()).collect().row(0, named=True)


def parse_bucket(text: str) -> int:
    """``"1m"`` → 60; plain numbers are seconds.  Raises ``P11lensError`` on anything else."""
    m = _BUCKET_RE.fullmatch(text or "")
    if m is None or int(m.group(1)) <= 0:
        raise P11lensError(f"bad --bucket {text!r}: use a whole number of seconds or minutes, hours, days (30s, 1m, 1h, 1d)")
    unit = (m.group(2) or "s").lower()[0]
    return int(m.group(1)) * _UNITS[unit]


def auto_bucket(span: timedelta | None) -> int:
    """The smallest ladder step that gives at most ``MAX_AUTO_BUCKETS`` buckets over ``span``."""
    seconds = 0.0 if span is None else span.total_seconds()
    for step in BUCKET_LADDER:
        if math.ceil(seconds / step) <= MAX_AUTO_BUCKETS:
            return step
    return math.ceil(seconds / MAX_AUTO_BUCKETS / BUCKET_LADDER[-1]) * BUCKET_LADDER[-1]


@dataclass(frozen=True)
class TimeAxis:
    """The buckets of ``latency_over_time``: size in seconds, first and last bucket start
    (None when no call has a stamp)."""

    step: int
    first: datetime | None
    last: datetime | None

    @property
    def every(self) -> str:
        return f"{self.step}s"


def time_axis(calls: pl.LazyFrame, bucket: str | int | None = None) -> TimeAxis:
    """The buckets over the calls' stamps (one streaming min/max over ``ts``).

    ``bucket``: seconds, or text like ``"1m"``; None sizes it from the trace's time range
    (about 60-200 buckets, rounded to 1s/5s/10s/30s/1m/5m/15m/30m/1h/...).  Timestamps are the
    spy's local wall time; several sources share one axis.
    """
    lo, hi = calls.select(pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi")).collect(engine="streaming").row(0)
    if bucket is None:
        step = auto_bucket(None if lo is None else hi - lo)
    else:
        step = bucket if isinstance(bucket, int) else parse_bucket(bucket)
    if lo is None:
        return TimeAxis(step, None, None)
    first, last = (pl.select(pl.lit(v, pl.Datetime("ms")).dt.truncate(f"{step}s")).item() for v in (lo, hi))
    if (last - first).total_seconds() / step + 1 > MAX_BUCKETS:
        raise P11lensError(f"--bucket {step}s makes more than {MAX_BUCKETS:,} buckets over {hi - lo}; use a larger one")
    return TimeAxis(step, first, last)


def bucket_counts(axis: TimeAxis) -> Reduction:
    """Calls per (bucket, error or not, latency ms): the input of ``latency_over_time``."""
    bucket = pl.col("ts").dt.truncate(axis.every).alias("bucket_start")
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
        {"bucket_start": pl.datetime_range(axis.first, axis.last, timedelta(seconds=axis.step), time_unit="ms", eager=True)}
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
