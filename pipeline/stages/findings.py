"""Audit findings: one row per (code, source, subject), with where to look.

Why: a spy trace is itself a security artefact (it holds PINs, keys and plaintext in clear,
format notes §5) and a record of what the application did wrong (guessing PINs, leaking
sessions, weak mechanisms, exportable keys).  Each finding names the problem with a stable
kebab-case ``code``, a ``severity`` and a ``message`` built only from names, counts and line
numbers -- never a value -- and points at the first record (``source:line``).  Findings are
aggregated (``count`` records; ``lines`` holds the first 20 record lines) so that a trace
with a million logins gives one row, not a million.

Codes (severity):
  secret-pin-in-trace (high)        pPin/pOldPin/pNewPin dumped
  secret-key-material (high)        CKA_VALUE, CKA_PRIVATE_EXPONENT, ... dumped in a template
  plaintext-in-trace (medium)       encryption input / decryption output dumped
  wrapped-key-in-trace (medium)     pWrappedKey dumped
  operation-state-in-trace (medium) pOperationState dumped
  data-in-trace (low)               data being signed, verified or hashed dumped
  random-in-trace (low)             RandomData / pSeed dumped
  pin-failures-repeated (medium; high from 5) / pin-failure (low)  CKR_PIN_INCORRECT per source
  pin-locked (high)                 a call returned CKR_PIN_LOCKED
  pin-admin (info)                  C_InitToken / C_InitPIN / C_SetPIN calls
  session-leaked (medium)           sessions never closed (see sessions.parquet)
  session-closed-by-finalize (low)  sessions the application left open until C_Finalize
  login-without-logout (low)        successful logins never ended: no C_Logout, and a session still
                                    open (closing the last one ends a login)
  no-finalize (low)                 a process never called C_Finalize successfully
  weak-mechanism (per mechanism)    see mechanisms.weakness
  rsa-key-small (high < 1024 bits, medium < 2048)
  key-not-sensitive (medium; low when CKA_SENSITIVE is not in the template)
  key-extractable (medium)          private/secret key created with CKA_EXTRACTABLE=True
  incomplete-records (info)         records without Returned: (truncation, crash, kill)
  uncertain-records (info)          records whose thread attribution is a guess
  unreadable-call-records (medium)  lines shaped like spy output that could not be read: calls
                                    are missing from every figure (manifest coverage)
  other-text (info)                 input lines that are no spy output: application output,
                                    prose, debug lines (manifest coverage)

How: each batch of calls reduces to *hits* (``finding_hits``): per kind of finding and its keys
(source, process, function, subject, detail), the first line, the number of records and the
first 20 lines -- which combine across batches (least line, sum, least 20 of the union), so
the calls are never held.  The findings are then built from the hits, the sessions stage's
output and the per-process counts.  A login not followed by C_Logout is one hit of its own
(``detail``: the line of the process's next login or logout), because whether closing the
last session ended it is known only once the sessions are.
"""

from __future__ import annotations

import polars as pl

from pipeline.stages.common import CKR_PIN_INCORRECT, CKR_PIN_LOCKED, OK, PROCESS_KEYS, Batch, Reduction, int_key, line_kinds
from pipeline.stages.mechanisms import mechanism_uses, weakness_table
from pipeline.stages.sessions import still_logged_in

COLUMNS = ["severity", "code", "message", "source", "line", "count", "process", "subject", "lines"]
SCHEMA = {
    "severity": pl.String, "code": pl.String, "message": pl.String, "source": pl.String, "line": pl.Int64,
    "count": pl.Int64, "process": pl.Int32, "subject": pl.String, "lines": pl.List(pl.Int64),
}
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}
MAX_LINES = 20

SECRET_CODES = {  # secrets kind -> (code, severity, what)
    "pin": ("secret-pin-in-trace", "high", "PIN"),
    "key": ("secret-key-material", "high", "key material"),
    "plaintext": ("plaintext-in-trace", "medium", "plaintext"),
    "wrapped-key": ("wrapped-key-in-trace", "medium", "wrapped key"),
    "op-state": ("operation-state-in-trace", "medium", "operation state"),
    "data": ("data-in-trace", "low", "signed/verified/hashed data"),
    "random": ("random-in-trace", "low", "random bytes"),
    "seed": ("random-in-trace", "low", "RNG seed"),
}
KEY_CREATING = ("C_GenerateKey", "C_GenerateKeyPair", "C_CreateObject", "C_CopyObject", "C_UnwrapKey", "C_DeriveKey")


