"""Return values: per return value, and per (function, return value).

Why: "how often does what fail, since when" is the first question about a trace, and raw
counts mislead because some non-OK codes are normal protocol: the size query
(``CKR_BUFFER_TOO_SMALL``) and ``C_GetAttributeValue`` probing (``CKR_ATTRIBUTE_SENSITIVE``,
``CKR_ATTRIBUTE_TYPE_INVALID``).  ``category`` separates those (``benign``) from real errors,
and from records the spy never finished (``incomplete``: rv null).  ``share`` puts a count in
proportion: of that function's calls on per-function rows, of all calls on the per-rv rows.

The number is authoritative, the name a convenience (format notes §3.4): rows are per ``rv``;
``rv_name`` is the name the spy printed (vendor and unknown codes as written, e.g.
``(null)``; where spies of different versions named one code differently, a real name wins
over ``(null)``), and ``rv_hex`` the code in hex for looking it up.

How: each batch of calls reduces to counts, names and first/last stamps per (function,
return value, category) (``error_counts``); the per-return-value rows combine those.
"""

from __future__ import annotations

import polars as pl

from pipeline.stages.common import Reduction

KEYS = ["func", "rv", "category"]


def _hex(value: int) -> str:
    """A 64-bit Windows spy prints codes >= 0x80000000 as negative 32-bit longs (§3.4)."""
    return f"{value & 0xFFFFFFFF if -(2**31) <= value < 0 else value:08X}"


COLUMNS = ["func", "rv", "rv_name", "rv_hex", "category", "count", "first_ts", "last_ts", "share"]


def _combined() -> list[pl.Expr]:
    """Partial summaries (rows of ``error_counts``) into one per group."""
    return [
        pl.col("named").min(),
        pl.col("rv_name").min(),
        pl.col("count").sum(),
        pl.col("first_ts").min(),
        pl.col("last_ts").max(),
    ]


def error_counts() -> Reduction:
    """Per (function, return value, category): the least real name (not ``(null)``), the least
    name, calls, first and last stamp."""
    named = pl.when(pl.col("rv_name") != "(null)").then(pl.col("rv_name"))  # elementwise: the fast path of min
    return Reduction(
        partial=lambda batch: batch.calls.lazy().group_by(KEYS).agg(
            named.min().alias("named"),
            pl.col("rv_name").min(),
            pl.len().cast(pl.Int64).alias("count"),
            pl.col("ts").min().alias("first_ts"),
            pl.col("ts").max().alias("last_ts"),
        ),
        combine=lambda counts: counts.group_by(KEYS).agg(_combined()),
    )


def errors(counts: pl.LazyFrame) -> pl.LazyFrame:
    """``counts``: the combined ``error_counts`` summary."""
    name = pl.coalesce("named", "rv_name").alias("rv_name")
    per_rv = (
        counts.group_by("rv", "category")
        .agg(_combined())
        .with_columns(
            pl.lit(None, pl.String).alias("func"),
            (pl.col("count") / pl.col("count").sum()).alias("share"),
        )
    )
    per_func = counts.with_columns((pl.col("count") / pl.col("count").sum().over("func")).alias("share"))
    rv_hex = (
        pl.when(pl.col("rv").is_null())
        .then(None)
        .otherwise(pl.lit("0x") + pl.col("rv").map_elements(_hex, return_dtype=pl.String))
    )
    return (
        pl.concat([frame.with_columns(name, rv_hex.alias("rv_hex")).select(COLUMNS) for frame in (per_rv, per_func)])
        .sort(["func", "count", "rv"], descending=[False, True, False], nulls_last=[False, False, True])
    )
