r"""Grammar of OpenSC ``pkcs11-spy`` output, OpenSC 0.20 – 0.27 (see ``pkcs11-spy-format.md``).

The trace is read as Latin-1 text with ``\r\n`` folded to ``\n``.  It is scanned as a
sequence of *tokens*, each either one whole clean call record or one line::

    trace        = { record | line } ;
    record       = blank header timestamp { body-line } returned ;      (* the fast path *)
    line         = { any-char - NL } NL ;                               (* the slow path *)

    blank        = NL ;
    header       = seq ": " func NL ;            (* func is "C_…", or "SetOperationState" *)
    seq          = digit { digit } ;
    timestamp    = [ "P:" pid "; T:" [ "0x" ] tid " " ] date " " time NL ;   (* prefix: 0.24+ *)
    date         = 4 digit "-" 2 digit "-" 2 digit ;
    time         = 2 digit ":" 2 digit ":" 2 digit "." 3 digit ;
    returned     = "Returned:  " [ "-" ] digit { digit } " " rv-name ( NL | EOF ) ;
    rv-name      = "CKR_…" | "(null)" ;                                   (* (null): unknown code *)
    body-line    = body-start { any-char - NL } NL ;
    body-start   = "[in] " | "[out] " | "[compat]" | " " | TAB | "CKM_" | "Unknown Mechanism ("
                 | "Slot " | "Count is " | "Object 0x" | "Interface '" | "(unknown type"
                 | "pMechanism->" | "pApplication=" | "Notify=" | "Parameters block for " | "}"
                 | address " / " length ;                    (* a rendering whose prefix another thread ended *)

    banner-line  = 15 * "*" " OpenSC PKCS#11 spy " 17 * "*" ;             (* after two blank lines *)
    load-result  = 'Loaded: "' path '"' | "Error: " text ;

A ``record`` token is kept whole only if its body has no glued unit from another call (no
``Returned:`` or timestamp inside a line, no header inside the body: ``is_clean_body``).
Everything else -- interleaved threads, several processes sharing a file, truncated records,
application stderr -- arrives as ``line`` tokens and is classified by the line grammar
``SPY_LINE`` (``LINE_KINDS``, §10 of the format notes), after ``split_units`` has cut off a ``Returned:``
or timestamp unit glued to the end of another unit::

    spy-line     = banner-line | load-result | header | timestamp | returned | blank | body-unit ;
    body-unit    = compat | template-head | buffer | scalar | io-other | hexdump-row
                 | template-entry | indented | mechanism-item | slot-item | count-item
                 | object-item | interface-item | v027-note | v020-form ;
    buffer       = ("[in] " | "[out] ") name [ " =" ] " " ( address " / " length
                 | "NULL [size : 0x" HEX " (" length ")]" | "EMPTY" ) ;
    scalar       = ("[in] " | "[out] ") name " = " value ;
    hexdump-row  = 4 " " 8 HEX 2 " " 48 char " " 16 char ;
    template-entry = 4 " " ( "CKA_" name [ "(NSS)" | "(Netsc)" ] | "CKA_? (0x" 8 hex ")" ) " " value ;

A line that is none of these is *foreign* (application output, a fragment of a split line);
the stream reports it as unparsed with its line number.

Speed: pyparsing is called once per clean record (one ``Regex`` over the whole record) and
once per slow-path line; the few fields a call record needs are then read from the matched
body with plain ``re`` (``call_fields``).  A per-token grammar measured ~60x slower
(``performance-notes.md``).  Buffer contents are never extracted, only lengths.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import pyparsing as pp

# --- token patterns (one source of truth for the scanner, the validator and the classifier) ---

TS = r"(?:P:(\d+); T:(?:0x)?(\d+) )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})"
HEADER = r"(\d+): (\S+)"
RETURNED = r"Returned:  (-?\d+) (\S+)"
BANNER_LINE = r"\*{15} OpenSC PKCS#11 spy \*{17}"

BODY_STARTS = (
    r"\[in\] ",
    r"\[out\] ",
    r"\[compat\]",
    r" ",
    r"\t",
    r"CKM_",
    r"Unknown Mechanism \(",
    r"Slot -?\d",
    r"Count is \d",
    r"Object 0x",
    r"Interface '",
    r"\(unknown type",
    r"pMechanism->",
    r"pApplication=",
    r"Notify=",
    r"Parameters block for ",
    r"\}",
    r"[0-9a-f]{8}(?:[0-9a-f]{8})? / -?\d",  # a buffer rendering cut from its line by another thread (§6)
)
_BODY_START = "(?:" + "|".join(BODY_STARTS) + ")"

RECORD_PATTERN = r"\n" + HEADER + r"\n" + TS + r"(\n(?:[^\n]+\n)*?)" + RETURNED + r"(?:\n|\Z)"
LINE_PATTERN = r"[^\n]*\n|[^\n]+\Z"
TOKEN_RE = re.compile(RECORD_PATTERN + "|" + LINE_PATTERN)
"""A whole record (groups 1-8 set) or else one line (group 1 is None)."""

# A clean body: every line starts like a body line, and no unit of another call is glued in.
_UNCLEAN_LINE_RE = re.compile(r"\n(?!" + _BODY_START + r")[^\n]")
_GLUED_TS_RE = re.compile(r":\d\d\.\d{3}\n")


def is_clean_body(body: str) -> bool:
    """True when a record's body holds only its own lines (the fast path may keep it)."""
    return (
        "Returned:" not in body
        and _UNCLEAN_LINE_RE.search(body) is None
        and _GLUED_TS_RE.search(body) is None
    )


