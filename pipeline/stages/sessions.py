"""Session lifecycles (one row per session) and per-process session and login summaries.

Why: leaked sessions, logins that are never undone and processes that never call
``C_Finalize`` are resource and security problems an application owner can fix, and they
are visible only by following each session handle from ``C_OpenSession`` to its end.

A *session* is one life of a handle in one process: a successful ``C_OpenSession`` that
returned it, then every call naming it, in entry order (the spy's counter), until the next
open that returns the same handle.  Calls on a handle whose open is not in the trace form a
session with ``opened_ts`` null (opened before the trace started).  It ends at the first of:
a successful ``C_CloseSession`` of it, a successful ``C_CloseAllSessions`` of its slot in the
same process, a successful ``C_Finalize`` of the process; otherwise ``ended_by`` is ``never``
and it is ``leaked``.

``rw`` comes from the open's ``flags`` (``CKF_RW_SESSION=True|False``, read by the parser from
``[in] flags``); it is null for a calls table without that column.
``operations`` counts logical operations: an Init and its Update/Final/one-shot calls (and
C_FindObjectsInit with its C_FindObjects/C_FindObjectsFinal) count once; C_OpenSession and
C_CloseSession do not count.  ``logged_in``: a successful C_Login/C_LoginUser was made on it.
"""

from __future__ import annotations

import polars as pl

from pipeline.stages.common import CKR_OK, CONTINUATION_FUNCS, PROCESS_KEYS, derive, restore_pid

SESSION_COLUMNS = [
    "source", "process", "pid", "session", "slot", "rw", "opened_ts", "closed_ts", "duration_ms", "ended_by",
    "leaked", "calls", "errors", "logged_in", "user_type", "operations", "open_line", "close_line",
]
PROCESS_COLUMNS = [
    "source", "process", "pid", "sessions", "leaked_sessions", "max_concurrent_sessions", "logins", "logouts",
    "logins_without_logout", "login_failures", "finalized", "calls", "first_ts", "last_ts",
]

_OK = pl.col("rv") == CKR_OK
_LOGIN = pl.col("func").is_in(["C_Login", "C_LoginUser"])


def _rw() -> pl.Expr:
    flags = pl.col("flags")
    return (
        pl.when(flags.list.contains("CKF_RW_SESSION=True"))
        .then(True)
        .when(flags.list.contains("CKF_RW_SESSION=False"))
        .then(False)
        .otherwise(None)
    )


