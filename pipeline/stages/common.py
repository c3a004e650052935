"""Per-call facts every stage needs, derived once from ``calls.parquet``.

Why a shared step: latency, the error category, the operation family and the mechanism an
operation runs under are used by several stages; deriving them in one place keeps the stages
consistent (the latency in ``latency.parquet`` is the latency in ``mechanisms.parquet``) and
lets ``analyze`` compute them once.  ``derive`` is idempotent: a frame that already has the
derived columns is returned unchanged, so each stage can be called on raw calls as well.

Derived columns (all stages may rely on them):

``pid_k``, ``tid_k``  pid / tid as Int64 with null as -1 (join and group keys; older spies print
                      none; a value too large for Int64, which no real pid has, also counts as none)
``pos``               position of the call: calls sorted by (source, line) and numbered;
                      within one thread this is entry order (see ``derive``)
``category``          ``ok`` | ``benign`` | ``incomplete`` | ``error`` (see ``category_expr``)
``family``            operation family of the function (sign, verify, ...; null for others)
``op_mechanism``      the mechanism the call runs under: its own ``pMechanism``, or for the
                      later calls of an operation (C_Sign after C_SignInit) the mechanism of the
                      latest Init of the same family on the same session
``latency_ms``        ms from this call's entry to the next call entry of the same (source,
                      process, pid, tid): an upper bound of the call's duration, 1 ms
                      resolution; null for the last call of a thread, for records whose thread
                      attribution is uncertain, for incomplete records (no return was logged,
                      so the bound does not hold) and when the wall clock stepped back
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import polars as pl

CKR_OK = 0
CKR_ATTRIBUTE_SENSITIVE = 0x11
CKR_ATTRIBUTE_TYPE_INVALID = 0x12
CKR_PIN_INCORRECT = 0xA0
CKR_PIN_LOCKED = 0xA4
CKR_BUFFER_TOO_SMALL = 0x150

CATEGORIES = ("ok", "benign", "incomplete", "error")
CATEGORY = pl.Enum(CATEGORIES)
FAMILIES = ("sign", "verify", "encrypt", "decrypt", "digest", "keygen", "wrap", "unwrap", "derive", "other")

PROCESS_KEYS = ["source", "process", "pid_k"]

# Functions of each operation family.  Init starts an operation; the others continue it.
_FAMILY_FUNCS: dict[str, tuple[str, ...]] = {
    "sign": (
        "C_SignInit", "C_Sign", "C_SignUpdate", "C_SignFinal", "C_SignRecoverInit", "C_SignRecover",
        "C_MessageSignInit", "C_SignMessage", "C_SignMessageBegin", "C_SignMessageNext", "C_MessageSignFinal",
    ),
    "verify": (
        "C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal", "C_VerifyRecoverInit", "C_VerifyRecover",
        "C_MessageVerifyInit", "C_VerifyMessage", "C_VerifyMessageBegin", "C_VerifyMessageNext",
        "C_MessageVerifyFinal", "C_VerifySignatureInit", "C_VerifySignature", "C_VerifySignatureUpdate",
        "C_VerifySignatureFinal",
    ),
    "encrypt": (
        "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal", "C_MessageEncryptInit",
        "C_EncryptMessage", "C_EncryptMessageBegin", "C_EncryptMessageNext", "C_MessageEncryptFinal",
    ),
    "decrypt": (
        "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal", "C_MessageDecryptInit",
        "C_DecryptMessage", "C_DecryptMessageBegin", "C_DecryptMessageNext", "C_MessageDecryptFinal",
    ),
    "digest": ("C_DigestInit", "C_Digest", "C_DigestUpdate", "C_DigestKey", "C_DigestFinal"),
    "keygen": ("C_GenerateKey", "C_GenerateKeyPair"),
    "wrap": ("C_WrapKey", "C_WrapKeyAuthenticated"),
    "unwrap": ("C_UnwrapKey", "C_UnwrapKeyAuthenticated"),
    "derive": ("C_DeriveKey",),
}
FUNC_FAMILY: dict[str, str] = {f: fam for fam, funcs in _FAMILY_FUNCS.items() for f in funcs}

# The calls that start an operation whose later calls carry no mechanism of their own.
OP_INIT_FUNCS = frozenset(
    f for fam in ("sign", "verify", "encrypt", "decrypt", "digest") for f in _FAMILY_FUNCS[fam] if f.endswith("Init")
)
# Calls that continue an operation started by an Init (counted with it as one operation).
CONTINUATION_FUNCS = frozenset(
    f
    for fam in ("sign", "verify", "encrypt", "decrypt", "digest")
    for f in _FAMILY_FUNCS[fam]
    if not f.endswith("Init")
) | {"C_FindObjects", "C_FindObjectsFinal"}

# Functions whose own pMechanism is the operation's mechanism (others' are ignored: a
# mechanism line on, say, C_CloseSession can only be another thread's, misattributed).
MECHANISM_FUNCS = frozenset(
    f for f in FUNC_FAMILY if f.endswith("Init") or FUNC_FAMILY[f] in ("keygen", "wrap", "unwrap", "derive")
) | {"C_EncapsulateKey", "C_DecapsulateKey", "C_MessageEncryptInit", "C_MessageDecryptInit"}

OK = pl.col("rv") == CKR_OK
LOGIN = pl.col("func").is_in(["C_Login", "C_LoginUser"])


@cache  # built once: expressions are immutable, and building them per batch costs Python time
def category_expr() -> pl.Expr:
    """``incomplete``: no ``Returned:`` line; ``ok``: CKR_OK; ``benign``: the size query
    (CKR_BUFFER_TOO_SMALL) and C_GetAttributeValue probing (CKR_ATTRIBUTE_SENSITIVE,
    CKR_ATTRIBUTE_TYPE_INVALID), which applications do on purpose; ``error``: the rest.
    An ``Enum(CATEGORIES)`` built from enum literals (casting strings would cost 5x more)."""
    rv = pl.col("rv")
    value = lambda name: pl.lit(name, CATEGORY)  # noqa: E731
    return (
        pl.when(~pl.col("complete") | rv.is_null())
        .then(value("incomplete"))
        .when(rv == CKR_OK)
        .then(value("ok"))
        .when(rv == CKR_BUFFER_TOO_SMALL)
        .then(value("benign"))
        .when((pl.col("func") == "C_GetAttributeValue") & rv.is_in([CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID]))
        .then(value("benign"))
        .otherwise(value("error"))
    )


@cache
def family_expr() -> pl.Expr:
    return pl.col("func").replace_strict(FUNC_FAMILY, default=None, return_dtype=pl.String)




# The calls columns the stages read (the others -- attributes, created, lengths, object handle --
# are left behind, which keeps each batch narrow).
STAGE_COLUMNS = (
    "source", "process", "pid", "tid", "line", "ts", "func", "rv", "rv_name", "complete", "slot",
    "session", "mechanism", "user_type", "uncertain", "secrets", "flags",
)
# Calls per batch: the unit of memory.  Up to three batches are alive at once (one read ahead,
# one derived, one reduced); 96 k keeps that about as large as one 131 k batch alone was, and
# is no slower (measured at 3 M calls: 6.4 s / 391 MiB against 6.6 s / 426 MiB for 131 k).
BATCH_ROWS = 98_304
COMPACT_EVERY = 8  # partial summaries held per reduction before they are combined into one

# Per-batch state keys.  A batch and what it carries are of one source (see ``derive_batches``),
# so ``source`` is no key here; the reductions put it back as ``Batch.source``.
_THREAD = ["process", "pid_k", "tid_k"]
_PROCESS = ["process", "pid_k"]
_HANDLE = ["process", "pid_k", "session"]
_OPERATION = ["process", "pid_k", "session", "family"]
_LATENCY_COLUMNS = [*_THREAD, "pos", "line", "ts", "uncertain", "complete", "func", "op_mechanism", "category"]
_AUTH_COLUMNS = ["source", *_PROCESS, "pos", "line", "func", "user_type"]


def int_key(name: str) -> pl.Expr:
    """A nullable integer column as an Int64 group/join key with null as -1.

    Why a cast: calls.parquet holds handles, slots, pids and tids as uint64 (older tables:
    int64); keys need one type and a value for "none" (older spies print no pid).  A uint64
    beyond Int64 (no real pid, tid or slot id) becomes "none" rather than an error."""
    return pl.col(name).cast(pl.Int64, strict=False).fill_null(-1)


@dataclass(frozen=True)
class Batch:
    """One step of the pass over the calls (see ``derive_batches``).

    ``calls``: the batch's calls in entry order with every derived column but ``latency_ms``.
    ``latency``: the calls whose latency became known in this step (``func``, ``op_mechanism``,
    ``category``, ``ts``, ``pos``, ``line``, ``latency_ms``, ``next_line``: the header line of
    the call entry the latency runs to, which bounds the call's window in the log): the batch's
    calls minus the last of each thread, plus the last ones of earlier batches whose next
    entry this batch holds.
    ``logins``: likewise the successful logins whose next login or logout became known, with
    ``logged_out`` (the next one is a successful C_Logout) and ``next_line`` (its line; null
    when there is none) -- ``source``, ``process``, ``pid_k``, ``line``, ``user_type``, ``pos``.
    ``source``: the source of all those rows (None for the empty batch of an empty table).
    """

    source: str | None
    calls: pl.DataFrame
    latency: pl.DataFrame
    logins: pl.DataFrame


@dataclass(frozen=True)
class LineKinds:
    """The input lines no record or banner took, by kind (a manifest ``coverage`` section).

    ``unreadable``: shaped like spy output (a header, a ``Returned:``, ``[in]``/``[out]``, ...)
    but not read into any record: calls are missing.  ``other``: application output, prose,
    debug lines: not spy output at all.  Spans are [first, last] line ranges (per input only).
    """

    unreadable: int
    other: int
    unreadable_spans: list
    other_spans: list


def line_kinds(coverage: dict | None) -> LineKinds:
    """``LineKinds`` of a manifest ``coverage`` dict.  A manifest written before the parser told
    the two kinds apart has only ``unparsed_lines``/``unparsed_spans``; it filed every such line
    as application output, so they count as ``other`` here too."""
    cov = coverage or {}
    if "unreadable_lines" in cov or "other_lines" in cov:
        return LineKinds(
            int(cov.get("unreadable_lines") or 0), int(cov.get("other_lines") or 0),
            list(cov.get("unreadable_spans") or []), list(cov.get("other_spans") or []),
        )
    return LineKinds(0, int(cov.get("unparsed_lines") or 0), [], list(cov.get("unparsed_spans") or []))


def derive_batches(calls: pl.LazyFrame, batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """The calls in entry order, in batches of ``batch_rows``, with the derived columns.

    Why batches: the per-call facts that look across calls (latency = the next entry of the
    same thread, the operation mechanism = the latest Init on the same session, the session
    life) only ever look at the same thread, session or process, so a pass in entry order
    that carries one small row per thread, session and process from batch to batch computes
    them exactly, in memory bounded by the batch and the number of threads and sessions --
    not by the number of calls.  Latency and the login/logout pairing need the *next* call,
    so the last call of each thread (and the last login of each process) is held back until
    a later batch (or the end) supplies it: those rows come out in ``Batch.latency`` /
    ``Batch.logins`` one or more batches later, never in ``Batch.calls`` out of order.

    Order: calls are taken in (source, line) order.  Within one thread of one process that is
    entry order (a thread's next header follows its previous ``Returned:``), and it is the
    order in which the spy flushed a process's records.  (The spy's counter ``seq`` would do
    as well within a process, but line numbers are unique in a source and need no tie-break.)
    The parser writes nearly in that order, but not quite (an unfinished record of one
    process can be written a hundred thousand rows late), so a batch is not a slice of rows
    but a range of lines of one source (``line_ranges``), read with a filter and sorted: exact
    whatever the row order, and bounded.  At least one batch is yielded, so that every
    summary has its columns even for an empty table.
    """
    schema = calls.collect_schema()
    frame = calls.select(
        *(pl.col(name) for name in STAGE_COLUMNS if name in schema),
        *([] if "flags" in schema else [pl.lit(None, pl.List(pl.String)).alias("flags")]),
    )
    ranges = line_ranges(frame, batch_rows).iter_rows()
    state, offset, chunk = _Carry(), 0, next(ranges, None)
    # The next batch is read on a reader thread while this one is derived (one batch ahead).
    with ThreadPoolExecutor(max_workers=1) as reader:
        reading = reader.submit(_read, frame, chunk)
        while True:
            batch = reading.result()
            source, chunk = chunk and chunk[0], next(ranges, None)
            if chunk is not None:
                reading = reader.submit(_read, frame, chunk)
            # A source's batches are consecutive: after its last one, what is carried is final.
            yield state.step(batch, source, offset, last=chunk is None or chunk[0] != source)
            offset += batch.height
            if chunk is None:
                return


def _read(frame: pl.LazyFrame, chunk: tuple[str, int, int] | None) -> pl.DataFrame:
    """The calls of one line range (``source``, ``lo``, ``hi``) in line order; none for ``None``."""
    if chunk is None:
        return frame.head(0).collect()
    batch = frame.filter((pl.col("source") == chunk[0]) & pl.col("line").is_between(chunk[1], chunk[2], closed="left")).collect()
    return batch if batch["line"].is_sorted() else batch.sort("line")


LINE_BLOCK = 4096  # lines per block of the row census that cuts the batches


def line_ranges(frame: pl.LazyFrame, batch_rows: int) -> pl.DataFrame:
    """``source``, ``lo``, ``hi``: line ranges ``[lo, hi)`` of about ``batch_rows`` calls each
    (more when one block of ``LINE_BLOCK`` lines holds more), from one streaming count of the
    calls per block of lines."""
    return (
        frame.group_by("source", (pl.col("line") // LINE_BLOCK).alias("block"))
        .agg(pl.len().alias("n"))
        .collect(engine="streaming")
        .sort("source", "block")
        .with_columns(((pl.col("n").cum_sum() - pl.col("n")).over("source") // batch_rows).alias("part"))
        .group_by("source", "part", maintain_order=True)
        .agg((pl.col("block").min() * LINE_BLOCK).alias("lo"), ((pl.col("block").max() + 1) * LINE_BLOCK).alias("hi"))
        .select("source", "lo", "hi")
    )


class _Carry:
    """What one batch hands the next: per session handle its number of opens, per
    (session, family) the latest Init mechanism, the calls still waiting for their thread's
    next entry and the logins still waiting for their process's next login or logout.

    The opens and Inits are carried as rows that stand, in front of the next batch, for the
    earlier ones: a running count or a forward fill over the carried rows followed by the batch
    continues where the last batch stopped (one narrow window operation, no join).
    """

    def __init__(self) -> None:
        # Typed by the first batch (handles are uint64, or int64 in older calls tables).
        self.opens: pl.DataFrame | None = None
        self.inits: pl.DataFrame | None = None
        self.waiting: pl.DataFrame | None = None  # latency candidates
        self.logins: pl.DataFrame | None = None

    def step(self, raw: pl.DataFrame, source: str | None, offset: int, last: bool) -> Batch:
        """Derive one batch of ``source`` (``offset``: its first ``pos``; ``last``: the last batch of its source)."""
        frame = raw.with_columns(
            pl.lit(source, pl.String).alias("source"),  # one value: held once, not per row
            pl.col("func").cast(pl.Categorical),  # cheap group keys; ``strings`` undoes it
            int_key("pid").alias("pid_k"),
            int_key("tid").alias("tid_k"),
            (pl.int_range(pl.len(), dtype=pl.Int64) + offset).alias("pos"),
            category_expr().alias("category"),
            family_expr().alias("family"),
        ).drop("pid", "tid")
        # The session life: opens of the handle so far, the carried count included.
        is_open = ((pl.col("func") == "C_OpenSession") & OK).cast(pl.UInt32).alias("_open")
        opens = frame.select(*_HANDLE, is_open)
        life = _continued(self.opens, opens, _HANDLE, pl.col("_open").cum_sum())
        # The mechanism of an operation's later calls: the latest Init of that family on that session.
        inits = frame.select(*_OPERATION, pl.when(pl.col("func").is_in(list(OP_INIT_FUNCS))).then(pl.col("mechanism")).alias("_init"))
        latest_init = _continued(self.inits, inits, _OPERATION, pl.col("_init").forward_fill())
        frame = frame.with_columns(
            pl.when(pl.col("session").is_not_null()).then(life).alias("life"),
            pl.when(pl.col("func").is_in(list(MECHANISM_FUNCS)))
            .then(pl.col("mechanism"))
            .when(pl.col("func").is_in(list(CONTINUATION_FUNCS)) & pl.col("session").is_not_null())
            .then(latest_init)
            .alias("op_mechanism"),
        )
        if last:  # the end of a source: nothing is carried into the next one
            self.opens = self.inits = None
        else:  # only an open changes a handle's count, only an Init an operation's mechanism
            opened = opens.with_columns(life.alias("_life")).filter((pl.col("_open") == 1) & pl.col("session").is_not_null())
            self.opens = _latest(self.opens, opened.select(*_HANDLE, pl.col("_life").alias("_open")), _HANDLE)
            self.inits = _latest(self.inits, inits.filter(pl.col("_init").is_not_null()), _OPERATION)
        # A call's latency runs to the next stamped entry of its thread (a null stamp is skipped).
        stamped_line = pl.when(pl.col("ts").is_not_null()).then(pl.col("line"))
        latency, self.waiting = _next_known(
            self.waiting, frame.select(_LATENCY_COLUMNS), _THREAD,
            {"_next": pl.col("ts").shift(-1).backward_fill(), "next_line": stamped_line.shift(-1).backward_fill()}, last,
        )
        auth = frame.filter((LOGIN | (pl.col("func") == "C_Logout")) & OK).select(_AUTH_COLUMNS)
        logins, self.logins = _next_known(
            self.logins, auth, _PROCESS, {"_next": pl.col("func").shift(-1), "next_line": pl.col("line").shift(-1)}, last, keep=LOGIN
        )
        gap = (pl.col("_next") - pl.col("ts")).dt.total_milliseconds()
        return Batch(
            source=source,
            calls=frame,
            latency=latency.select(
                "func", "op_mechanism", "category", "ts", "pos", "line", "next_line",
                pl.when(pl.col("uncertain") | ~pl.col("complete") | (gap < 0)).then(None).otherwise(gap).cast(pl.Int64).alias("latency_ms"),
            ),
            logins=logins.filter(LOGIN).select(
                "source", "process", "pid_k", "line", "user_type", "pos", "next_line",
                (pl.col("_next") == "C_Logout").fill_null(False).alias("logged_out"),
            ),
        )


def _continued(carried: pl.DataFrame | None, rows: pl.DataFrame, keys: list[str], expr: pl.Expr) -> pl.Series:
    """``expr`` over ``keys`` on the carried rows followed by ``rows``: its values for ``rows``."""
    if carried is None or carried.is_empty():  # the first batch of a source
        return rows.select(expr.over(keys)).to_series()
    return pl.concat([carried, rows]).select(expr.over(keys)).to_series().slice(carried.height)


def _latest(carried: pl.DataFrame | None, seen: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """The carried per-key values updated with the last value of each key in this batch."""
    rows = seen if carried is None else pl.concat([carried, seen])
    return rows.unique(subset=keys, keep="last", maintain_order=False)


def _next_known(
    waiting: pl.DataFrame | None, rows: pl.DataFrame, keys: list[str], following: dict[str, pl.Expr], last: bool,
    keep: pl.Expr | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Rows (waiting ones first, all in entry order) with the ``following`` columns computed
    within their key (``_next`` among them): (rows whose ``_next`` is known, or all rows in the
    last batch; rows still waiting).

    A row waits while ``_next`` is null and it is still of interest (``keep``): the next row of
    its key is in a later batch, or there is none and the end of the calls will say so.
    """
    rows = (rows if waiting is None else pl.concat([waiting, rows])).with_columns(
        expr.over(keys).alias(name) for name, expr in following.items()
    )
    if last:
        return rows, None
    wait = pl.col("_next").is_null()
    return rows.filter(~wait), rows.filter(wait if keep is None else wait & keep).drop(*following)


def derive(calls: pl.LazyFrame, batch_rows: int = BATCH_ROWS) -> pl.LazyFrame:
    """Every call with its derived columns (``latency_ms`` included), in entry order.

    Holds all calls in memory: for tests and small tables; ``analyze`` reduces the batches
    of ``derive_batches`` instead.
    """
    batches = list(derive_batches(calls, batch_rows))
    latency = pl.concat([b.latency.select("pos", "latency_ms") for b in batches])
    return strings(pl.concat([b.calls for b in batches]).join(latency, on="pos", how="left", maintain_order="left")).lazy()


def strings(frame: pl.DataFrame) -> pl.DataFrame:
    """Categorical and enum columns (the batches' cheap keys) back to the plain strings of the outputs."""
    return frame.with_columns(pl.col(pl.Categorical, pl.Enum).cast(pl.String))


@dataclass(frozen=True)
class Reduction:
    """A summary of the calls built batch by batch.

    ``partial`` summarises one batch; ``combine`` turns summaries, concatenated in batch
    order, into one summary with the same columns (so it can be applied again, which keeps
    at most ``COMPACT_EVERY`` summaries in memory).  Both are pure LazyFrame functions.
    """

    partial: Callable[[Batch], pl.LazyFrame]
    combine: Callable[[pl.LazyFrame], pl.LazyFrame]


def reduce_calls(calls: pl.LazyFrame, reductions: dict[str, Reduction], batch_rows: int = BATCH_ROWS) -> dict[str, pl.DataFrame]:
    """Run every reduction over the batches of ``derive_batches``: name -> combined summary."""
    held: dict[str, list[pl.DataFrame]] = {name: [] for name in reductions}

    def combined(name: str) -> pl.DataFrame:
        return reductions[name].combine(pl.concat(held[name]).lazy()).collect()

    def keep(parts: list[pl.DataFrame]) -> None:
        for name, part in zip(reductions, parts):
            held[name].append(part)
            if len(held[name]) >= COMPACT_EVERY:
                held[name] = [combined(name)]

    # A batch is reduced on a worker thread while the next one is derived (polars releases the
    # GIL, so the two overlap on two cores); one batch in flight keeps memory bounded.
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = None
        for batch in derive_batches(calls, batch_rows):
            following = worker.submit(lambda b: pl.collect_all([r.partial(b) for r in reductions.values()]), batch)
            if pending is not None:
                keep(pending.result())
            pending = following
        keep(pending.result())
    return {name: strings(combined(name)) for name in reductions}


def by_source(batch: Batch, frame: pl.LazyFrame, keys: list[str], *aggs: pl.Expr) -> pl.LazyFrame:
    """``frame`` (rows of ``batch``) grouped by ``keys``, which start with ``source``: a batch has
    one source, so it is no key of the grouping (cheaper) and comes back as a value."""
    return frame.group_by(keys[1:]).agg(*aggs).select(pl.lit(batch.source, pl.String).alias("source"), pl.all())


def restore_pid(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Put the real (nullable) ``pid`` back in place of the key ``pid_k``."""
    return frame.with_columns(
        pl.when(pl.col("pid_k") == -1).then(None).otherwise(pl.col("pid_k")).cast(pl.UInt64).alias("pid")
    ).drop("pid_k")
