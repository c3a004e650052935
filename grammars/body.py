r"""Fields of a call record's body, read a batch of records at a time (Polars, Rust regex).

The body is the text between a record's timestamp and its ``Returned:`` line, starting and
ending with a newline.  The lines that carry the fields a call record keeps::

    handle       = NL "[" dir "] " handle-name " = 0x" HEX ;
    mechanism    = NL [ "[in] " ] "pMechanism->type" [ " " ] "=" [ " " ] name
                 | NL ( "[in] type = " | " " ) name ;                   (* C_GetMechanismInfo *)
    user-type    = NL "[in] userType = " name ;
    buffer       = NL "[" dir "] " name [ "[…]" ] [ " =" ] " "
                   ( address " / " length | "NULL [size : 0x" HEX " (" length ")]" | "EMPTY" ) ;
    session-flags = NL "[in] flags = 0x" HEX NL ;                       (* C_OpenSession *)
    template     = NL "[" dir "] " name "[" count "]:" [ " " ] NL { entry-or-dump-line NL } ;
    entry        = 4 " " attribute " " value ;
    dump-row     = 4 " " "00000000  " { HEX HEX " " } … ;                (* an entry's first *)

Why a batch at a time: these are about ten regex searches per record.  Done per record in
Python they cost about 15 µs, more than the rest of the parse; as Polars string expressions
over a column of bodies they run in Rust over the whole batch (``performance-notes.md``).
A pass costs about as much per record as per byte, so the passes over every body are few
and in one lazy context (they run in parallel); template passes run only on the bodies
that name a template (null elsewhere, which a regex skips), value decoding only on the
key-creating calls'.  Polars computes an expression used twice twice, so what is used
twice is made a column first.
Buffer contents are never extracted, only lengths; for secret-bearing buffers and
attributes (format notes §5) only their names.  The patterns use the syntax common to
Python's ``re`` and Rust's ``regex`` (no look-around).
"""

from __future__ import annotations

import polars as pl

from grammars.names import mechanism_name, user_type_name

# ASCII classes spelled out: Rust's \s, \S, \w and \d are Unicode-aware (0xA0 is a space there).
_NOT_SPACE = r"[^ \t\n\r\f\x0B]"
_HEX = r"0x([0-9a-f]+)"
_IN_OBJECT = r"(?:hKey|hObject|hBaseKey|hWrappingKey|hUnwrappingKey|hPublicKey|hPrivateKey|\*phSession|\*phObject|\*phNewObject|phKey)"
CREATED_OUT = ("*phObject", "*phNewObject", "hKey", "hPublicKey", "hPrivateKey", "phKey")

SESSION_IN = r"\n\[in\] hSession = " + _HEX
SESSION_OUT = r"\n\[out\] \*phSession = " + _HEX
SLOT_IN = r"\n\[in\] slotID = " + _HEX
OBJECT_IN = r"\n\[in\] " + _IN_OBJECT + " = " + _HEX
CREATED = r"\n\[out\] (?:\*phObject|\*phNewObject|hKey|hPublicKey|hPrivateKey|phKey) = " + _HEX
MECHANISM = r"\n(?:\[in\] )?pMechanism->type ?= ?(" + _NOT_SPACE + "+)"
MECHANISM_INFO = r"\n(?:\[in\] type = +| +)(Unknown Mechanism \([0-9a-f]+\)|[^ \t\n\r\f\x0B\[]+?)(?:[ \t\n\r\f\x0B]|\[|Returned:|$)"
USER_TYPE = r"\n\[in\] userType = (" + _NOT_SPACE + "+)"
_WS = r"[ \t\r]*"  # a copy's padding at a line's end (`grammars.spy.WS`)
SESSION_FLAGS = r"\n\[in\] flags = " + _HEX + _WS + r"\n"
BUFFER = (
    r"\n\[(?P<dir>in|out)\] (?P<name>[A-Za-z*][^ \t\n\r\f\x0B\[]*)(?:\[[^\]\n]*\])?(?: =)? "
    r"(?:(?P<address>[0-9a-f]{8}(?:[0-9a-f]{8})?) / (?P<length>-?[0-9]+)|NULL \[size : 0x[0-9A-F]+ \((?P<null_length>-?[0-9]+)\)\]|EMPTY)"
)
TEMPLATE = r"(?m)^\[(?:in|out)\] [A-Za-z0-9_]+\[[0-9]+\]:" + _WS + r"\n(?:[^\[\n][^\n]*\n)*"  # a head and its lines
TEMPLATE_IN = r"(?m)^\[in\] [A-Za-z0-9_]+\[[0-9]+\]:" + _WS + r"\n(?:[^\[\n][^\n]*\n)*"  # the same, [in] heads only
ENTRY = r"(?m)^    (CKA_[A-Z0-9_]+(?:\((?:NSS|Netsc)\))?|CKA_\? \(0x[0-9a-f]{8}\))"
SECRET_ENTRY = (
    r"(?m)^    (CKA_VALUE|CKA_PRIVATE_EXPONENT|CKA_PRIME_1|CKA_PRIME_2|CKA_EXPONENT_1|CKA_EXPONENT_2"
    r"|CKA_COEFFICIENT|CKA_SEED) +[0-9a-f]{8,16} / [1-9][0-9]*" + _WS + r"\n    00000000  "
)