def _lines() -> pl.Expr:
    return pl.col("line").sort().head(MAX_LINES).alias("lines")


def _finish(frame: pl.LazyFrame, severity: pl.Expr | str, code: pl.Expr | str, message: pl.Expr, subject: pl.Expr | None = None, process: bool = False) -> pl.LazyFrame:
    return frame.select(
        (pl.lit(severity) if isinstance(severity, str) else severity).alias("severity"),
        (pl.lit(code) if isinstance(code, str) else code).alias("code"),
        message.alias("message"),
        "source",
        pl.col("line").cast(pl.Int64),
        pl.col("count").cast(pl.Int64),
        (pl.col("process") if process else pl.lit(None)).cast(pl.Int32).alias("process"),
        (subject if subject is not None else pl.lit(None)).cast(pl.String).alias("subject"),
        pl.col("lines").cast(pl.List(pl.Int64)),
    )


HIT_SCHEMA = {
    "kind": pl.String, "source": pl.String, "process": pl.Int32, "pid_k": pl.Int64, "func": pl.String,
    "subject": pl.String, "detail": pl.String,
}
HIT_KEYS = list(HIT_SCHEMA)
KEY_KINDS = {  # hit kind -> (code, severity, what the template said)
    "key-sensitive-false": ("key-not-sensitive", "medium", "with CKA_SENSITIVE=False: its value can be read out"),
    "key-sensitive-missing": ("key-not-sensitive", "low", "without CKA_SENSITIVE in the template: the token's default applies"),
    "key-extractable": ("key-extractable", "medium", "with CKA_EXTRACTABLE=True: it can be wrapped out of the token"),
}


def _merged() -> list[pl.Expr]:
    """Hits of one group into one: first line, records, first lines."""
    return [pl.col("line").min(), pl.col("count").sum(), pl.col("lines").explode().sort().head(MAX_LINES)]


def finding_hits() -> Reduction:
    """Per (kind, source, process, pid_k, func, subject, detail): first line, records, first lines."""
    return Reduction(
        partial=lambda batch: pl.concat(_hit_groups(batch)),
        combine=lambda hits: hits.group_by(HIT_KEYS).agg(_merged()),
    )


def _firsts(frame: pl.LazyFrame, **by: pl.Expr) -> pl.LazyFrame:
    """The records of ``frame`` grouped ``by``: first line, records, first lines.  Records come
    in line order (a batch is sorted by line), so a group's first lines need no sort."""
    return frame.group_by(**by).agg(pl.col("line").min(), pl.len().cast(pl.Int64).alias("count"), pl.col("line").head(MAX_LINES).alias("lines"))


_NO_KEYS = {name: pl.lit(None, dtype).alias(name) for name, dtype in HIT_SCHEMA.items()}  # built once


def _as_hits(grouped: pl.LazyFrame, source: str | None, kind: str | pl.Expr, **keys: pl.Expr) -> pl.LazyFrame:
    """Groups of one batch's records (``_firsts``) as hits of ``kind``: ``keys`` from the groups, the other keys null."""
    value = {"source": pl.lit(source, pl.String), "kind": pl.lit(kind, pl.String) if isinstance(kind, str) else kind} | keys
    return grouped.select(
        *(value[name].cast(dtype).alias(name) if name in value else _NO_KEYS[name] for name, dtype in HIT_SCHEMA.items()), "line", "count", "lines"
    )


def _hit(frame: pl.LazyFrame, source: str | None, kind: str | pl.Expr, **keys: pl.Expr) -> pl.LazyFrame:
    """The records of a finding ``kind`` in one batch (of ``source``) as hits per ``keys``.

    Each kind is grouped on its own keys before the hit columns are added, so the batch's
    records never become hit rows.  ``source`` is one value in a batch: a key only for the
    kinds without another one (``group_by`` needs one).
    """
    by = ({} if isinstance(kind, str) else {"kind": kind}) | keys or {"source": pl.col("source")}
    return _as_hits(_firsts(frame, **by), source, pl.col("kind") if "kind" in by else kind, **{name: pl.col(name) for name in keys})


