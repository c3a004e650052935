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

Why a batch at a time: these are about ten regex searches per record.  Done per record in
Python they cost about 15 µs, more than the rest of the parse; as Polars string expressions
over a column of bodies they run in Rust over the whole batch (``performance-notes.md``).
Buffer contents are never extracted, only lengths; for secret-bearing buffers and
attributes (format notes §5) only their names.  The patterns use the syntax common to
Python's ``re`` and Rust's ``regex`` (no look-around).
"""

from __future__ import annotations

import re

import polars as pl

from pipeline.records import mechanism_name, user_type_name

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
SESSION_FLAGS = r"\n\[in\] flags = " + _HEX + r"\n"
BUFFER = (
    r"\n\[(?P<dir>in|out)\] (?P<name>[A-Za-z*][^ \t\n\r\f\x0B\[]*)(?:\[[^\]\n]*\])?(?: =)? "
    r"(?:(?P<address>[0-9a-f]{8}(?:[0-9a-f]{8})?) / (?P<length>-?[0-9]+)|NULL \[size : 0x[0-9A-F]+ \((?P<null_length>-?[0-9]+)\)\]|EMPTY)"
)
TEMPLATE = r"(?m)^\[(?:in|out)\] [A-Za-z0-9_]+\[[0-9]+\]: ?\n(?:[^\[\n][^\n]*\n)*"  # a head and its lines
ENTRY = r"(?m)^    (CKA_[A-Z0-9_]+(?:\((?:NSS|Netsc)\))?|CKA_\? \(0x[0-9a-f]{8}\))"
SECRET_ENTRY = (
    r"(?m)^    (CKA_VALUE|CKA_PRIVATE_EXPONENT|CKA_PRIME_1|CKA_PRIME_2|CKA_EXPONENT_1|CKA_EXPONENT_2"
    r"|CKA_COEFFICIENT|CKA_SEED) +[0-9a-f]{8,16} / [1-9][0-9]*\n    00000000  "
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
    body = pl.col("body")
    func = pl.col("func")
    calls = calls.with_row_index("_row")
    buffers = _buffer_fields(calls)
    templates = _template_fields(calls)
    values = _template_values(calls)
    out = calls.with_columns(
        body.str.extract(SLOT_IN).str.to_integer(base=16).alias("slot"),
        pl.coalesce(body.str.extract_all(SESSION_OUT).list.last(), body.str.extract(SESSION_IN, 0))
        .str.extract(_HEX)
        .str.to_integer(base=16)
        .alias("session"),
        body.str.extract(OBJECT_IN).str.to_integer(base=16).alias("object"),
        pl.when(body.str.contains("pMechanism", literal=True))
        .then(body.str.extract(MECHANISM))
        .when(func == "C_GetMechanismInfo")
        .then(body.str.extract(MECHANISM_INFO))
        .alias("mechanism"),
        pl.when(func.is_in(_LOGIN_FUNCS)).then(body.str.extract(USER_TYPE)).alias("user_type"),
        _null_if_empty(body.str.extract_all(CREATED).list.eval(pl.element().str.extract(_HEX).str.to_integer(base=16)))
        .alias("created"),
    )
    out = (
        out.join(buffers, on="_row", how="left", maintain_order="left")
        .join(templates, on="_row", how="left", maintain_order="left")
        .join(values, on="_row", how="left", maintain_order="left")
    )
    return out.with_columns(
        _null_if_empty(pl.concat_list(pl.col("buffer_secrets").fill_null([]), pl.col("key_secrets").fill_null([])))
        .alias("secrets"),
        pl.col("mechanism").replace(_names(out["mechanism"], mechanism_name)),
        pl.col("user_type").replace(_names(out["user_type"], user_type_name)),
        pl.coalesce("template_flags", _session_flags()).alias("flags"),
    ).drop("_row", "buffer_secrets", "key_secrets", "template_flags")


def _session_flags() -> pl.Expr:
    """``CKF_RW_SESSION=True|False`` of a C_OpenSession (a one-item list), else null."""
    flags = pl.col("body").str.extract(SESSION_FLAGS).str.to_integer(base=16)
    read_write = pl.when(flags // CKF_RW_SESSION % 2 == 1).then(pl.lit("True")).otherwise(pl.lit("False"))
    return pl.when(
        (pl.col("func") == "C_OpenSession") & flags.is_not_null() & ~pl.col("body").str.contains("emplate[", literal=True)
    ).then(pl.concat_list("CKF_RW_SESSION=" + read_write))


def _buffer_fields(calls: pl.DataFrame) -> pl.DataFrame:
    """Per record: summed ``[in]``/``[out]`` buffer lengths and the secret buffers' names."""
    found = (
        calls.select("_row", "func", pl.col("body").str.extract_all(BUFFER).alias("buffer"))
        .explode("buffer")
        .drop_nulls("buffer")
        .with_columns(pl.col("buffer").str.extract_groups(BUFFER).alias("b"))
        .unnest("b")
        .filter(~pl.col("name").str.starts_with("pMechanism"))
        .with_columns(pl.coalesce("length", "null_length").cast(pl.Int64).alias("size"))
        .filter(pl.col("size").is_not_null())  # EMPTY: no length printed
    )
    kind = _secret_kind().alias("kind")
    secret = pl.when(pl.col("address").is_not_null() & (pl.col("size") > 0) & kind.is_not_null()).then(kind + ":" + pl.col("name"))
    return found.group_by("_row", maintain_order=True).agg(
        pl.col("size").filter(pl.col("dir") == "in").sum().alias("in_len"),
        pl.col("size").filter(pl.col("dir") == "out").sum().alias("out_len"),
        (pl.col("dir") == "in").any().alias("_has_in"),
        (pl.col("dir") == "out").any().alias("_has_out"),
        secret.drop_nulls().alias("buffer_secrets"),
    ).with_columns(
        pl.when("_has_in").then("in_len").alias("in_len"),
        pl.when("_has_out").then("out_len").alias("out_len"),
    ).drop("_has_in", "_has_out")


