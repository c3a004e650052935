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
  login-without-logout (low)        successful logins never followed by C_Logout
  no-finalize (low)                 a process never called C_Finalize successfully
  weak-mechanism (per mechanism)    see mechanisms.weakness
  rsa-key-small (high < 1024 bits, medium < 2048)
  key-not-sensitive (medium; low when CKA_SENSITIVE is not in the template)
  key-extractable (medium)          private/secret key created with CKA_EXTRACTABLE=True
  incomplete-records (info)         records without Returned: (truncation, crash, kill)
  uncertain-records (info)          records whose thread attribution is a guess
  unparsed-lines (info)             input lines that are no spy output (manifest coverage)
"""

from __future__ import annotations

import polars as pl

from pipeline.stages.common import CKR_OK, CKR_PIN_INCORRECT, CKR_PIN_LOCKED, PROCESS_KEYS, derive
from pipeline.stages.mechanisms import mechanism_uses, weakness_table
from pipeline.stages.sessions import sessions as sessions_stage

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


def _first() -> list[pl.Expr]:
    return [pl.col("line").min().alias("line"), pl.len().cast(pl.Int64).alias("count"), _lines()]


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


def _secrets(calls: pl.LazyFrame) -> pl.LazyFrame:
    items = (
        calls.filter(pl.col("secrets").is_not_null())
        .select("source", "line", "func", pl.col("secrets").alias("item"))
        .explode("item")
        .filter(pl.col("item").is_not_null())
        .with_columns(
            pl.col("item").str.split_exact(":", 1).struct.rename_fields(["kind", "name"]).alias("parts")
        )
        .unnest("parts")
        .filter(pl.col("kind").is_in(list(SECRET_CODES)))
        .group_by("source", "kind", "name")
        .agg(*_first(), pl.col("func").unique().sort().str.join(", ").alias("funcs"))
    )
    code = pl.col("kind").replace_strict({k: v[0] for k, v in SECRET_CODES.items()})
    severity = pl.col("kind").replace_strict({k: v[1] for k, v in SECRET_CODES.items()})
    what = pl.col("kind").replace_strict({k: v[2] for k, v in SECRET_CODES.items()})
    message = pl.format(
        "{} in clear in the trace: {} dumped by {} in {} record(s), first at line {}; remove or sanitise the trace",
        what, "name", "funcs", "count", "line",
    )
    return _finish(items, severity, code, message, subject=pl.col("name"))


def _pin_failures(calls: pl.LazyFrame, threshold: int) -> pl.LazyFrame:
    """Wrong PINs per source: guessing need not stay in one process (a script may retry)."""
    fails = (
        calls.filter(pl.col("rv") == CKR_PIN_INCORRECT)
        .group_by("source")
        .agg(
            *_first(),
            pl.col("func").unique().sort().str.join(", ").alias("funcs"),
            pl.struct(PROCESS_KEYS[1:]).n_unique().alias("processes"),
            pl.col("process").unique().alias("process_list"),
        )
        .with_columns(pl.when(pl.col("processes") == 1).then(pl.col("process_list").list.first()).alias("process"))
    )
    repeated = pl.col("count") >= threshold
    severity = pl.when(pl.col("count") >= max(5, threshold)).then(pl.lit("high")).when(repeated).then(pl.lit("medium")).otherwise(pl.lit("low"))
    code = pl.when(repeated).then(pl.lit("pin-failures-repeated")).otherwise(pl.lit("pin-failure"))
    message = pl.format(
        "{} wrong PIN(s) (CKR_PIN_INCORRECT from {}) in {} process(es), first at line {}{}",
        "count", "funcs", "processes", "line",
        pl.when(repeated).then(pl.lit(": possible PIN guessing")).otherwise(pl.lit("")),
    )
    return _finish(fails, severity, code, message, process=True)


def _pin_locked(calls: pl.LazyFrame) -> pl.LazyFrame:
    locked = calls.filter(pl.col("rv") == CKR_PIN_LOCKED).group_by(*PROCESS_KEYS).agg(*_first())
    message = pl.format("the PIN is locked: {} call(s) returned CKR_PIN_LOCKED in process {}, first at line {}", "count", "process", "line")
    return _finish(locked, "high", "pin-locked", message, process=True)


def _pin_admin(calls: pl.LazyFrame) -> pl.LazyFrame:
    admin = (
        calls.filter(pl.col("func").is_in(["C_InitToken", "C_InitPIN", "C_SetPIN"]))
        .group_by("source", "func")
        .agg(*_first(), (pl.col("rv") == CKR_OK).sum().alias("ok"))
    )
    message = pl.format("PIN administration: {} called {} time(s) ({} successful), first at line {}", "func", "count", "ok", "line")
    return _finish(admin, "info", "pin-admin", message, subject=pl.col("func"))


def _leaked(sessions: pl.LazyFrame) -> pl.LazyFrame:
    leaked = (
        sessions.filter(pl.col("leaked"))
        .with_columns(pl.col("open_line").alias("line"))
        .group_by("source", "process", "pid")
        .agg(pl.col("line").min(), pl.len().cast(pl.Int64).alias("count"), _lines(), pl.col("line").is_null().sum().alias("unseen"))
    )
    message = pl.format(
        "{} session(s) of process {} (pid {}) never closed (no C_CloseSession, C_CloseAllSessions or C_Finalize), first opened at line {}",
        "count", "process", pl.col("pid").cast(pl.String).fill_null("?"), pl.col("line").cast(pl.String).fill_null("? (before the trace)"),
    )
    return _finish(leaked, "medium", "session-leaked", message, process=True)


def _closed_by_finalize(sessions: pl.LazyFrame) -> pl.LazyFrame:
    """Sessions the application never closed itself: C_Finalize closed them (not a leak yet,
    but a long-running process that never finalizes would leak them)."""
    left = (
        sessions.filter(pl.col("ended_by") == "C_Finalize")
        .with_columns(pl.col("open_line").alias("line"))
        .group_by("source", "process", "pid")
        .agg(pl.col("line").min(), pl.len().cast(pl.Int64).alias("count"), _lines())
    )
    message = pl.format(
        "{} session(s) of process {} left open until C_Finalize closed them (no C_CloseSession), first opened at line {}",
        "count", "process", pl.col("line").cast(pl.String).fill_null("? (before the trace)"),
    )
    return _finish(left, "low", "session-closed-by-finalize", message, process=True)


def _login_without_logout(calls: pl.LazyFrame) -> pl.LazyFrame:
    login = pl.col("func").is_in(["C_Login", "C_LoginUser"])
    auth = (
        calls.filter((login | (pl.col("func") == "C_Logout")) & (pl.col("rv") == CKR_OK))
        .select(*PROCESS_KEYS, "pos", "func", "line", "user_type")
        .sort("pos")
        .with_columns(pl.col("func").shift(-1).over(PROCESS_KEYS).alias("next_func"))
        .filter(login & (pl.col("next_func").is_null() | (pl.col("next_func") != "C_Logout")))
        .group_by(*PROCESS_KEYS)
        .agg(*_first(), pl.col("user_type").drop_nulls().unique().sort().str.join(", ").alias("users"))
    )
    message = pl.format("{} successful login(s) ({}) in process {} never followed by C_Logout, first at line {}", "count", "users", "process", "line")
    return _finish(auth, "low", "login-without-logout", message, process=True)


def _no_finalize(calls: pl.LazyFrame) -> pl.LazyFrame:
    per = (
        calls.group_by(*PROCESS_KEYS)
        .agg(
            ((pl.col("func") == "C_Finalize") & (pl.col("rv") == CKR_OK)).any().alias("finalized"),
            pl.col("line").max().alias("line"),
            pl.len().cast(pl.Int64).alias("calls"),
        )
        .filter(~pl.col("finalized"))
        .with_columns(pl.lit(1, pl.Int64).alias("count"), pl.concat_list(pl.col("line")).alias("lines"))
    )
    message = pl.format("process {} made {} call(s) and never called C_Finalize successfully; its last call is at line {}", "process", "calls", "line")
    return _finish(per, "low", "no-finalize", message, process=True)


def _weak(calls: pl.LazyFrame) -> pl.LazyFrame:
    uses = mechanism_uses(calls).filter(pl.col("func").is_in(["C_GetMechanismInfo"]).not_())
    per = uses.group_by("source", "mechanism", "family").agg(*_first()).collect()
    table = weakness_table(per).filter(pl.col("weakness").is_not_null())
    weak = per.join(table, on=["mechanism", "family"], how="inner").lazy()
    message = pl.format("{} used for {} in {} call(s): {}; first at line {}", "mechanism", "family", "count", "weakness", "line")
    return _finish(weak, pl.col("weakness_severity"), "weak-mechanism", message, subject=pl.col("mechanism"))


def _key_templates(calls: pl.LazyFrame) -> pl.LazyFrame:
    """Successful key-creating calls, with the flags of the template that describes the private/secret key."""
    made = calls.filter(pl.col("func").is_in(KEY_CREATING) & (pl.col("rv") == CKR_OK) & pl.col("flags").is_not_null())
    pair = pl.col("flags").list.eval(
        pl.element().filter(pl.element().str.starts_with("pPrivateKeyTemplate.")).str.strip_prefix("pPrivateKeyTemplate.")
    )
    plain = pl.col("flags").list.eval(pl.element().filter(~pl.element().str.contains(r"^\w+Template\.")))
    key = pl.when(pl.col("func") == "C_GenerateKeyPair").then(pair).otherwise(plain)
    klass = (
        pl.col("key").list.eval(pl.element().filter(pl.element().str.starts_with("CKA_CLASS=")).str.strip_prefix("CKA_CLASS=")).list.first()
    )
    implied = pl.col("func").replace_strict(
        {"C_GenerateKey": "CKO_SECRET_KEY", "C_GenerateKeyPair": "CKO_PRIVATE_KEY", "C_UnwrapKey": "CKO_SECRET_KEY", "C_DeriveKey": "CKO_SECRET_KEY"},
        default=None, return_dtype=pl.String,
    )
    return (
        made.select("source", "line", "func", key.alias("key"))
        .with_columns(pl.coalesce(klass, implied).alias("class"))
        .filter(pl.col("class").is_in(["CKO_PRIVATE_KEY", "CKO_SECRET_KEY"]))
    )


def _key_findings(calls: pl.LazyFrame) -> list[pl.LazyFrame]:
    calls = calls.filter(pl.col("func").is_in(KEY_CREATING))
    keys = _key_templates(calls)
    has = lambda text: pl.col("key").list.contains(text)  # noqa: E731
    out = []
    for code, cond, severity, text in (
        ("key-not-sensitive", has("CKA_SENSITIVE=False"), "medium", "with CKA_SENSITIVE=False: its value can be read out"),
        (
            "key-not-sensitive",
            ~has("CKA_SENSITIVE=False") & ~has("CKA_SENSITIVE=True"),
            "low",
            "without CKA_SENSITIVE in the template: the token's default applies",
        ),
        ("key-extractable", has("CKA_EXTRACTABLE=True"), "medium", "with CKA_EXTRACTABLE=True: it can be wrapped out of the token"),
    ):
        per = keys.filter(cond).group_by("source", "func").agg(*_first())
        message = pl.format("{} key(s) created by {} " + text + "; first at line {}", "count", "func", "line")
        out.append(_finish(per, severity, code, message, subject=pl.col("func")))
    bits = pl.col("flags").list.eval(
        pl.element().filter(pl.element().str.starts_with("pPublicKeyTemplate.CKA_MODULUS_BITS=")).str.extract(r"=(\d+)$").cast(pl.Int64)
    ).list.first()
    small = (
        calls.filter((pl.col("func") == "C_GenerateKeyPair") & (pl.col("rv") == CKR_OK) & pl.col("flags").is_not_null())
        .with_columns(bits.alias("bits"))
        .filter(pl.col("bits") < 2048)
        .group_by("source", "bits")
        .agg(*_first())
    )
    severity = pl.when(pl.col("bits") < 1024).then(pl.lit("high")).otherwise(pl.lit("medium"))
    message = pl.format("{} RSA key pair(s) of {} bits generated (under 2048); first at line {}", "count", "bits", "line")
    out.append(_finish(small, severity, "rsa-key-small", message, subject=pl.format("{} bits", "bits")))
    return out


def _record_quality(calls: pl.LazyFrame) -> list[pl.LazyFrame]:
    incomplete = calls.filter(~pl.col("complete")).group_by("source").agg(*_first(), pl.col("func").unique().sort().head(5).str.join(", ").alias("funcs"))
    msg_i = pl.format("{} record(s) without Returned: (truncated trace, crash or kill mid-call): {}; first at line {}", "count", "funcs", "line")
    uncertain = calls.filter(pl.col("uncertain")).group_by("source").agg(*_first())
    msg_u = pl.format("{} record(s) whose thread attribution is uncertain (interleaved output); their latency is not estimated; first at line {}", "count", "line")
    return [_finish(incomplete, "info", "incomplete-records", msg_i), _finish(uncertain, "info", "uncertain-records", msg_u)]


def _unparsed(inputs: list[dict] | None) -> pl.LazyFrame:
    rows = []
    for item in inputs or []:
        cov = item.get("coverage") or {}
        spans = cov.get("unparsed_spans") or []
        count = int(cov.get("unparsed_lines") or 0)
        if count and spans:
            lines = [int(s[0]) for s in spans[:MAX_LINES]]
            msg = f"{count} line(s) in {len(spans)} span(s) are not spy output (application output, broken lines); first at line {lines[0]}"
            rows.append(("info", "unparsed-lines", msg, item["path"], lines[0], count, None, None, lines))
    return pl.LazyFrame(rows, schema=SCHEMA, orient="row")


def findings(
    calls: pl.LazyFrame,
    *,
    sessions: pl.LazyFrame | None = None,
    inputs: list[dict] | None = None,
    pin_failure_threshold: int = 2,
) -> pl.LazyFrame:
    """All findings, most severe first.

    ``sessions``: the sessions stage's output when already computed (else derived here);
    ``inputs``: ``manifest.json``'s inputs (for unparsed spans); ``pin_failure_threshold``:
    wrong PINs per process from which ``pin-failures-repeated`` is reported.
    """
    frame = derive(calls)
    if sessions is None:
        sessions = sessions_stage(frame)
    parts = [
        _secrets(frame),
        _pin_failures(frame, pin_failure_threshold),
        _pin_locked(frame),
        _pin_admin(frame),
        _leaked(sessions),
        _closed_by_finalize(sessions),
        _login_without_logout(frame),
        _no_finalize(frame),
        _weak(frame),
        *_key_findings(frame),
        *_record_quality(frame),
        _unparsed(inputs),
    ]
    parts = [p.select(COLUMNS) for p in parts]
    rank = pl.col("severity").replace_strict(SEVERITY_ORDER, return_dtype=pl.Int8)
    return pl.concat(parts, how="vertical").sort([rank, "code", "source", "line"], nulls_last=True)