def _hit_groups(batch: Batch) -> list[pl.LazyFrame]:
    calls = batch.calls.lazy()
    hit = lambda frame, kind, **keys: _hit(frame, batch.source, kind, **keys)  # noqa: E731
    process = {"process": pl.col("process"), "pid_k": pl.col("pid_k")}
    items = calls.filter(pl.col("secrets").is_not_null()).select("line", "func", pl.col("secrets").alias("item")).explode("item")
    secrets = (  # grouped per dumped item before the items are cut into kind and name
        _firsts(items, func=pl.col("func"), item=pl.col("item"))
        .with_columns(pl.col("item").str.split_exact(":", 1).struct.rename_fields(["secret", "name"]).alias("parts"))
        .unnest("parts")
        .filter(pl.col("secret").is_in(list(SECRET_CODES)))
    )
    uses = mechanism_uses(_firsts(calls.filter(pl.col("op_mechanism").is_not_null()), op_mechanism=pl.col("op_mechanism"), func=pl.col("func")))
    logins = batch.logins.lazy().filter(~pl.col("logged_out"))
    keys = _key_templates(calls).collect().lazy()  # used twice: computed once
    small = (
        calls.filter((pl.col("func") == "C_GenerateKeyPair") & OK & pl.col("flags").is_not_null())
        .with_columns(_MODULUS_BITS.alias("bits"))
        .filter(pl.col("bits") < 2048)
    )
    return [
        _as_hits(secrets, batch.source, "secret", func=pl.col("func"), subject=pl.col("name"), detail=pl.col("secret")),
        hit(calls.filter(pl.col("rv") == CKR_PIN_INCORRECT), "pin-failure", func=pl.col("func"), **process),
        hit(calls.filter(pl.col("rv") == CKR_PIN_LOCKED), "pin-locked", **process),
        hit(calls.filter(pl.col("func").is_in(["C_InitToken", "C_InitPIN", "C_SetPIN"])), "pin-admin",
            func=pl.col("func"), detail=pl.when(OK).then(pl.lit("ok"))),
        hit(logins, "login-without-logout", subject=pl.col("user_type"), detail=pl.col("next_line"), **process),
        _as_hits(uses, batch.source, "mechanism", subject=pl.col("mechanism"), detail=pl.col("family")),
        hit(keys.filter(_KEY_KIND.is_not_null()), _KEY_KIND, func=pl.col("func")),
        hit(keys.filter(has_flag("CKA_EXTRACTABLE=True")), "key-extractable", func=pl.col("func")),
        hit(small, "rsa-key-small", subject=pl.col("bits")),
        hit(calls.filter(~pl.col("complete")), "incomplete", func=pl.col("func")),
        hit(calls.filter(pl.col("uncertain")), "uncertain"),
    ]


def _of(hits: pl.LazyFrame, kind: str, *keys: str, **extra: pl.Expr) -> pl.LazyFrame:
    """The hits of ``kind`` merged per ``keys``, with ``extra`` aggregations."""
    return hits.filter(pl.col("kind") == kind).group_by(*keys).agg(*_merged(), **extra)


def logins_without_logout(hits: pl.LazyFrame) -> pl.LazyFrame:
    """The successful logins whose next login or logout is not a C_Logout, one row each:
    ``PROCESS_KEYS``, ``line``, ``next_line`` (that next one's line; null: none), ``user_type``."""
    return hits.filter(pl.col("kind") == "login-without-logout").select(
        *PROCESS_KEYS, "line", pl.col("detail").cast(pl.Int64).alias("next_line"), pl.col("subject").alias("user_type")
    )


def _funcs() -> pl.Expr:
    return pl.col("func").unique().sort()


def _secrets(hits: pl.LazyFrame) -> pl.LazyFrame:
    items = _of(hits, "secret", "source", "detail", "subject", funcs=_funcs().str.join(", "))
    code = pl.col("detail").replace_strict({k: v[0] for k, v in SECRET_CODES.items()})
    severity = pl.col("detail").replace_strict({k: v[1] for k, v in SECRET_CODES.items()})
    what = pl.col("detail").replace_strict({k: v[2] for k, v in SECRET_CODES.items()})
    message = pl.format(
        "{} in clear in the trace: {} dumped by {} in {} record(s), first at line {}; remove or sanitise the trace",
        what, "subject", "funcs", "count", "line",
    )
    return _finish(items, severity, code, message, subject=pl.col("subject"))