# --- pyparsing elements ---

SCANNER = pp.Regex(TOKEN_RE, as_match=True).set_name("record | line").leave_whitespace().parse_with_tabs()
"""One pyparsing element call per token: ``record | line`` is a single regex alternation."""


def scan(text: str):
    """Token stream of a block of trace text: clean records whole, everything else line by line.

    Yields ``(re.Match, start, end)``; ``match.group(1)`` is None for a line token.
    """
    for tokens, start, end in SCANNER.scan_string(text, always_skip_whitespace=False):
        yield tokens[0], start, end


LINE_KINDS: tuple[tuple[str, str], ...] = (
    ("blank", r""),
    ("banner", BANNER_LINE),
    ("load-result", r'(?:Loaded: ".*"|Error: .*)'),
    ("header", HEADER),
    ("timestamp", TS),
    ("returned", RETURNED),
    # body units
    ("hexdump-row", r"    [0-9A-F]{8}  .*"),
    ("compat", r"\[compat\]"),
    ("template-head", r"\[(?:in|out)\] \S+?(?:\[\d+\])?(?: \((?:original|faked)\))?: ?"),
    ("buffer", r"\[(?:in|out)\] \S+(?: =)? (?:[0-9a-f]{8}(?:[0-9a-f]{8})? / -?\d+|NULL \[size : 0x[0-9A-F]+ \(-?\d+\)\]|EMPTY).*"),
    ("scalar", r"\[(?:in|out)\] \S+ = .*"),
    ("io-other", r"\[(?:in|out)\] .*"),
    ("template-entry", r"    (?:CKA_[A-Z0-9_]+(?:\((?:NSS|Netsc)\))?|CKA_\? \(0x[0-9a-f]{8}\)).*"),
    ("indented", r"[ \t].*"),
    ("mechanism-item", r"(?:CKM_|Unknown Mechanism \().*"),
    ("slot-item", r"Slot -?\d+.*"),
    ("count-item", r"Count is \d+.*"),
    ("object-item", r"Object 0x[0-9a-f]+.*"),
    ("interface-item", r"Interface '.*"),
    ("v027-note", r"(?:\(unknown type|pMechanism->).*"),
    ("v020-form", r"(?:pApplication=|Notify=|Parameters block for |\}).*"),
    ("orphan-rendering", r"[0-9a-f]{8}(?:[0-9a-f]{8})? / -?\d+.*"),
)
"""The line grammar of §10 of the format notes, in the order the alternatives are tried."""