def session_lives(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Every session life with its open, close and end (keys use ``pid_k``)."""
    opened = (pl.col("func") == "C_OpenSession") & _OK
    handle_keys = [*PROCESS_KEYS, "session"]
    on_handle = (
        frame.filter(pl.col("session").is_not_null())
        .sort("pos")
        .with_columns(opened.alias("is_open"))
        .with_columns(pl.col("is_open").cum_sum().over(handle_keys).alias("life"))
    )
    closed_here = (pl.col("func") == "C_CloseSession") & _OK
    lives = on_handle.group_by([*handle_keys, "life"]).agg(
        pl.col("pos").min().alias("start_pos"),
        pl.col("slot").filter(pl.col("is_open")).first().alias("slot"),
        _rw().filter(pl.col("is_open")).first().alias("rw"),
        pl.col("ts").filter(pl.col("is_open")).first().alias("opened_ts"),
        pl.col("line").filter(pl.col("is_open")).first().alias("open_line"),
        pl.col("pos").filter(closed_here).first().alias("close_pos"),
        pl.col("ts").filter(closed_here).first().alias("close_ts"),
        pl.col("line").filter(closed_here).first().alias("close_line"),
        pl.len().cast(pl.Int64).alias("calls"),
        (pl.col("category") == "error").sum().cast(pl.Int64).alias("errors"),
        (_LOGIN & _OK).any().alias("logged_in"),
        pl.col("user_type").filter(_LOGIN & _OK).last().alias("user_type"),
        (~pl.col("func").is_in([*CONTINUATION_FUNCS, "C_OpenSession", "C_CloseSession"])).sum().cast(pl.Int64).alias("operations"),
    )
    close_all = (
        frame.filter((pl.col("func") == "C_CloseAllSessions") & _OK & pl.col("slot").is_not_null())
        .select(*PROCESS_KEYS, "slot", pl.col("pos").alias("cas_pos"), pl.col("ts").alias("cas_ts"), pl.col("line").alias("cas_line"))
        .sort("cas_pos")
    )
    finalize = (
        frame.filter((pl.col("func") == "C_Finalize") & _OK)
        .select(*PROCESS_KEYS, pl.col("pos").alias("fin_pos"), pl.col("ts").alias("fin_ts"), pl.col("line").alias("fin_line"))
        .sort("fin_pos")
    )
    lives = (
        lives.with_columns(pl.col("slot").fill_null(-1).alias("slot_k"))
        .sort("start_pos")
        .join_asof(close_all.rename({"slot": "slot_k"}), left_on="start_pos", right_on="cas_pos", by=[*PROCESS_KEYS, "slot_k"], strategy="forward", check_sortedness=False)
        .join_asof(finalize, left_on="start_pos", right_on="fin_pos", by=PROCESS_KEYS, strategy="forward", check_sortedness=False)
    )
    big = pl.lit(2**62, pl.Int64)
    first_end = pl.min_horizontal(pl.col("close_pos").fill_null(big), pl.col("cas_pos").fill_null(big), pl.col("fin_pos").fill_null(big))
    ended_by = (
        pl.when(first_end == big).then(pl.lit("never"))
        .when(first_end == pl.col("close_pos")).then(pl.lit("C_CloseSession"))
        .when(first_end == pl.col("cas_pos")).then(pl.lit("C_CloseAllSessions"))
        .otherwise(pl.lit("C_Finalize"))
    )
    return lives.with_columns(ended_by.alias("ended_by"), pl.when(first_end == big).then(None).otherwise(first_end).alias("end_pos")).with_columns(
        pl.when(pl.col("ended_by") == "C_CloseSession").then(pl.col("close_ts"))
        .when(pl.col("ended_by") == "C_CloseAllSessions").then(pl.col("cas_ts"))
        .when(pl.col("ended_by") == "C_Finalize").then(pl.col("fin_ts"))
        .alias("closed_ts"),
        pl.when(pl.col("ended_by") == "C_CloseSession").then(pl.col("close_line"))
        .when(pl.col("ended_by") == "C_CloseAllSessions").then(pl.col("cas_line"))
        .when(pl.col("ended_by") == "C_Finalize").then(pl.col("fin_line"))
        .alias("close_line"),
        (pl.col("ended_by") == "never").alias("leaked"),
    ).with_columns((pl.col("closed_ts") - pl.col("opened_ts")).dt.total_milliseconds().alias("duration_ms"))


def sessions(calls: pl.LazyFrame, lives: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """One row per session life (see the module docstring).

    ``lives``: ``session_lives(calls)`` when already computed (``analyze`` shares it).
    """
    table = lives if lives is not None else session_lives(derive(calls))
    return restore_pid(table).select(SESSION_COLUMNS).sort(["source", "process", "pid", "open_line"], nulls_last=True)


def processes(calls: pl.LazyFrame, lives: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """One row per traced process: sessions, peak concurrency, logins and logouts, finalization.

    ``max_concurrent_sessions`` sweeps opens (+1) and ends (-1) in entry order.
    ``logins_without_logout``: successful logins not followed by a successful C_Logout before
    the process's next successful login or its end (a C_Finalize or closing the last session
    also ends a login, but the application did not log out, so they still count).
    """
    frame = derive(calls)
    table = lives if lives is not None else session_lives(frame)
    per_session = table.group_by(PROCESS_KEYS).agg(
        pl.len().cast(pl.Int64).alias("sessions"),
        pl.col("leaked").sum().cast(pl.Int64).alias("leaked_sessions"),
    )
    sweep = (
        pl.concat(
            [
                table.select(*PROCESS_KEYS, pl.col("start_pos").alias("at"), pl.lit(1, pl.Int64).alias("delta")),
                table.filter(pl.col("end_pos").is_not_null()).select(*PROCESS_KEYS, pl.col("end_pos").alias("at"), pl.lit(-1, pl.Int64).alias("delta")),
            ]
        )
        .sort([*PROCESS_KEYS, "at", "delta"])
        .with_columns(pl.col("delta").cum_sum().over(PROCESS_KEYS).alias("open_now"))
        .group_by(PROCESS_KEYS)
        .agg(pl.col("open_now").max().cast(pl.Int64).alias("max_concurrent_sessions"))
    )
    auth = (
        frame.filter(((_LOGIN) | (pl.col("func") == "C_Logout")) & _OK)
        .select(*PROCESS_KEYS, "pos", "func")
        .sort([*PROCESS_KEYS, "pos"])
        .with_columns(pl.col("func").shift(-1).over(PROCESS_KEYS).alias("next_func"))
        .group_by(PROCESS_KEYS)
        .agg(
            (_LOGIN & (pl.col("next_func").is_null() | (pl.col("next_func") != "C_Logout"))).sum().cast(pl.Int64).alias("logins_without_logout")
        )
    )
    base = frame.group_by(PROCESS_KEYS).agg(
        (_LOGIN & _OK).sum().cast(pl.Int64).alias("logins"),
        ((pl.col("func") == "C_Logout") & _OK).sum().cast(pl.Int64).alias("logouts"),
        (_LOGIN & (pl.col("category") == "error")).sum().cast(pl.Int64).alias("login_failures"),
        ((pl.col("func") == "C_Finalize") & _OK).any().alias("finalized"),
        pl.len().cast(pl.Int64).alias("calls"),
        pl.col("ts").min().alias("first_ts"),
        pl.col("ts").max().alias("last_ts"),
    )
    out = (
        base.join(per_session, on=PROCESS_KEYS, how="left", nulls_equal=True)
        .join(sweep, on=PROCESS_KEYS, how="left", nulls_equal=True)
        .join(auth, on=PROCESS_KEYS, how="left", nulls_equal=True)
        .with_columns(
            pl.col("sessions").fill_null(0),
            pl.col("leaked_sessions").fill_null(0),
            pl.col("max_concurrent_sessions").fill_null(0),
            pl.col("logins_without_logout").fill_null(0),
        )
    )
    return restore_pid(out).select(PROCESS_COLUMNS).sort(["source", "process", "pid"])
