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
"""

from __future__ import annotations

import polars as pl

from pipeline.stages.common import derive

def _hex(value: int) -> str:
    """A 64-bit Windows spy prints codes >= 0x80000000 as negative 32-bit longs (§3.4)."""
    return f"{value & 0xFFFFFFFF if -(2**31) <= value < 0 else value:08X}"


COLUMNS = ["func", "rv", "rv_name", "rv_hex", "category", "count", "first_ts", "last_ts", "share"]


def _agg() -> list[pl.Expr]:
    named = pl.col("rv_name").filter(pl.col("rv_name") != "(null)")
    return [
        pl.coalesce(named.min(), pl.col("rv_name").min()).alias("rv_name"),
        pl.len().cast(pl.Int64).alias("count"),
        pl.col("ts").min().alias("first_ts"),
        pl.col("ts").max().alias("last_ts"),
    ]


def errors(calls: pl.LazyFrame) -> pl.LazyFrame:
    frame = derive(calls).select("func", "rv", "rv_name", "ts", "category")
    total = frame.select(pl.len().alias("all_calls"))
    per_func_total = frame.group_by("func").agg(pl.len().alias("func_calls"))
    per_rv = (
        frame.group_by("rv", "category")
        .agg(_agg())
        .join(total, how="cross")
        .with_columns(
            pl.lit(None, pl.String).alias("func"),
            (pl.col("count") / pl.col("all_calls")).alias("share"),
        )
    )
    per_func = (
        frame.group_by("func", "rv", "category")
        .agg(_agg())
        .join(per_func_total, on="func", how="left")
        .with_columns((pl.col("count") / pl.col("func_calls")).alias("share"))
    )
    rv_hex = (
        pl.when(pl.col("rv").is_null())
        .then(None)
        .otherwise(pl.lit("0x") + pl.col("rv").map_elements(_hex, return_dtype=pl.String))
    )
    return (
        pl.concat([per_rv.with_columns(rv_hex.alias("rv_hex")).select(COLUMNS), per_func.with_columns(rv_hex.alias("rv_hex")).select(COLUMNS)])
        .sort(["func", "count", "rv"], descending=[False, True, False], nulls_last=[False, False, True])
    )