_KIND_OF_GROUP = {f"k{i}": kind for i, (kind, _) in enumerate(LINE_KINDS)}
SPY_LINE = (
    pp.Regex("|".join(f"(?P<k{i}>{pattern})\\Z" for i, (_, pattern) in enumerate(LINE_KINDS)), as_match=True)
    .leave_whitespace()
    .parse_with_tabs()
    .set_name("spy-line")
)
"""Line grammar for the slow path: one alternation, so one pyparsing call per line."""

_FIELDS_OF = {
    "header": re.compile(HEADER),
    "timestamp": re.compile(TS),
    "returned": re.compile(RETURNED),
    "load-result": re.compile(r".*"),
}


def classify(unit: str) -> tuple[str, re.Match[str] | None]:
    """Kind of one line or unit (a ``LINE_KINDS`` name, or ``"foreign"``), and its fields.

    For a header, timestamp, ``Returned:`` or load result the match has that token's groups
    (``HEADER``, ``TS``, ``RETURNED``); other kinds carry no fields the assembler reads.
    """
    try:  # every alternative ends in \Z, so a match is a whole-unit match
        match = SPY_LINE.parse_string(unit)[0]
    except pp.ParseException:
        return "foreign", None
    kind = _KIND_OF_GROUP[match.lastgroup]
    fields = _FIELDS_OF.get(kind)
    return kind, (fields.match(unit) if fields is not None else match)


_GLUED_TAIL_RE = re.compile(r"(.+?)(" + RETURNED + r"|" + TS + r")\Z")
_WHOLE_UNIT_RE = re.compile(r"(?:" + RETURNED + r"|" + TS + r")\Z")


def split_units(line: str) -> list[str]:
    """Cut a ``Returned:`` or timestamp unit glued to the end of another unit into its own unit.

    Both units end with a newline in the spy's output, so a glued one can only stand at the
    end of a line; what precedes it belongs to whichever call was writing before (§6).
    """
    if "Returned:  " not in line and line[-4:-3] != ".":
        return [line]  # neither unit can end this line: skip the regexes (the common case)
    match = None if _WHOLE_UNIT_RE.match(line) else _GLUED_TAIL_RE.match(line)
    if match is None:
        return [line]
    return [match.group(1), match.group(2)]


# --- fields of a call record, read from its body with plain `re` ---

_HANDLE_RE = re.compile(
    r"\n\[(in|out)\] (hSession|slotID|hKey|hObject|hBaseKey|hWrappingKey|hUnwrappingKey|hPublicKey|hPrivateKey"
    r"|\*phSession|\*phObject|\*phNewObject|phKey) = 0x([0-9a-f]+)"
)
_MECH_RE = re.compile(r"\n(?:\[in\] )?pMechanism->type ?= ?(\S+)")
_MECHINFO_RE = re.compile(r"\n(?:\[in\] type = +| +)(Unknown Mechanism \([0-9a-f]+\)|[^\s\[]+?)(?=\s|\[|Returned:|$)")
_USER_RE = re.compile(r"\n\[in\] userType = (\S+)")
_BUFFER_RE = re.compile(
    r"\n\[(in|out)\] (?!pMechanism)([A-Za-z*][^\s\[]*)(?:\[[^\]\n]*\])?(?: =)? "
    r"(?:([0-9a-f]{8}(?:[0-9a-f]{8})?) / (-?\d+)|NULL \[size : 0x[0-9A-F]+ \((-?\d+)\)\]|EMPTY)"
)
_TEMPLATE_RE = re.compile(r"\n\[(in|out)\] (\w+)\[\d+\]: ?\n")
_ENTRY_RE = re.compile(r"\n    (CKA_[A-Z0-9_]+(?:\((?:NSS|Netsc)\))?|CKA_\? \(0x[0-9a-f]{8}\))")
_SECRET_ENTRY_RE = re.compile(
    r"\n    (CKA_VALUE|CKA_PRIVATE_EXPONENT|CKA_PRIME_1|CKA_PRIME_2|CKA_EXPONENT_1|CKA_EXPONENT_2"
    r"|CKA_COEFFICIENT|CKA_SEED) +[0-9a-f]{8,16} / [1-9]\d*\n    00000000  "
)

