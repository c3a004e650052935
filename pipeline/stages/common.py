"""Per-call facts every stage needs, derived once from ``calls.parquet``.

Why a shared step: latency, the error category, the operation family and the mechanism an
operation runs under are used by several stages; deriving them in one place keeps the stages
consistent (the latency in ``latency.parquet`` is the latency in ``mechanisms.parquet``) and
lets ``analyze`` compute them once.  ``derive`` is idempotent: a frame that already has the
derived columns is returned unchanged, so each stage can be called on raw calls as well.

Derived columns (all stages may rely on them):

``pid_k``, ``tid_k``  pid / tid with null as -1 (join and group keys; older spies print none)
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

import polars as pl

CKR_OK = 0
CKR_ATTRIBUTE_SENSITIVE = 0x11
CKR_ATTRIBUTE_TYPE_INVALID = 0x12
CKR_PIN_INCORRECT = 0xA0
CKR_PIN_LOCKED = 0xA4
CKR_BUFFER_TOO_SMALL = 0x150

CATEGORIES = ("ok", "benign", "incomplete", "error")
FAMILIES = ("sign", "verify", "encrypt", "decrypt", "digest", "keygen", "wrap", "unwrap", "derive", "other")

PROCESS_KEYS = ["source", "process", "pid_k"]
THREAD_KEYS = ["source", "process", "pid_k", "tid_k"]

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

DERIVED = ("pid_k", "tid_k", "pos", "category", "family", "op_mechanism", "latency_ms")


def category_expr() -> pl.Expr:
    """``incomplete``: no ``Returned:`` line; ``ok``: CKR_OK; ``benign``: the size query
    (CKR_BUFFER_TOO_SMALL) and C_GetAttributeValue probing (CKR_ATTRIBUTE_SENSITIVE,
    CKR_ATTRIBUTE_TYPE_INVALID), which applications do on purpose; ``error``: the rest."""
    rv = pl.col("rv")
    return (
        pl.when(~pl.col("complete") | rv.is_null())
        .then(pl.lit("incomplete"))
        .when(rv == CKR_OK)
        .then(pl.lit("ok"))
        .when(rv == CKR_BUFFER_TOO_SMALL)
        .then(pl.lit("benign"))
        .when((pl.col("func") == "C_GetAttributeValue") & rv.is_in([CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID]))
        .then(pl.lit("benign"))
        .otherwise(pl.lit("error"))
    )


def family_expr() -> pl.Expr:
    return pl.col("func").replace_strict(FUNC_FAMILY, default=None, return_dtype=pl.String)


# The calls columns the stages read (the others -- attributes, created, lengths, object handle --
# are left behind, which keeps the one sort over all calls narrow).
STAGE_COLUMNS = (
    "source", "process", "pid", "tid", "seq", "line", "ts", "func", "rv", "rv_name", "complete", "slot",
    "session", "mechanism", "user_type", "uncertain", "secrets",
)


def derive(calls: pl.LazyFrame) -> pl.LazyFrame:
    """Add the derived columns (see the module docstring); a no-op on a derived frame.

    Calls are put in (source, line) order: within one thread of one process that is entry
    order (a thread's next header follows its previous ``Returned:``), and it is the order in
    which the spy flushed a process's records.  (The spy's counter ``seq`` would do as well
    within a process, but line numbers are unique in a source and need no tie-break.)
    """
    schema = calls.collect_schema()
    if all(name in schema for name in DERIVED):
        return calls
    keep = [name for name in (*STAGE_COLUMNS, "flags") if name in schema]
    frame = calls.select(keep).with_columns(
        pl.col("pid").fill_null(-1).alias("pid_k"),
        pl.col("tid").fill_null(-1).alias("tid_k"),
        pl.col("func").cast(pl.String),
        pl.col("source").cast(pl.Categorical).to_physical().cast(pl.Int64).alias("src"),  # cheap key
    )
    if not _in_line_order(frame):  # the parser writes (nearly always) in line order: skip the sort
        frame = frame.sort("src", "line")
    frame = (
        frame.with_columns(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("pos"),
            category_expr().alias("category"),
            family_expr().alias("family"),
        )
    )
    # The mechanism of an operation's later calls: the latest Init of that family on that session.
    init_mech = pl.when(pl.col("func").is_in(list(OP_INIT_FUNCS))).then(pl.col("mechanism"))
    frame = frame.with_columns(
        pl.when(pl.col("func").is_in(list(MECHANISM_FUNCS)))
        .then(pl.col("mechanism"))
        .when(pl.col("func").is_in(list(CONTINUATION_FUNCS)) & pl.col("session").is_not_null())
        .then(init_mech.forward_fill().over(["src", "process", "pid_k", "session", "family"]))
        .alias("op_mechanism")
    )
    next_entry = pl.col("ts").shift(-1).backward_fill().over(["src", "process", "pid_k", "tid_k"])
    gap = (next_entry - pl.col("ts")).dt.total_milliseconds()
    latency = (
        pl.when(pl.col("uncertain") | ~pl.col("complete") | (gap < 0))
        .then(None)
        .otherwise(gap)
        .cast(pl.Int64)
        .alias("latency_ms")
    )
    return frame.with_columns(latency).drop("src", "pid", "tid", "seq")  # pid_k, tid_k, pos replace them


def _in_line_order(frame: pl.LazyFrame) -> bool:
    """True when each source's rows are contiguous and in increasing line order."""
    changes = pl.col("src") != pl.col("src").shift(1)
    ok = frame.select(
        ((pl.col("line").diff() > 0) | changes).all(ignore_nulls=True).alias("ascending"),
        (changes.sum() + 1 == pl.col("src").n_unique()).alias("contiguous"),
        pl.len().alias("n"),
    ).collect(engine="streaming")
    return ok["n"][0] == 0 or bool(ok["ascending"][0] and ok["contiguous"][0])


def restore_pid(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Put the real (nullable) ``pid`` back in place of the key ``pid_k``."""
    return frame.with_columns(
        pl.when(pl.col("pid_k") == -1).then(None).otherwise(pl.col("pid_k")).cast(pl.Int64).alias("pid")
    ).drop("pid_k")