CKF_RW_SESSION = 0x2
_LOGIN_FUNCS = ("C_Login", "C_LoginUser")

# What kind of secret a dumped buffer is (format notes §5).
_ALWAYS_SECRET = {
    "pPin": "pin", "pOldPin": "pin", "pNewPin": "pin",
    "pWrappedKey": "wrapped-key", "RandomData": "random", "pSeed": "seed", "pOperationState": "op-state",
}
_DATA_NAMES = ("pData", "pPart", "pLastPart", "pPlaintext", "pPlaintextPart")
_ENCRYPT_FUNCS = (
    "C_Encrypt", "C_EncryptUpdate", "C_DigestEncryptUpdate", "C_SignEncryptUpdate", "C_EncryptMessage", "C_EncryptMessageNext",
)
_DECRYPT_FUNCS = (
    "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal", "C_DecryptDigestUpdate", "C_DecryptVerifyUpdate",
    "C_DecryptMessage", "C_DecryptMessageNext", "C_VerifyRecover",
)

FIELDS = ("slot", "session", "object", "mechanism", "user_type", "in_len", "out_len", "attributes", "created", "secrets", "flags")

# Non-secret argument values the audit needs: key attributes of key-creating calls' templates.
VALUE_FUNCS = ("C_GenerateKey", "C_GenerateKeyPair", "C_CreateObject", "C_CopyObject", "C_UnwrapKey", "C_DeriveKey")


def read_fields(calls: pl.DataFrame) -> pl.DataFrame:
    """Add the body's fields (``FIELDS``) to a batch of calls with ``func`` and ``body``."""
    lazy = calls.lazy().with_row_index("_row").with_columns(_TEMPLATE_BODY)
    read = lazy.with_columns(*_READ).with_columns(*_DERIVED)
    out = (
        read.with_columns(*_FIELDS_OF_DERIVED)
        .join(_buffer_secrets(read), on="_row", how="left", maintain_order="left")
        .join(_template_values(lazy), on="_row", how="left", maintain_order="left")
        .with_columns(_SECRETS, _FLAGS)
        .with_columns(_null_if_empty(pl.col("secrets")))
        .drop(_TEMPORARY)
        .collect(engine="in-memory")
    )
    return out.with_columns(
        pl.col("mechanism").replace(_names(out["mechanism"], mechanism_name)),
        pl.col("user_type").replace(_names(out["user_type"], user_type_name)),
    )


def _null_if_empty(lists: pl.Expr) -> pl.Expr:
    """Null for an empty list; ``lists`` is a column (an expression used twice is computed twice)."""
    return pl.when(lists.list.len() > 0).then(lists)