CREATED_OUT = frozenset({"*phObject", "*phNewObject", "hKey", "hPublicKey", "hPrivateKey", "phKey"})
OBJECT_IN = ("hKey", "hObject", "hBaseKey", "hWrappingKey", "hUnwrappingKey", "hPublicKey", "hPrivateKey")

_ENCRYPT_FUNCS = frozenset(
    {"C_Encrypt", "C_EncryptUpdate", "C_DigestEncryptUpdate", "C_SignEncryptUpdate", "C_EncryptMessage", "C_EncryptMessageNext"}
)
_DECRYPT_FUNCS = frozenset(
    {
        "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal", "C_DecryptDigestUpdate", "C_DecryptVerifyUpdate",
        "C_DecryptMessage", "C_DecryptMessageNext", "C_VerifyRecover",
    }
)
_DATA_NAMES = frozenset({"pData", "pPart", "pLastPart", "pPlaintext", "pPlaintextPart"})
_ALWAYS_SECRET = {
    "pPin": "pin", "pOldPin": "pin", "pNewPin": "pin",
    "pWrappedKey": "wrapped-key", "RandomData": "random", "pSeed": "seed", "pOperationState": "op-state",
}


def secret_kind(func: str, direction: str, name: str) -> str | None:
    """What kind of secret a dumped buffer is, per §5 of the format notes (None: not secret)."""
    kind = _ALWAYS_SECRET.get(name)
    if kind is not None:
        return kind
    if name not in _DATA_NAMES:
        return None
    if direction == "in" and func in _ENCRYPT_FUNCS:
        return "plaintext"
    if direction == "out" and func in _DECRYPT_FUNCS:
        return "plaintext"
    if direction == "in" and func.startswith(("C_Sign", "C_Verify", "C_Digest")):
        return "data"
    return None


class CallFields(NamedTuple):
    """The typed fields of one call record that the body supplies."""

    slot: int | None
    session: int | None
    object: int | None
    mechanism: str | None
    user_type: str | None
    in_len: int | None
    out_len: int | None
    attributes: list[str] | None
    created: list[int] | None
    secrets: list[str] | None
    flags: list[str] | None


def call_fields(func: str, body: str) -> CallFields:
    """Read a record's handles, mechanism, user type, lengths and attribute names.

    ``body`` is the text between the timestamp and ``Returned:``, starting with a newline.
    Buffer contents are skipped: only their lengths are read, and for secret-bearing
    buffers and attributes (§5) only their names are kept in ``secrets``.
    """
    slot = session = obj = None
    created: list[int] | None = None
    for direction, name, value in _HANDLE_RE.findall(body):
        handle = int(value, 16)
        if direction == "in":
            if name == "hSession":
                session = handle if session is None else session
            elif name == "slotID":
                slot = handle if slot is None else slot
            elif obj is None:
                obj = handle
        elif name == "*phSession":
            session = handle
        elif name in CREATED_OUT:
            created = [*created, handle] if created else [handle]

    mechanism = None
    if "pMechanism" in body:
        m = _MECH_RE.search(body)
        mechanism = m.group(1) if m else None
    elif func == "C_GetMechanismInfo":
        m = _MECHINFO_RE.search(body)
        mechanism = m.group(1) if m else None

    user_type = None
    if func in ("C_Login", "C_LoginUser"):
        m = _USER_RE.search(body)
        user_type = m.group(1) if m else None

    in_len = out_len = None
    secrets: list[str] | None = None
    for direction, name, address, length, null_length in _BUFFER_RE.findall(body):
        size_text = length or null_length
        if not size_text:
            continue  # EMPTY: length unavailable
        size = int(size_text)
        if direction == "in":
            in_len = size if in_len is None else in_len + size
        else:
            out_len = size if out_len is None else out_len + size
        if address and size > 0:
            kind = secret_kind(func, direction, name)
            if kind is not None:
                secrets = [*secrets, f"{kind}:{name}"] if secrets else [f"{kind}:{name}"]

    attributes = flags = None
    if "emplate[" in body:
        attributes, key_secrets = _template_fields(body)
        if key_secrets:
            secrets = [*(secrets or []), *key_secrets]
        if func in VALUE_FUNCS:
            flags = _template_values(body)
    elif func == "C_OpenSession":
        m = _SESSION_FLAGS_RE.search(body)
        flags = [f"CKF_RW_SESSION={bool(int(m.group(1), 16) & CKF_RW_SESSION)}"] if m else None
    return CallFields(slot, session, obj, mechanism, user_type, in_len, out_len, attributes, created, secrets, flags)


