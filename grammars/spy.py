r"""Grammar of OpenSC ``pkcs11-spy`` output, OpenSC 0.20 – 0.27 (see ``pkcs11-spy-format.md``).

The trace is read as Latin-1 text with ``\r\n`` folded to ``\n``; every pattern is ASCII
(``re.ASCII``): ``\s`` is the spy's whitespace, not a Latin-1 byte such as 0xA0.  It is scanned as a
sequence of *tokens*: a whole clean call record, else a run of body lines, else one line::

    trace        = { record | body-run | known-lines | line } ;
    record       = blank header timestamp { body-line } returned ;      (* the fast path *)
    body-run     = body-line { body-line } ;                   (* body lines outside a clean record *)
    known-lines  = [ blank ] ( header | timestamp | returned ) NL { ( header | timestamp | returned ) NL }
                 | blank ;                                 (* kinds told by `known_kind`, not the line grammar *)
    line         = { any-char - NL } NL ;                               (* the slow path *)

    blank        = ws NL ;
    ws           = { " " | TAB | CR } ;       (* a copy's padding: any line may end in it *)
    header       = seq ": " func ws NL ;            (* func is "C_…", or "SetOperationState" *)
    seq          = digit { digit } ;
    timestamp    = [ "P:" pid "; T:" [ "0x" ] tid " " ] date " " time ws NL ;  (* prefix: 0.24+ *)
    date         = 4 digit "-" 2 digit "-" 2 digit ;
    time         = 2 digit ":" 2 digit ":" 2 digit "." 3 digit ;
    returned     = "Returned:" " " { " " } [ "-" ] digit { digit } " " { " " } rv-name ws ( NL | EOF ) ;  (* spy: 2 and 1 *)
    rv-name      = "CKR_…" | "(null)" ;                                   (* (null): unknown code *)
    body-line    = body-start { any-char - NL } NL ;   (* without "Returned:", not ending in ":SS.mmm" *)
    body-start   = "[in] " | "[out] " | "[compat]" ws NL | ( " " | TAB ) ws non-blank | "CKM_" | "Unknown Mechanism ("
                 | "Slot " digit | "Count is " digit | "Object 0x" hex | "Interface '" | "(unknown type"
                 | "pMechanism->" | "pApplication=" | "Notify=" | "Parameters block for " | "}"
                 | address " / " length | "NULL [size : 0x" ;   (* a rendering whose prefix another thread ended *)

    banner-line  = 15 * "*" " OpenSC PKCS#11 spy " 17 * "*" ws ;          (* after two blank lines *)
    load-result  = 'Loaded: "' path '"' | "Error: " text ;

A ``record`` token is kept whole if its body has no unit of another call glued in (no
``Returned:`` or timestamp inside a line, no header inside the body: ``is_clean_body``);
otherwise its text is scanned again without the ``record`` alternative.  Everything else --
interleaved threads, several processes sharing a file, truncated records, application
stderr -- arrives as ``body-run`` tokens (each of its lines is a body unit: they all go to
the newest open record) or ``line`` tokens, classified by the line grammar ``SPY_LINE``
(``LINE_KINDS``, §10 of the format notes) after ``split_units`` has cut off a
``Returned:`` or timestamp unit glued to the end of another unit::

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

Speed: most records are clean, and those are not scanned here one by one: ``RECORD_PATTERN``
is run by Polars' Rust regex over every piece of a block at once (``grammars.blocks``), and
pyparsing scans only the rest, once per body run, run of known lines or other line.  The few
fields a call record needs are read later from the record's body, a batch of records at a
time (``grammars.body``).  A per-token grammar measured ~60x slower (``performance-notes.md``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

import pyparsing as pp

# --- token patterns (one source of truth for the scanner, the validator and the classifier) ---

TS = r"(?:P:(\d+); T:(?:0x)?(\d+) )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})"
WS = r"[ \t\r]*"
"""What users' copies add to the end of a line: padding to a terminal's width, an editor's tabs,
a stray ``\r`` (``\r\n`` itself is folded by the reader).  Any line may end in it."""
HEADER = r"(\d+): (\S+)"
RETURNED = r"Returned: +(-?\d+) +(\S+)"
"""The spy writes two spaces after ``Returned:`` (``SPY_RETURNED``); a copy from a web page has
its runs of spaces collapsed to one."""
SPY_RETURNED = r"Returned:  (-?\d+) (\S+)"
BANNER_LINE = r"\*{15} OpenSC PKCS#11 spy \*{17}"

BODY_STARTS = (
    r"\[in\] ",
    r"\[out\] ",
    r"\[compat\](?=[ \t\r]*\n)",
    r"[ \t][ \t\r]*[^ \t\r\nR]",  # indented, not blank: a line of blanks is a (padded) blank line
    r"CKM_",
    r"Unknown Mechanism \(",
    r"Slot -?\d",
    r"Count is \d",
    r"Object 0x[0-9a-f]",
    r"Interface '",
    r"\(unknown type",
    r"pMechanism->",
    r"pApplication=",
    r"Notify=",
    r"Parameters block for ",
    r"\}",
    r"[0-9a-f]{8}(?:[0-9a-f]{8})? / -?\d",  # a buffer rendering cut from its line by another thread (§6)
    r"NULL \[size : 0x",  # the same, of a NULL buffer

)
"""How a body unit starts: each is the start of one of the body kinds of ``LINE_KINDS``."""

_BODY_START = "(?:" + "|".join(BODY_STARTS) + ")"
# A body line that holds nothing of another call: no ``Returned:`` and no timestamp glued to it
# (the stamp is looked for where the line's padding starts: it must end on a non-blank).
BODY_LINE = _BODY_START + r"(?:[^\nR]*(?:R(?!eturned:)[^\nR]*)*(?<![ \t\r])(?<!:\d\d\.\d{3}))?" + WS + r"\n"
# In a record the same two checks are left to `is_clean_body`, once per body (3x faster).
_NO_GROUPS = re.compile(r"(?<!\\)\((?!\?)")  # a capturing group's "(", made "(?:" where only the span counts
RECORD_PATTERN = (
    WS + r"\n" + HEADER + WS + r"\n" + TS + WS + r"\n(?:" + _BODY_START + r"[^\n]*\n)*" + RETURNED + WS + r"(?:\n|\Z)"
)
RECORDS_PATTERN = r"(?P<records>(?:" + _NO_GROUPS.sub("(?:", RECORD_PATTERN) + r")+)"
BODY_RUN_PATTERN = r"(?P<run>(?:" + BODY_LINE + r")+)"
LINE_PATTERN = r"[^\n]*\n|[^\n]+\Z"
# Whole header, timestamp and ``Returned:`` lines (after a blank line where no record starts)
# are one token, their kinds told by `known_kind`, so that the slow path needs no grammar
# call per line to classify them (`classify` would say the same).
KNOWN_LINES_PATTERN = (
    r"(?P<known>(?:" + WS + r"\n)?(?:(?:" + "|".join(_NO_GROUPS.sub("(?:", p) for p in (HEADER, TS, RETURNED)) + ")" + WS + r"\n)+)"
    + r"|(?P<blank>" + WS + r"\n)"
)
TOKEN_RE = re.compile(RECORDS_PATTERN + "|" + BODY_RUN_PATTERN + "|" + KNOWN_LINES_PATTERN + "|" + LINE_PATTERN, re.ASCII)
"""Consecutive records (``records``), else a run of body lines (``run``), else one line."""
SLOW_TOKEN_RE = re.compile(BODY_RUN_PATTERN + "|" + KNOWN_LINES_PATTERN + "|" + LINE_PATTERN, re.ASCII)
"""The tokens of a record's text that cannot be kept whole."""

