"""Session lifecycles (one row per session) and per-process session and login summaries.

Why: leaked sessions, logins that are never undone and processes that never call
``C_Finalize`` are resource and security problems an application owner can fix, and they
are visible only by following each session handle from ``C_OpenSession`` to its end.

A *session* is one life of a handle in one process: a successful ``C_OpenSession`` that
returned it, then every call naming it, in entry order (the spy's counter), until the next
open that returns the same handle.  Calls on a handle whose open is not in the trace form a
session with ``opened_in_log`` false (opened before the log starts: a log that begins mid-run
is a normal input, not a broken one); ``first_line``/``first_ts`` are then its first call in
the log, and ``opened_ts``/``duration_ms`` are null.  It ends at the first of:
a successful ``C_CloseSession`` of it, a successful ``C_CloseAllSessions`` of its slot in the
same process, a successful ``C_Finalize`` of the process; otherwise ``ended_by`` is ``never``
and it is ``leaked``.

``rw`` comes from the open's ``flags`` (``CKF_RW_SESSION=True|False``, read by the parser from
``[in] flags``); it is null for a calls table without that column.
``operations`` counts logical operations: an Init and its Update/Final/one-shot calls (and
C_FindObjectsInit with its C_FindObjects/C_FindObjectsFinal) count once; C_OpenSession and
C_CloseSession do not count.  ``logged_in``: a successful C_Login/C_LoginUser was made on it.

Logins: PKCS#11 keeps a login per token and application, and ends it when the application's
last session with the token closes (C_CloseSession of the last one, C_CloseAllSessions,
C_Finalize: the base specification, C_CloseSession).  So a login is left over only when it is
followed by neither a C_Logout nor a moment with no session open; ``still_logged_in`` finds
those (per process: a conservative stand-in for per token, which a log does not always tell,
since a session opened before the log has no slot).

How: the pass over the calls numbers each handle's lives (``life``, carried across batches);
each batch reduces to one row per life it touches (``life_parts``) and keeps the few calls that
end sessions in bulk (``ends``: successful C_CloseAllSessions, C_Finalize).  Rows of one life
from several batches combine in batch order, which is entry order (first close, last login).
"""

from __future__ import annotations

import polars as pl

from pipeline.stages.common import CONTINUATION_FUNCS, LOGIN, OK, PROCESS_KEYS, Reduction, by_source, int_key, restore_pid

SESSION_COLUMNS = [
    "source", "process", "pid", "session", "slot", "rw", "opened_in_log", "opened_ts", "closed_ts", "duration_ms", "ended_by",
    "leaked", "calls", "errors", "logged_in", "user_type", "operations", "open_line", "close_line", "first_line", "first_ts",
]
PROCESS_COLUMNS = [
    "source", "process", "pid", "sessions", "sessions_before_log", "leaked_sessions", "max_concurrent_sessions", "logins",
    "logouts", "logins_without_logout", "logins_ended_by_close", "logged_in_before_log", "login_failures", "finalized",
    "calls", "first_ts", "last_ts",
]

LIFE_KEYS = [*PROCESS_KEYS, "session", "life"]


def _rw() -> pl.Expr:
    flags = pl.col("flags")
    return (
        pl.when(flags.list.contains("CKF_RW_SESSION=True"))
        .then(True)
        .when(flags.list.contains("CKF_RW_SESSION=False"))
        .then(False)
        .otherwise(None)
    )