def _template_fields(body: str) -> tuple[list[str] | None, list[str]]:
    """Attribute names of the ``[in]`` templates, and key material dumped in any template."""
    names: list[str] = []
    secrets: list[str] = []
    for head in _TEMPLATE_RE.finditer(body):
        end = body.find("\n[", head.end() - 1)
        section = body[head.end() - 1 : end if end >= 0 else len(body)]
        if head.group(1) == "in":
            names.extend(_ENTRY_RE.findall(section))
        if "CKO_CERTIFICATE" in section or "CKO_PUBLIC_KEY" in section:
            continue  # a certificate's or public key's CKA_VALUE is not secret
        secrets.extend("key:" + name for name in _SECRET_ENTRY_RE.findall(section))
    return (names or None), secrets


# Non-secret argument values the audit needs (read-write sessions; key attributes in templates).
VALUE_FUNCS = frozenset(
    {"C_GenerateKey", "C_GenerateKeyPair", "C_CreateObject", "C_CopyObject", "C_UnwrapKey", "C_DeriveKey"}
)
CKF_RW_SESSION = 0x2
_SESSION_FLAGS_RE = re.compile(r"\n\[in\] flags = 0x([0-9a-f]+)\n")
_VALUE_ENTRY_RE = re.compile(
    r"\n    (CKA_[A-Z0-9_]+) +(?:(True|False)|(CK[OK]_\w+)|[0-9a-f]{8}(?:[0-9a-f]{8})? / [1-8]\n    00000000  ((?:[0-9A-F]{2} ){1,8}))"
)
_INT_ATTRS = frozenset({"CKA_MODULUS_BITS", "CKA_VALUE_LEN"})
_ENUM_ATTRS = frozenset({"CKA_CLASS", "CKA_KEY_TYPE"})


def _template_values(body: str) -> list[str] | None:
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


# --- dialect hints ---

_MECH_WIDTH_RE = re.compile(r"\n\[in\] pMechanism->type = (CKM_\w+ *)\n")


def dialect_hints(text: str) -> set[str]:
    """Which OpenSC output dialects a stretch of trace shows (§0 of the format notes)."""
    hints: set[str] = set()
    if "pMechanism->type=" in text or "\npApplication=" in text:
        hints.add("0.20-0.21")
    has_pid = re.search(r"\nP:\d+; T:", text) is not None
    width = _MECH_WIDTH_RE.search(text)
    if width is not None and len(width.group(1)) >= 39:
        hints.add("0.27")
    elif has_pid:
        hints.add("0.24-0.26" if width is not None else "0.24+")
    elif width is not None or "\n[compat]" in text or "\n[in] pApplication = " in text:
        hints.add("0.22-0.23")
    return hints