def _secret_kind() -> pl.Expr:
    name, direction, func = pl.col("name"), pl.col("dir"), pl.col("func")
    data = name.is_in(_DATA_NAMES)
    return (
        pl.when(name.is_in(list(_ALWAYS_SECRET)))
        .then(name.replace_strict(_ALWAYS_SECRET, default=None, return_dtype=pl.String))
        .when(data & (direction == "in") & func.is_in(_ENCRYPT_FUNCS))
        .then(pl.lit("plaintext"))
        .when(data & (direction == "out") & func.is_in(_DECRYPT_FUNCS))
        .then(pl.lit("plaintext"))
        .when(data & (direction == "in") & func.str.contains(r"^C_(?:Sign|Verify|Digest)"))
        .then(pl.lit("data"))
    )


def _template_fields(calls: pl.DataFrame) -> pl.DataFrame:
    """Per record: attribute names of the ``[in]`` templates, and key material dumped in any.

    A certificate's or public key's ``CKA_VALUE`` is not secret, so a template that holds
    ``CKO_CERTIFICATE`` or ``CKO_PUBLIC_KEY`` names no key secret.
    """
    sections = (
        calls.filter(pl.col("body").str.contains("emplate[", literal=True))
        .select("_row", pl.col("body").str.extract_all(TEMPLATE).alias("lines"))
        .explode("lines")
        .drop_nulls("lines")
    )
    lines = pl.col("lines")
    public = lines.str.contains("CKO_CERTIFICATE", literal=True) | lines.str.contains("CKO_PUBLIC_KEY", literal=True)
    names = pl.when(lines.str.starts_with("[in]")).then(lines.str.extract_all(ENTRY).list.eval(pl.element().str.strip_chars_start(" ")))
    key_secrets = pl.when(~public).then(
        lines.str.extract_all(SECRET_ENTRY).list.eval("key:" + pl.element().str.extract(SECRET_ENTRY))
    )
    return sections.group_by("_row", maintain_order=True).agg(
        names.list.explode(keep_nulls=False, empty_as_null=False).alias("attributes"),
        key_secrets.list.explode(keep_nulls=False, empty_as_null=False).alias("key_secrets"),
    ).with_columns(_null_if_empty(pl.col("attributes")))


def _null_if_empty(lists: pl.Expr) -> pl.Expr:
    return pl.when(lists.list.len() > 0).then(lists)


def _names(column: pl.Series, name_of) -> dict[str, str]:
    """Spy spellings that python-pkcs11's enums name differently (bare numbers), for ``replace``."""
    return {text: named for text in column.drop_nulls().unique() if (named := name_of(text)) != text}


_TEMPLATE_RE = re.compile(r"\n\[(in|out)\] (\w+)\[\d+\]: ?\n", re.ASCII)
_VALUE_ENTRY_RE = re.compile(
    r"\n    (CKA_[A-Z0-9_]+) +(?:(True|False)|(CK[OK]_\w+)|[0-9a-f]{8}(?:[0-9a-f]{8})? / [1-8]\n    00000000  ((?:[0-9A-F]{2} ){1,8}))",
    re.ASCII,
)
_INT_ATTRS = frozenset({"CKA_MODULUS_BITS", "CKA_VALUE_LEN"})
_ENUM_ATTRS = frozenset({"CKA_CLASS", "CKA_KEY_TYPE"})


def _template_values(calls: pl.DataFrame) -> pl.DataFrame:
    """Per key-creating record with a template: its audit values (`template_values`).

    Few calls create keys, and their values need decoding (little-endian integers), so
    this part is plain Python over those rows only.
    """
    rows = calls.filter(pl.col("func").is_in(VALUE_FUNCS) & pl.col("body").str.contains("emplate[", literal=True))
    return pl.DataFrame(
        {"_row": rows["_row"], "template_flags": [template_values(text) for text in rows["body"]]},
        schema={"_row": pl.UInt32, "template_flags": pl.List(pl.String)},
    )


def template_values(body: str) -> list[str] | None:
    """``NAME=VALUE`` for booleans, class, key type and sizes in the ``[in]`` templates.

    Only these non-secret kinds are read; entries of a template other than ``pTemplate``
    are prefixed with its name (``pPrivateKeyTemplate.CKA_SENSITIVE=False``).  Integers are
    the native (little-endian) ``CK_ULONG`` bytes of the dump's first row.
    """
    out: list[str] = []
    for head in _TEMPLATE_RE.finditer(body):
        if head.group(1) != "in":
            continue
        end = body.find("\n[", head.end() - 1)
        section = body[head.end() - 1 : end if end >= 0 else len(body)]
        prefix = "" if head.group(2) == "pTemplate" else head.group(2) + "."
        for name, boolean, enum, raw in _VALUE_ENTRY_RE.findall(section):
            if boolean:
                out.append(f"{prefix}{name}={boolean}")
            elif enum and name in _ENUM_ATTRS:
                out.append(f"{prefix}{name}={enum}")
            elif raw and name in _INT_ATTRS:
                out.append(f"{prefix}{name}={int.from_bytes(bytes.fromhex(raw.replace(' ', '')), 'little')}")
    return out or None