def life_parts() -> Reduction:
    """Per session life (``LIFE_KEYS``): where it starts, its open, its first close, its calls.

    A life's open is its first call (an open starts a new life), so the open's slot, flags,
    stamp and line are the first ones, kept when that first call is an open.
    """
    is_open = (pl.col("func") == "C_OpenSession") & OK
    closed_here = (pl.col("func") == "C_CloseSession") & OK
    at_open = lambda expr: pl.when(pl.col("_opened")).then(expr)  # noqa: E731 -- on the first call's values
    at_close = lambda expr: expr.filter(closed_here).first()  # noqa: E731
    partial = lambda batch: by_source(  # noqa: E731
        batch,
        batch.calls.lazy().filter(pl.col("session").is_not_null()),
        LIFE_KEYS,
        pl.col("pos").min().alias("start_pos"),
        is_open.first().alias("_opened"),
        pl.col("slot", "flags", "ts", "line").first(),
        at_close(pl.col("pos")).alias("close_pos"),
        at_close(pl.col("ts")).alias("close_ts"),
        at_close(pl.col("line")).alias("close_line"),
        pl.len().cast(pl.Int64).alias("calls"),
        (pl.col("category") == "error").sum().cast(pl.Int64).alias("errors"),
        (LOGIN & OK).any().alias("logged_in"),
        pl.col("user_type").filter(LOGIN & OK).last().alias("user_type"),
        (~pl.col("func").is_in([*CONTINUATION_FUNCS, "C_OpenSession", "C_CloseSession"])).sum().cast(pl.Int64).alias("operations"),
    ).select(
        *LIFE_KEYS, "start_pos", pl.col("ts").alias("first_ts"), pl.col("line").alias("first_line"), at_open(pl.col("slot")), at_open(_rw()).alias("rw"),
        at_open(pl.col("ts")).alias("opened_ts"), at_open(pl.col("line")).alias("open_line"),
        "close_pos", "close_ts", "close_line", "calls", "errors", "logged_in", "user_type", "operations",
    )
    closed = pl.col("close_pos").is_not_null()
    combine = lambda parts: parts.group_by(LIFE_KEYS).agg(  # noqa: E731 -- parts in batch order
        pl.col("start_pos").min(),
        pl.col("first_ts").first(),
        pl.col("first_line").min(),
        *(pl.col(name).drop_nulls().first() for name in ("slot", "rw", "opened_ts", "open_line")),
        *(pl.col(name).filter(closed).first() for name in ("close_pos", "close_ts", "close_line")),
        *(pl.col(name).sum() for name in ("calls", "errors")),
        pl.col("logged_in").any(),
        pl.col("user_type").filter(pl.col("logged_in")).last(),
        pl.col("operations").sum(),
    )
    return Reduction(partial, combine)


def ends() -> Reduction:
    """The calls that end sessions in bulk: successful C_CloseAllSessions (of a slot) and C_Finalize."""
    return Reduction(
        partial=lambda batch: batch.calls.lazy()
        .filter(OK & (((pl.col("func") == "C_CloseAllSessions") & pl.col("slot").is_not_null()) | (pl.col("func") == "C_Finalize")))
        .select(*PROCESS_KEYS, "func", "slot", "pos", "ts", "line"),
        combine=lambda parts: parts,
    )