_GLUED_TS_RE = re.compile(r":\d\d\.\d{3}" + WS + r"\n", re.ASCII)
_NEXT_RECORD_RE = re.compile(r"\n" + WS + r"\n(?=\d+: )", re.ASCII)


def is_clean_body(body: str) -> bool:
    """True when no ``Returned:`` or timestamp unit of another call is glued into a body line."""
    return "Returned:" not in body and _GLUED_TS_RE.search(body) is None


def split_records(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Start and end of each record of a ``records`` token ``text[start:end]``.

    Each record starts with its blank line (blanks at most: a padded copy), and no line
    inside a record is empty, nor is one of blanks followed by a header, so that is where the
    next one starts.
    """
    while start < end:
        found = _NEXT_RECORD_RE.search(text, start + 1, end)
        stop = end if found is None else found.start() + 1
        yield start, stop
        start = stop


_BLANKS = " \t\r"


class RecordParts(NamedTuple):
    seq: int
    func: str
    pid: int | None
    tid: int | None
    ts: str
    body: str  # from the newline that ends the timestamp line to the one before ``Returned:``
    rv: int
    rv_name: str


def record_parts(record: str) -> RecordParts:
    """The parts of one record of a ``records`` token, cut where ``RECORD_PATTERN`` put them.

    ``record`` = WS NL header WS NL timestamp WS NL { body-line } returned WS [ NL ]: string
    cuts at those newlines replace a second regex pass (the scanner has already checked the shape).
    """
    header_start = record.index("\n") + 1
    header_end = record.index("\n", header_start)
    seq, func = record[header_start:header_end].rstrip(_BLANKS).split(": ", 1)
    stamp_end = record.index("\n", header_end + 1)
    stamp = record[header_end + 1 : stamp_end].rstrip(_BLANKS)
    pid = tid = None
    if stamp[0] == "P":  # P:<pid>; T:[0x]<tid> <date> <time>
        pid_part, tid_part, stamp = stamp.split(" ", 2)
        pid, tid = int(pid_part[2:-1]), int(tid_part[4:] if tid_part[2:4] == "0x" else tid_part[2:])
    returned = record.rindex("\nReturned: ")
    rv, rv_name = record[returned + 10 :].strip(_BLANKS + "\n").split(" ", 1)
    return RecordParts(int(seq), func, pid, tid, stamp, record[stamp_end : returned + 1], int(rv), rv_name.lstrip(" "))


# --- pyparsing elements ---

SCANNER = pp.Regex(TOKEN_RE, as_match=True).set_name("records | body-run | line").leave_whitespace().parse_with_tabs()
"""One pyparsing element call per token: ``records | body-run | line`` is a single regex alternation."""
SLOW_SCANNER = pp.Regex(SLOW_TOKEN_RE, as_match=True).set_name("body-run | line").leave_whitespace().parse_with_tabs()


def scan(text: str, records: bool = True):
    """Token stream of trace text: records whole (unless ``records`` is False), body runs, lines.

    Yields ``(re.Match, start, end)``; ``match.lastgroup`` is ``"records"`` for consecutive
    records (`split_records` cuts them apart), ``"run"`` for a body run, ``"known"`` for
    header, timestamp and ``Returned:`` lines (`known_kind`), ``"blank"``, None for another line.
    """
    scanner = SCANNER if records else SLOW_SCANNER
    for tokens, start, end in scanner.scan_string(text, always_skip_whitespace=False):
        yield tokens[0], start, end


LINE_KINDS: tuple[tuple[str, str], ...] = (
    ("blank", WS),
    ("banner", BANNER_LINE + WS),
    ("load-result", r'(?:Loaded: ".*"' + WS + "|Error: .*)"),
    ("header", HEADER + WS),
    ("timestamp", TS + WS),
    ("returned", RETURNED + WS),
    # body units
    ("hexdump-row", r"    [0-9A-F]{8}  .*"),
    ("compat", r"\[compat\]" + WS),
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
    ("orphan-rendering", r"(?:[0-9a-f]{8}(?:[0-9a-f]{8})? / -?\d+|NULL \[size : 0x[0-9A-F]+ \(-?\d+\)\]).*"),
)
"""The line grammar of §10 of the format notes, in the order the alternatives are tried."""

_KIND_OF_GROUP = {f"k{i}": kind for i, (kind, _) in enumerate(LINE_KINDS)}
SPY_LINE = (
    pp.Regex("|".join(f"(?P<k{i}>{pattern})\\Z" for i, (_, pattern) in enumerate(LINE_KINDS)), flags=re.ASCII, as_match=True)
    .leave_whitespace()
    .parse_with_tabs()
    .set_name("spy-line")
)
"""Line grammar for the slow path: one alternation, so one pyparsing call per line."""

_FIELDS_OF = {
    "header": re.compile(HEADER + WS, re.ASCII),
    "timestamp": re.compile(TS + WS, re.ASCII),
    "returned": re.compile(RETURNED + WS, re.ASCII),
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


def known_kind(line: str) -> tuple[str, re.Match[str] | None]:
    """`classify` of a line of a ``known`` token (a header, timestamp, ``Returned:`` or blank line)."""
    if not line.strip(_BLANKS):
        return "blank", None
    for kind in ("returned", "header", "timestamp"):
        match = _FIELDS_OF[kind].fullmatch(line)
        if match is not None:
            return kind, match
    raise ValueError(f"not a known line: {line!r}")


_GLUED_TAIL_RE = re.compile(r"(.+?)(" + RETURNED + r"|" + TS + r")" + WS + r"\Z", re.ASCII)
_WHOLE_UNIT_RE = re.compile(r"(?:" + RETURNED + r"|" + TS + r")" + WS + r"\Z", re.ASCII)


def split_units(line: str) -> list[str]:
    """Cut a ``Returned:`` or timestamp unit glued to the end of another unit into its own unit.

    Both units end with a newline in the spy's output, so a glued one can only stand at the
    end of a line; what precedes it belongs to whichever call was writing before (§6).
    """
    if "Returned: " not in line and line.rstrip(_BLANKS)[-4:-3] != ".":
        return [line]  # neither unit can end this line: skip the regexes (the common case)
    match = None if _WHOLE_UNIT_RE.match(line) else _GLUED_TAIL_RE.match(line)
    if match is None:
        return [line]
    return [match.group(1), match.group(2)]


# --- dialect hints ---

_MECH_WIDTH_RE = re.compile(r"\n\[in\] pMechanism->type = (CKM_\w+ *)[ \t\r]*\n", re.ASCII)
_NULL_PARAMETER_RE = re.compile(r"\n\[in\] pMechanism->pParameter = NULL[ \t\r]*\n", re.ASCII)
_UNPREFIXED_STAMP_RE = re.compile(r"\n\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[ \t\r]*\n", re.ASCII)


def dialect_hints(text: str) -> set[str]:
    """Which OpenSC output dialects a stretch of trace shows (§0 of the format notes).

    ``<=0.21``: the ``pMechanism->type=`` forms, which older releases (before 0.20, whose output
    we have not read) print too; ``<=0.23``: stamps without ``P:``, with nothing that tells
    more.  A 0.27 mechanism name is padded to exactly 39 columns (a copy's own padding makes
    it longer), and only 0.27 prints a NULL parameter of a mechanism that takes none.
    """
    hints: set[str] = set()
    if "pMechanism->type=" in text or "\npApplication=" in text:
        hints.add("<=0.21")
    has_pid = re.search(r"\nP:\d+; T:", text) is not None
    width = _MECH_WIDTH_RE.search(text)
    if (width is not None and len(width.group(1)) == 39) or _NULL_PARAMETER_RE.search(text) is not None:
        hints.add("0.27")
    elif has_pid:
        hints.add("0.24-0.26" if width is not None else "0.24+")
    elif width is not None or "\n[compat]" in text or "\n[in] pApplication = " in text:
        hints.add("0.22-0.23")
    elif not hints and _UNPREFIXED_STAMP_RE.search(text) is not None:
        hints.add("<=0.23")
    return hints


_BROADER = {"0.24+": ("0.24-0.26", "0.27"), "<=0.23": ("<=0.21", "0.22-0.23")}


def narrow_dialects(hints: set[str]) -> set[str]:
    """The hints of a whole file: a broad label goes where a narrower one of the same
    versions was seen elsewhere in it (blocks are hinted one at a time)."""
    return {hint for hint in hints if not any(narrow in hints for narrow in _BROADER.get(hint, ()))}