def _pin_failures(hits: pl.LazyFrame, threshold: int) -> pl.LazyFrame:
    """Wrong PINs per source: guessing need not stay in one process (a script may retry)."""
    fails = _of(
        hits, "pin-failure", "source",
        funcs=_funcs().str.join(", "),
        processes=pl.struct(PROCESS_KEYS[1:]).n_unique(),
        process_list=pl.col("process").unique(),
    ).with_columns(pl.when(pl.col("processes") == 1).then(pl.col("process_list").list.first()).alias("process"))
    repeated = pl.col("count") >= threshold
    severity = pl.when(pl.col("count") >= max(5, threshold)).then(pl.lit("high")).when(repeated).then(pl.lit("medium")).otherwise(pl.lit("low"))
    code = pl.when(repeated).then(pl.lit("pin-failures-repeated")).otherwise(pl.lit("pin-failure"))
    message = pl.format(
        "{} wrong PIN(s) (CKR_PIN_INCORRECT from {}) in {} process(es), first at line {}{}",
        "count", "funcs", "processes", "line",
        pl.when(repeated).then(pl.lit(": possible PIN guessing")).otherwise(pl.lit("")),
    )
    return _finish(fails, severity, code, message, process=True)


def _pin_locked(hits: pl.LazyFrame) -> pl.LazyFrame:
    locked = _of(hits, "pin-locked", *PROCESS_KEYS)
    message = pl.format("the PIN is locked: {} call(s) returned CKR_PIN_LOCKED in process {}, first at line {}", "count", "process", "line")
    return _finish(locked, "high", "pin-locked", message, process=True)


def _pin_admin(hits: pl.LazyFrame) -> pl.LazyFrame:
    admin = _of(hits, "pin-admin", "source", "func", ok=pl.col("count").filter(pl.col("detail") == "ok").sum())
    message = pl.format("PIN administration: {} called {} time(s) ({} successful), first at line {}", "func", "count", "ok", "line")
    return _finish(admin, "info", "pin-admin", message, subject=pl.col("func"))


def _per_process_sessions(sessions: pl.LazyFrame) -> pl.LazyFrame:
    """Sessions grouped per process: first line (the open, or the first call of a session
    opened before the log), count, first lines, and ``before``: a note on those opened before."""
    return (
        sessions.with_columns(pl.col("first_line").alias("line"))
        .group_by("source", "process", "pid")
        .agg(pl.col("line").min(), pl.len().cast(pl.Int64).alias("count"), _lines(), (~pl.col("opened_in_log")).sum().alias("unseen"))
        .with_columns(
            pl.when(pl.col("unseen") > 0).then(pl.format(" ({} opened before the log starts)", "unseen")).otherwise(pl.lit("")).alias("before")
        )
    )


def _leaked(sessions: pl.LazyFrame) -> pl.LazyFrame:
    leaked = _per_process_sessions(sessions.filter(pl.col("leaked")))
    message = pl.format(
        "{} session(s) of process {} (pid {}) never closed (no C_CloseSession, C_CloseAllSessions or C_Finalize){}, first seen at line {}",
        "count", "process", pl.col("pid").cast(pl.String).fill_null("?"), "before", "line",
    )
    return _finish(leaked, "medium", "session-leaked", message, process=True)


def _closed_by_finalize(sessions: pl.LazyFrame) -> pl.LazyFrame:
    """Sessions the application never closed itself: C_Finalize closed them (not a leak yet,
    but a long-running process that never finalizes would leak them)."""
    left = _per_process_sessions(sessions.filter(pl.col("ended_by") == "C_Finalize"))
    message = pl.format(
        "{} session(s) of process {} left open until C_Finalize closed them (no C_CloseSession){}, first seen at line {}",
        "count", "process", "before", "line",
    )
    return _finish(left, "low", "session-closed-by-finalize", message, process=True)