def _names(column: pl.Series, name_of) -> dict[str, str]:
    """Spy spellings that python-pkcs11's enums name differently (bare numbers), for ``replace``."""
    return {text: named for text in column.drop_nulls().unique() if (named := name_of(text)) != text}


_BODY, _FUNC, _ELEMENT = pl.col("body"), pl.col("func"), pl.element()
# Template work runs on the bodies that name a template; for the others this is null, which a regex skips.
_TEMPLATE_BODY = pl.when(_BODY.str.contains("emplate[", literal=True)).then(_BODY).alias("_template_body")


def _mechanism() -> pl.Expr:
    """``pMechanism->type``; a C_GetMechanismInfo without one names its type (searched on those bodies only)."""
    info_body = pl.when(_FUNC == "C_GetMechanismInfo").then(_BODY)
    info = pl.when(~info_body.str.contains("pMechanism", literal=True)).then(info_body).str.extract(MECHANISM_INFO)
    return pl.coalesce(_BODY.str.extract(MECHANISM), info)


def _session_flags(flags: pl.Expr) -> pl.Expr:
    """``CKF_RW_SESSION=True|False`` of a C_OpenSession without a template (a one-item list), else null."""
    read_write = pl.when(flags // CKF_RW_SESSION % 2 == 1).then(pl.lit("True")).otherwise(pl.lit("False"))
    return pl.when(flags.is_not_null()).then(pl.concat_list("CKF_RW_SESSION=" + read_write))


def _key_secrets() -> pl.Expr:
    """Key material dumped in any template.

    A certificate's or public key's ``CKA_VALUE`` is not secret, so a template that holds
    ``CKO_CERTIFICATE`` or ``CKO_PUBLIC_KEY`` names no key secret.  A template's last line
    is no secret entry's dump row, so joining the other templates makes no new entries.
    """
    body = pl.col("_template_body")
    public = _ELEMENT.str.contains("CKO_CERTIFICATE", literal=True) | _ELEMENT.str.contains("CKO_PUBLIC_KEY", literal=True)
    return (
        pl.when(body.str.contains(SECRET_ENTRY)).then(body)
        .str.extract_all(TEMPLATE).list.eval(_ELEMENT.filter(~public)).list.join("")
        .str.extract_all(SECRET_ENTRY).list.eval("key:" + _ELEMENT.str.extract(SECRET_ENTRY))
    )


# The passes over whole bodies, in one context so that they run in parallel.  The ``[in]``
# templates end at a line end, so joined they make no new entries.
_READ = (
    _BODY.str.extract(SLOT_IN).alias("_slot"),
    pl.coalesce(_BODY.str.extract_all(SESSION_OUT).list.last().str.extract(_HEX), _BODY.str.extract(SESSION_IN)).alias("_session"),
    _BODY.str.extract(OBJECT_IN).alias("_object"),
    _mechanism().alias("mechanism"),
    pl.when(_FUNC.is_in(_LOGIN_FUNCS)).then(_BODY).str.extract(USER_TYPE).alias("user_type"),
    _BODY.str.extract_all(CREATED).alias("_created"),
    _BODY.str.extract_all(BUFFER).alias("_buffers"),
    pl.col("_template_body").str.extract_all(TEMPLATE_IN).list.join("").str.extract_all(ENTRY).alias("_entries"),
    _key_secrets().alias("key_secrets"),
    pl.when((_FUNC == "C_OpenSession") & pl.col("_template_body").is_null()).then(_BODY)
    .str.extract(SESSION_FLAGS).str.to_integer(base=16, dtype=pl.UInt64, strict=False).alias("_session_flags"),  # null: no CK_FLAGS
)

_BUFFER_LENGTH = r"(-?[0-9]+)\)?\]?$"  # of a buffer match: address form, or NULL form's "(length)]"
# A buffer match with an address and a length above 0 whose name may make it secret (``_secret_kind``).
_SECRET_BUFFER = r"^\n\[(?:in|out)\] (?:" + "|".join((*_ALWAYS_SECRET, *_DATA_NAMES)) + r")[\[ ].* / 0*[1-9][0-9]*$"


def _sizes(direction: str) -> pl.Expr:
    """The lengths of one direction's buffers (``pMechanism`` parameters and ``EMPTY`` ones aside)."""
    mine = _ELEMENT.str.starts_with(f"\n[{direction}] ") & ~_ELEMENT.str.starts_with(f"\n[{direction}] pMechanism")
    return pl.col("_buffers").list.eval(_ELEMENT.filter(mine).str.extract(_BUFFER_LENGTH).drop_nulls())


_DERIVED = (
    pl.col("_created").list.eval(_ELEMENT.str.extract(_HEX)),
    _sizes("in").alias("_in_sizes"),
    _sizes("out").alias("_out_sizes"),
    pl.col("_entries").list.eval(_ELEMENT.str.strip_chars_start(" ")),
    _session_flags(pl.col("_session_flags")).alias("_session_flags"),
    # From here on only the secret candidates among the buffers.
    pl.col("_buffers").list.eval(_ELEMENT.filter(_ELEMENT.str.contains(_SECRET_BUFFER))),
)
def _u64(digits: pl.Expr, base: int) -> pl.Expr:
    """``CK_ULONG`` digits as a number; null where they do not fit (`_RANGE_FLAGS` notes it)."""
    return digits.str.to_integer(base=base, dtype=pl.UInt64, strict=False)


def _u64_list(column: str, base: int) -> pl.Expr:
    return pl.col(column).list.eval(_u64(_ELEMENT, base).drop_nulls())


_SCALARS = ("slot", "session", "object")
_LISTS = {"created": ("_created", 16), "in_len": ("_in_sizes", 10), "out_len": ("_out_sizes", 10)}
_FIELDS_OF_DERIVED = (
    *(_u64(pl.col(f"_{name}"), 16).alias(name) for name in _SCALARS),
    _null_if_empty(_u64_list("_created", 16)).alias("created"),
    pl.when(pl.col("_in_sizes").list.len() > 0).then(_u64_list("_in_sizes", 10).list.sum()).alias("in_len"),
    pl.when(pl.col("_out_sizes").list.len() > 0).then(_u64_list("_out_sizes", 10).list.sum()).alias("out_len"),
    _null_if_empty(pl.col("_entries")).alias("attributes"),
    # A number that fits no CK_ULONG (a damaged log) is left out of its column, and said so.
    pl.concat_list(
        *(pl.when(pl.col(f"_{name}").is_not_null() & _u64(pl.col(f"_{name}"), 16).is_null()).then(pl.lit(f"out-of-range:{name}"))
          for name in _SCALARS),
        *(pl.when(pl.col(strings).list.len() != _u64_list(strings, base).list.len()).then(pl.lit(f"out-of-range:{name}"))
          for name, (strings, base) in _LISTS.items()),
    ).list.drop_nulls().alias("_range_flags"),
)


def _buffer_secrets(read: pl.LazyFrame) -> pl.LazyFrame:
    """Per record: the secret buffers' names, ``kind:name`` (few buffers are candidates, ``_DERIVED``)."""
    buffer, name = pl.col("_buffers"), pl.col("name")
    return (
        read.select("_row", "func", "_buffers")
        .explode("_buffers")
        .drop_nulls("_buffers")
        .with_columns(buffer.str.extract(r"^\n\[(?:in|out)\] ([A-Za-z]+)").alias("name"))
        .select("_row", (_secret_kind(name, buffer.str.starts_with("\n[in] ")) + ":" + name).alias("secret"))
        .drop_nulls("secret")
        .group_by("_row", maintain_order=True)
        .agg(pl.col("secret").alias("buffer_secrets"))
    )


def _secret_kind(name: pl.Expr, incoming: pl.Expr) -> pl.Expr:
    data = name.is_in(_DATA_NAMES)
    return (
        pl.when(name.is_in(list(_ALWAYS_SECRET)))
        .then(name.replace_strict(_ALWAYS_SECRET, default=None, return_dtype=pl.String))
        .when(data & incoming & _FUNC.is_in(_ENCRYPT_FUNCS))
        .then(pl.lit("plaintext"))
        .when(data & ~incoming & _FUNC.is_in(_DECRYPT_FUNCS))
        .then(pl.lit("plaintext"))
        .when(data & incoming & _FUNC.str.contains(r"^C_(?:Sign|Verify|Digest)"))
        .then(pl.lit("data"))
    )


_SECRETS = pl.concat_list(pl.col("buffer_secrets").fill_null([]), pl.col("key_secrets").fill_null([])).alias("secrets")
_FLAGS = _null_if_empty(
    pl.concat_list(pl.coalesce("template_flags", "_session_flags").fill_null([]), "_range_flags", pl.col("problems").fill_null([]))
).alias("flags")
_TEMPORARY = (
    "_row", "_template_body", "_created", "_buffers", "_in_sizes", "_out_sizes", "_entries", "_session_flags",
    "buffer_secrets", "key_secrets", "template_flags", "_slot", "_session", "_object", "_range_flags", "problems",
)

# A template's head and the lines up to the next "[" line (an empty line does not end it here).
_SECTION = r"\n\[(?:in|out)\] [A-Za-z0-9_]+\[[0-9]+\]:" + _WS + r"\n(?:[^\[\n][^\n]*)?(?:\n+[^\[\n][^\n]*)*"
_SECTION_PREFIX = r"^\n\[in\] ([A-Za-z0-9_]+)\["
_INT_ATTRS = ("CKA_MODULUS_BITS", "CKA_VALUE_LEN")
_ENUM_ATTRS = ("CKA_CLASS", "CKA_KEY_TYPE")
_VALUE_ENTRY = (
    r"\n    (?:CKA_[A-Z0-9_]+ +(?:True|False)|(?:" + "|".join(_ENUM_ATTRS) + r") +CK[OK]_[A-Za-z0-9_]+"
    r"|(?:" + "|".join(_INT_ATTRS) + r") +[0-9a-f]{8}(?:[0-9a-f]{8})? / [1-8]" + _WS + r"\n    00000000  (?:[0-9A-F]{2} ){1,8})"
)


def _template_values(calls: pl.LazyFrame) -> pl.LazyFrame:
    """Per key-creating record with a template: its audit values.

    ``NAME=VALUE`` for booleans, class, key type and sizes in the ``[in]`` templates.  Only
    these non-secret kinds are read; entries of a template other than ``pTemplate`` are
    prefixed with its name (``pPrivateKeyTemplate.CKA_SENSITIVE=False``).  Integers are the
    native (little-endian) ``CK_ULONG`` bytes of the dump's first row.
    """
    section, entry = pl.col("section"), pl.col("entry")
    name = pl.col("name")
    raw = entry.str.extract(r"00000000  ((?:[0-9A-F]{2} )+)$")
    number = raw.str.split(" ").list.reverse().list.join("").str.to_integer(base=16, dtype=pl.UInt64).cast(pl.String)
    return (
        calls.filter(pl.col("_template_body").is_not_null() & _FUNC.is_in(VALUE_FUNCS))
        .select("_row", _BODY.str.extract_all(_SECTION).alias("section"))
        .explode("section")
        .filter(section.str.starts_with("\n[in] "))
        .select("_row", section.str.extract(_SECTION_PREFIX).alias("name"), section.str.extract_all(_VALUE_ENTRY).alias("entry"))
        .explode("entry")
        .drop_nulls("entry")
        .group_by("_row", maintain_order=True)
        .agg(
            (
                pl.when(name == "pTemplate").then(pl.lit("")).otherwise(name + ".")
                + entry.str.extract(r"^\n    (CKA_[A-Z0-9_]+)")
                + "="
                + pl.coalesce(entry.str.extract(r" (True|False|CK[OK]_[A-Za-z0-9_]+)$"), number)
            ).alias("template_flags")
        )
    )