def session_lives(parts: pl.LazyFrame, ends: pl.LazyFrame) -> pl.LazyFrame:
    """Every session life with its open, close and end (keys use ``pid_k``), from the combined
    ``life_parts`` and ``ends`` summaries.

    A session opened before the log has no known slot (``slot_k`` -1): any C_CloseAllSessions of
    its process may be its slot's, and ends it (so each one is also listed under slot -1)."""
    close_all = ends.filter(pl.col("func") == "C_CloseAllSessions").select(
        *PROCESS_KEYS, int_key("slot").alias("slot_k"), pl.col("pos").alias("cas_pos"), pl.col("ts").alias("cas_ts"), pl.col("line").alias("cas_line")
    )
    close_all = pl.concat([close_all, close_all.with_columns(pl.lit(-1, pl.Int64).alias("slot_k"))]).sort("cas_pos")
    finalize = (
        ends.filter(pl.col("func") == "C_Finalize")
        .select(*PROCESS_KEYS, pl.col("pos").alias("fin_pos"), pl.col("ts").alias("fin_ts"), pl.col("line").alias("fin_line"))
        .sort("fin_pos")
    )
    lives = parts
    lives = (
        lives.with_columns(int_key("slot").alias("slot_k"))
        .sort("start_pos")
        .join_asof(close_all, left_on="start_pos", right_on="cas_pos", by=[*PROCESS_KEYS, "slot_k"], strategy="forward", check_sortedness=False)
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
    return lives.with_columns(ended_by.alias("ended_by")).with_columns(
        pl.when(pl.col("ended_by") == "C_CloseSession").then(pl.col("close_ts"))
        .when(pl.col("ended_by") == "C_CloseAllSessions").then(pl.col("cas_ts"))
        .when(pl.col("ended_by") == "C_Finalize").then(pl.col("fin_ts"))
        .alias("closed_ts"),
        pl.when(pl.col("ended_by") == "C_CloseSession").then(pl.col("close_line"))
        .when(pl.col("ended_by") == "C_CloseAllSessions").then(pl.col("cas_line"))
        .when(pl.col("ended_by") == "C_Finalize").then(pl.col("fin_line"))
        .alias("close_line"),
        (pl.col("ended_by") == "never").alias("leaked"),
        pl.col("open_line").is_not_null().alias("opened_in_log"),
    ).with_columns((pl.col("closed_ts") - pl.col("opened_ts")).dt.total_milliseconds().alias("duration_ms"))


def sessions(lives: pl.LazyFrame) -> pl.LazyFrame:
    """One row per session life (see the module docstring); ``lives``: ``session_lives(...)``."""
    return restore_pid(lives).select(SESSION_COLUMNS).sort(["source", "process", "pid", "first_line"], nulls_last=True)


def process_counts() -> Reduction:
    """Per process: logins, logouts, failed logins, finalized or not, calls, first and last
    stamp, last line (the ``no-finalize`` finding points at it), and the first successful
    login and logout lines (a logout first: the login was made before the log starts)."""
    first_line = lambda expr: pl.col("line").filter(expr & OK).min()  # noqa: E731
    return Reduction(
        partial=lambda batch: by_source(
            batch,
            batch.calls.lazy(),
            PROCESS_KEYS,
            (LOGIN & OK).sum().cast(pl.Int64).alias("logins"),
            ((pl.col("func") == "C_Logout") & OK).sum().cast(pl.Int64).alias("logouts"),
            (LOGIN & (pl.col("category") == "error")).sum().cast(pl.Int64).alias("login_failures"),
            ((pl.col("func") == "C_Finalize") & OK).any().alias("finalized"),
            pl.len().cast(pl.Int64).alias("calls"),
            pl.col("ts").min().alias("first_ts"),
            pl.col("ts").max().alias("last_ts"),
            pl.col("line").max().alias("last_line"),
            first_line(LOGIN).alias("first_login_line"),
            first_line(pl.col("func") == "C_Logout").alias("first_logout_line"),
        ),
        combine=lambda parts: parts.group_by(PROCESS_KEYS).agg(
            *(pl.col(name).sum() for name in ("logins", "logouts", "login_failures")),
            pl.col("finalized").any(),
            pl.col("calls").sum(),
            pl.col("first_ts").min(),
            pl.col("last_ts").max(),
            pl.col("last_line").max(),
            pl.col("first_login_line").min(),
            pl.col("first_logout_line").min(),
        ),
    )


def open_levels(lives: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """Per process (``keys``), each line where a session life starts (``delta`` +1: its first
    call in the log) or ends (-1: ``close_line``), in line order, with ``level``: the sessions
    open after it.  ``lives``: session lives with ``first_line`` and ``close_line`` (the
    ``session_lives`` frame, or sessions.parquet).  Lines order one source's calls as entry
    order does, and ``keys`` start with the source."""
    return (
        pl.concat(
            [
                lives.select(*keys, pl.col("first_line").alias("at"), pl.lit(1, pl.Int64).alias("delta")),
                lives.filter(pl.col("close_line").is_not_null()).select(*keys, pl.col("close_line").alias("at"), pl.lit(-1, pl.Int64).alias("delta")),
            ]
        )
        .sort(pl.col("at") * 2 + (pl.col("delta") > 0))  # ends first: C_Finalize ends many lives on one line
        .with_columns(pl.col("delta").cum_sum().over(keys).alias("level"))
    )


def still_logged_in(logins: pl.LazyFrame, lives: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """``logins`` (logins not followed by a C_Logout: ``keys``, ``line``, ``next_line`` = the
    line of the process's next login or logout, null if none) with ``ended_by_close``: before
    ``next_line`` the process's last open session ended (C_CloseSession of the last one,
    C_CloseAllSessions, C_Finalize), which ends the login (see the module docstring)."""
    emptied = open_levels(lives, keys).filter((pl.col("delta") < 0) & (pl.col("level") == 0)).select(*keys, "at").sort("at")
    return (
        logins.with_columns((pl.col("line") + 1).alias("_after"))
        .sort("_after")
        .join_asof(emptied, left_on="_after", right_on="at", by=keys, strategy="forward", check_sortedness=False)
        .with_columns((pl.col("at").is_not_null() & (pl.col("next_line").is_null() | (pl.col("at") < pl.col("next_line")))).alias("ended_by_close"))
        .drop("_after", "at")
    )


def processes(counts: pl.LazyFrame, lives: pl.LazyFrame, without_logout: pl.LazyFrame) -> pl.LazyFrame:
    """One row per traced process: sessions, peak concurrency, logins and logouts, finalization.

    ``counts``: the combined ``process_counts`` summary; ``lives``: ``session_lives(...)``;
    ``without_logout``: the logins of the pass (``Batch.logins``) whose next login or logout is
    not a C_Logout, one row each (``findings.logins_without_logout``).
    ``sessions_before_log``: sessions opened before the log starts.
    ``max_concurrent_sessions`` sweeps the sessions' first calls (+1) and ends (-1) in entry order.
    ``logins_without_logout``: successful logins followed neither by a successful C_Logout nor by
    the end of the process's last open session before its next successful login or its end;
    ``logins_ended_by_close``: those ended by that last close instead (the token ended them).
    ``logged_in_before_log``: the first successful C_Logout comes before any successful login.
    """
    per_session = lives.group_by(PROCESS_KEYS).agg(
        pl.len().cast(pl.Int64).alias("sessions"),
        (~pl.col("opened_in_log")).sum().cast(pl.Int64).alias("sessions_before_log"),
        pl.col("leaked").sum().cast(pl.Int64).alias("leaked_sessions"),
    )
    peak = open_levels(lives, PROCESS_KEYS).group_by(PROCESS_KEYS).agg(pl.col("level").max().cast(pl.Int64).alias("max_concurrent_sessions"))
    auth = still_logged_in(without_logout, lives, PROCESS_KEYS).group_by(PROCESS_KEYS).agg(
        (~pl.col("ended_by_close")).sum().cast(pl.Int64).alias("logins_without_logout"),
        pl.col("ended_by_close").sum().cast(pl.Int64).alias("logins_ended_by_close"),
    )
    out = (
        counts.join(per_session, on=PROCESS_KEYS, how="left", nulls_equal=True)
        .join(peak, on=PROCESS_KEYS, how="left", nulls_equal=True)
        .join(auth, on=PROCESS_KEYS, how="left", nulls_equal=True)
        .with_columns(
            pl.col(name).fill_null(0)
            for name in ("sessions", "sessions_before_log", "leaked_sessions", "max_concurrent_sessions", "logins_without_logout", "logins_ended_by_close")
        )
        .with_columns(
            (pl.col("first_logout_line").is_not_null() & ~(pl.col("first_login_line") < pl.col("first_logout_line")).fill_null(False))
            .alias("logged_in_before_log")
        )
    )
    return restore_pid(out).select(PROCESS_COLUMNS).sort(["source", "process", "pid"])