def _login_without_logout(hits: pl.LazyFrame, sessions: pl.LazyFrame) -> pl.LazyFrame:
    """Logins neither logged out nor ended by closing the process's last open session."""
    lives = sessions.with_columns(int_key("pid").alias("pid_k"))
    left = still_logged_in(logins_without_logout(hits), lives, PROCESS_KEYS).filter(~pl.col("ended_by_close"))
    auth = left.group_by(PROCESS_KEYS).agg(
        pl.col("line").min(), pl.len().cast(pl.Int64).alias("count"), _lines(), pl.col("user_type").drop_nulls().unique().sort().str.join(", ").alias("users")
    )
    message = pl.format(
        "{} successful login(s) ({}) in process {} never ended: no C_Logout, and a session was still open, first at line {}",
        "count", "users", "process", "line",
    )
    return _finish(auth, "low", "login-without-logout", message, process=True)


def _no_finalize(process_counts: pl.LazyFrame) -> pl.LazyFrame:
    per = process_counts.filter(~pl.col("finalized")).with_columns(
        pl.col("last_line").alias("line"), pl.lit(1, pl.Int64).alias("count"), pl.concat_list(pl.col("last_line")).alias("lines")
    )
    message = pl.format("process {} made {} call(s) and never called C_Finalize successfully; its last call is at line {}", "process", "calls", "line")
    return _finish(per, "low", "no-finalize", message, process=True)


def _weak(hits: pl.LazyFrame) -> pl.LazyFrame:
    per = _of(hits, "mechanism", "source", "subject", "detail").rename({"subject": "mechanism", "detail": "family"}).collect()
    table = weakness_table(per).filter(pl.col("weakness").is_not_null())
    weak = per.join(table, on=["mechanism", "family"], how="inner").lazy()
    message = pl.format("{} used for {} in {} call(s): {}; first at line {}", "mechanism", "family", "count", "weakness", "line")
    return _finish(weak, pl.col("weakness_severity"), "weak-mechanism", message, subject=pl.col("mechanism"))


PAIR_TEMPLATE = "pPrivateKeyTemplate."


def _first_flag(prefix: str) -> pl.Expr:
    """The value after ``prefix`` of the first flag that starts with it (null if none)."""
    return pl.col("flags").list.eval(pl.element().filter(pl.element().str.starts_with(prefix)).str.strip_prefix(prefix)).list.first()


def _key_templates(calls: pl.LazyFrame) -> pl.LazyFrame:
    """Successful key-creating calls of a private or secret key, with ``template``: the prefix of
    the flags of the template that describes that key (``pPrivateKeyTemplate.`` for a key pair,
    none for the others, whose flags of other templates (``pPublicKeyTemplate.``...) are never
    its plain ``CKA_`` names).  ``has_flag`` asks these flags without cutting the lists."""
    made = calls.filter(pl.col("func").is_in(KEY_CREATING) & OK & pl.col("flags").is_not_null())
    pair = pl.col("func") == "C_GenerateKeyPair"
    klass = pl.when(pair).then(_first_flag(PAIR_TEMPLATE + "CKA_CLASS=")).otherwise(_first_flag("CKA_CLASS="))
    implied = pl.col("func").replace_strict(
        {"C_GenerateKey": "CKO_SECRET_KEY", "C_GenerateKeyPair": "CKO_PRIVATE_KEY", "C_UnwrapKey": "CKO_SECRET_KEY", "C_DeriveKey": "CKO_SECRET_KEY"},
        default=None, return_dtype=pl.String,
    )
    return (
        made.select("source", "line", "func", "flags", pl.when(pair).then(pl.lit(PAIR_TEMPLATE)).otherwise(pl.lit("")).alias("template"))
        .with_columns(pl.coalesce(klass, implied).alias("class"))
        .filter(pl.col("class").is_in(["CKO_PRIVATE_KEY", "CKO_SECRET_KEY"]))
    )


def has_flag(text: str) -> pl.Expr:
    """The key's template (``_key_templates``) holds the flag ``text`` (e.g. ``CKA_SENSITIVE=True``)."""
    return pl.col("flags").list.contains(pl.col("template") + text)


# Built once (building expressions per batch costs Python time, under the GIL the pass shares).
_KEY_KIND = (
    pl.when(has_flag("CKA_SENSITIVE=False")).then(pl.lit("key-sensitive-false"))
    .when(~has_flag("CKA_SENSITIVE=True")).then(pl.lit("key-sensitive-missing"))
)
_MODULUS_BITS = _first_flag("pPublicKeyTemplate.CKA_MODULUS_BITS=").str.extract(r"(?:^|=)(\d+)$").cast(pl.Int64)  # r"=(\d+)$" of the whole flag


def _key_findings(hits: pl.LazyFrame) -> list[pl.LazyFrame]:
    out = []
    for kind, (code, severity, text) in KEY_KINDS.items():
        per = _of(hits, kind, "source", "func")
        message = pl.format("{} key(s) created by {} " + text + "; first at line {}", "count", "func", "line")
        out.append(_finish(per, severity, code, message, subject=pl.col("func")))
    small = _of(hits, "rsa-key-small", "source", "subject").with_columns(pl.col("subject").cast(pl.Int64).alias("bits"))
    severity = pl.when(pl.col("bits") < 1024).then(pl.lit("high")).otherwise(pl.lit("medium"))
    message = pl.format("{} RSA key pair(s) of {} bits generated (under 2048); first at line {}", "count", "bits", "line")
    out.append(_finish(small, severity, "rsa-key-small", message, subject=pl.format("{} bits", "bits")))
    return out


def _record_quality(hits: pl.LazyFrame) -> list[pl.LazyFrame]:
    incomplete = _of(hits, "incomplete", "source", funcs=_funcs().head(5).str.join(", "))
    msg_i = pl.format("{} record(s) without Returned: (truncated trace, crash or kill mid-call): {}; first at line {}", "count", "funcs", "line")
    uncertain = _of(hits, "uncertain", "source")
    msg_u = pl.format("{} record(s) whose thread attribution is uncertain (interleaved output); their latency is not estimated; first at line {}", "count", "line")
    return [_finish(incomplete, "info", "incomplete-records", msg_i), _finish(uncertain, "info", "uncertain-records", msg_u)]


_LINE_KIND_FINDINGS = (  # LineKinds field -> code, severity, what the lines are
    ("unreadable", "unreadable-call-records", "medium",
     "are shaped like spy output but could not be read: the calls in them are missing from every figure"),
    ("other", "other-text", "info", "are not spy output (application output, prose, debug lines)"),
)


def _line_kinds(inputs: list[dict] | None) -> pl.LazyFrame:
    """Per input, the lines no record took: unreadable call records, and other text."""
    rows = []
    for item in inputs or []:
        kinds = line_kinds(item.get("coverage"))
        for field, code, severity, what in _LINE_KIND_FINDINGS:
            count, spans = getattr(kinds, field), getattr(kinds, f"{field}_spans")
            if count and spans:
                lines = [int(s[0]) for s in spans[:MAX_LINES]]
                msg = f"{count} line(s) in {len(spans)} span(s) {what}; first at line {lines[0]}"
                rows.append((severity, code, msg, item["path"], lines[0], count, None, None, lines))
    return pl.LazyFrame(rows, schema=SCHEMA, orient="row")


def findings(
    hits: pl.LazyFrame,
    *,
    sessions: pl.LazyFrame,
    process_counts: pl.LazyFrame,
    inputs: list[dict] | None = None,
    pin_failure_threshold: int = 2,
) -> pl.LazyFrame:
    """All findings, most severe first.

    ``hits``: the combined ``finding_hits`` summary; ``sessions``: the sessions stage's output;
    ``process_counts``: the combined ``sessions.process_counts`` summary; ``inputs``:
    ``manifest.json``'s inputs (for the lines no record took); ``pin_failure_threshold``: wrong PINs
    per process from which ``pin-failures-repeated`` is reported.
    """
    parts = [
        _secrets(hits),
        _pin_failures(hits, pin_failure_threshold),
        _pin_locked(hits),
        _pin_admin(hits),
        _leaked(sessions),
        _closed_by_finalize(sessions),
        _login_without_logout(hits, sessions),
        _no_finalize(process_counts),
        _weak(hits),
        *_key_findings(hits),
        *_record_quality(hits),
        _line_kinds(inputs),
    ]
    parts = [p.select(COLUMNS) for p in parts]
    rank = pl.col("severity").replace_strict(SEVERITY_ORDER, return_dtype=pl.Int8)
    return pl.concat(parts, how="vertical").sort([rank, "code", "source", "line", "subject"], nulls_last=True)  # subject: ties at one line (pOldPin, pNewPin)
