r"""Grammar of OpenSC ``pkcs11-spy`` output, OpenSC 0.20 – 0.27: the reference engine.

This module is the format's specification (``pkcs11-spy-format.md`` describes it in prose) and
the oracle the native engine (``native/``) is tested against.  It is written for clarity, not
speed: each rule below is a pyparsing element whose docstring-comment gives its syntax.

The trace is read as Latin-1 text with ``\r\n`` folded to ``\n`` (``pipeline.stream``); every
pattern is ASCII (``re.ASCII``): ``\s`` is the spy's whitespace, not a Latin-1 byte such as
0xA0.  A trace is a sequence of *tokens*, tried in this order::

    trace        = { records | body-run | known-lines | blank | line } ;
    records      = record { record } ;
    record       = blank header stamp { record-line } returned ;
    body-run     = body-line { body-line } ;                 (* body lines outside a clean record *)
    known-lines  = [ blank ] known { known } ;               (* header, stamp, returned: no classifier call *)
    known        = ( header | stamp | returned ) ;
    line         = { any-char - NL } ( NL | EOF ) ;                     (* anything else, one line *)

and a line is made of these rules (``ws`` is what a copy adds to any line's end: a terminal's
padding, an editor's tabs, a stray ``\r``)::

    ws           = { " " | TAB | CR } ;
    blank        = ws NL ;
    header       = seq ": " func ws NL ;                 (* func is "C_…", or "SetOperationState" *)
    stamp        = [ "P:" pid "; T:" [ "0x" ] tid " " ] date " " time ws NL ;    (* prefix: 0.24+ *)
    date         = 4 digit "-" 2 digit "-" 2 digit ;
    time         = 2 digit ":" 2 digit ":" 2 digit "." 3 digit ;
    returned     = "Returned:" " " { " " } rv " " { " " } rv-name ws ( NL | EOF ) ;   (* spy: 2, 1 *)
    rv           = [ "-" ] digit { digit } ;             (* a signed long: 64-bit Windows goes negative *)
    rv-name      = non-blank { non-blank } ;                             (* "CKR_…", or "(null)" *)
    record-line  = body-start { any-char - NL } NL ;
    body-line    = body-start [ content ] ws NL ;  (* content: no "Returned:", not ending in ":SS.mmm" *)
    body-start   = "[in] " | "[out] " | "[compat]" ws NL | ( " " | TAB ) ws non-blank-not-R
                 | "CKM_" | "Unknown Mechanism (" | "Slot " digit | "Count is " digit
                 | "Object 0x" hex | "Interface '" | "(unknown type" | "pMechanism->"
                 | "pApplication=" | "Notify=" | "Parameters block for " | "}"
                 | address " / " length | "NULL [size : 0x" ;   (* renderings another thread cut off *)

    banner       = 15 * "*" " OpenSC PKCS#11 spy " 17 * "*" ws ;        (* after two blank lines *)
    load-result  = 'Loaded: "' path '"' ws | "Error: " text ;

A ``record`` is taken whole if its body has no unit of another call glued in (no
``Returned:`` or stamp inside a line: `is_clean_body`); otherwise its text is scanned again
without the ``records`` alternative.  Everything else -- interleaved threads, processes
sharing a file, truncated records, application output -- arrives as ``body-run`` tokens
(each line a body unit for the newest open call), ``known-lines`` or single ``line``
tokens.  A single line is classified by `classify` (``spy-line``, §10 of the format notes)
after `split_units` has cut a ``Returned:`` or stamp unit glued to its end into its own::

    spy-line     = blank | banner | load-result | header | stamp | returned | body-unit ;
    body-unit    = hexdump-row | compat | template-head | buffer | scalar | io-other
                 | template-entry | indented | mechanism-item | slot-item | count-item
                 | object-item | interface-item | v027-note | v020-form | orphan-rendering ;
    hexdump-row  = 4 " " 8 HEX 2 " " text ;
    template-head = io name [ "[" digits "]" ] [ " (original)" | " (faked)" ] ":" [ " " ] ;
    buffer       = io name [ " =" ] " " ( address " / " length
                 | "NULL [size : 0x" HEX " (" length ")]" | "EMPTY" ) text ;
    scalar       = io name " = " text ;
    io           = "[in] " | "[out] " ;
    template-entry = 4 " " ( "CKA_" NAME [ "(NSS)" | "(Netsc)" ] | "CKA_? (0x" 8 hex ")" ) text ;

A line that is none of these is *foreign*: application output, prose, a fragment of a split
line.  The fields a call keeps are read from its body later, a batch at a time (`grammars.body`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

import pyparsing as pp


def _re(pattern: str, name: str) -> pp.Regex:
    """A terminal of the grammar: an ASCII regex (pyparsing's own classes are not the spy's)."""
    return pp.Regex(pattern, flags=re.ASCII).set_name(name)


def _lit(text: str) -> pp.Literal:
    return pp.Literal(text).set_name(repr(text))


def _grammar(element: pp.ParserElement, name: str) -> pp.ParserElement:
    """A rule as the scanner uses it: no whitespace skipped anywhere (blanks are the format's)."""
    return element.leave_whitespace().parse_with_tabs().set_name(name)


# --- terminals ---

WS = r"[ \t\r]*"
"""What users' copies add to the end of a line: padding to a terminal's width, an editor's tabs,
a stray ``\r`` (``\r\n`` itself is folded by the reader).  Any line may end in it."""

ws = _re(WS, "ws").suppress()
NL = _lit("\n").suppress()
EOF = _re(r"\Z", "EOF")  # (pyparsing's StringEnd reports a span one past the end)
digits = _re(r"\d+", "digits")
non_blank = _re(r"\S+", "non-blank")
rest_of_line = _re(r"[^\n]*", "text")

# --- the line rules of the record ---

seq = digits("seq")
func = non_blank("func")
header_text = seq + _lit(": ").suppress() + func + ws
"""header = seq ": " func ws (without its NL)"""

pid_prefix = _lit("P:") + digits("pid") + _lit("; T:") + pp.Opt(_lit("0x")) + digits("tid") + _lit(" ")
date_time = _re(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", "date time")("ts")
stamp_text = pp.Opt(pid_prefix) + date_time + ws
"""stamp = [ "P:" pid "; T:" [ "0x" ] tid " " ] date " " time ws (without its NL)"""

spaces = _re(r" +", "spaces").suppress()
returned_text = _lit("Returned:").suppress() + spaces + _re(r"-?\d+", "rv")("rv") + spaces + non_blank("rv_name") + ws
"""returned = "Returned:" spaces rv spaces rv-name ws (without its NL)"""

banner_text = _re(r"\*{15} OpenSC PKCS#11 spy \*{17}", "banner") + ws
load_result_text = _re(r'Loaded: ".*"', "loaded") + ws | _re(r"Error: .*", "error")

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
"""How a body unit starts: each is the start of one of the body kinds of `LINE_KINDS`."""

body_start = pp.MatchFirst(_re(start, "body-start") for start in BODY_STARTS).set_name("body-start")
record_line = body_start + rest_of_line + _lit("\n")
"""record-line = body-start { any-char - NL } NL"""

# The content of a body line outside a record: nothing of another call glued in (no
# ``Returned:``, no stamp where its padding starts).  One terminal: its conditions are about
# the characters the line ends with.
body_content = _re(r"(?:[^\nR]*(?:R(?!eturned:)[^\nR]*)*(?<![ \t\r])(?<!:\d\d\.\d{3}))?", "content")
body_line = body_start + body_content + ws + NL
"""body-line = body-start [ content ] ws NL"""

# --- the tokens of a trace ---

blank = ws + NL
header = header_text + NL
stamp = stamp_text + NL
returned = returned_text + (NL | EOF)

record = pp.Located(
    _re(WS + r"\n", "blank") + header + stamp + pp.Located(pp.ZeroOrMore(record_line))("body") + returned
)
"""record = blank header stamp { record-line } returned"""
records = pp.OneOrMore(pp.Group(record))
body_run = pp.OneOrMore(body_line)
known = header_text | stamp_text | returned_text
known_lines = pp.Opt(blank) + pp.OneOrMore(known + NL)
line = _re(r"[^\n]*\n|[^\n]+\Z", "line")


def _tagged(**alternatives: pp.ParserElement) -> pp.ParserElement:
    return pp.MatchFirst(pp.Tag("kind", kind) + element for kind, element in alternatives.items())


TOKEN = _grammar(_tagged(records=records, run=body_run, known=known_lines, blank=blank, line=line), "trace-token")
"""One token of a trace, as the scanner takes it (`scan`)."""
SLOW_TOKEN = _grammar(_tagged(run=body_run, known=known_lines, blank=blank, line=line), "trace-token without records")
"""The tokens of a record's text that cannot be kept whole."""


class Token(NamedTuple):
    kind: str  # "records" | "run" | "known" | "blank" | "line"
    start: int
    end: int
    records: list[pp.ParseResults]  # of a "records" token: each record's parse (`record_parts`)


def scan(text: str, records: bool = True) -> Iterator[Token]:
    """The token stream of trace text: records whole (unless ``records`` is False), body runs,
    runs of known lines, blank lines, other lines, in order, tiling the text."""
    scanner = TOKEN if records else SLOW_TOKEN
    for tokens, start, end in scanner.scan_string(text, always_skip_whitespace=False):
        kind = tokens["kind"]
        yield Token(kind, start, end, list(tokens) if kind == "records" else [])


class RecordParts(NamedTuple):
    seq: int
    func: str
    pid: int | None
    tid: int | None
    ts: str
    body: str  # from the newline that ends the stamp line to the one before ``Returned:``
    rv: int
    rv_name: str
    start: int  # the record's span in the scanned text (from its blank line)
    end: int


def record_parts(parsed: pp.ParseResults, text: str) -> RecordParts:
    """The fields of one record of a ``records`` token (``parsed``: its `record` parse)."""
    start, fields, end = parsed
    body_start, _, body_end = fields["body"]
    pid, tid = fields.get("pid"), fields.get("tid")
    return RecordParts(
        int(fields["seq"]), fields["func"], None if pid is None else int(pid), None if tid is None else int(tid),
        fields["ts"], text[body_start - 1 : body_end], int(fields["rv"]), fields["rv_name"], start, end,
    )


_GLUED_TS_RE = re.compile(r":\d\d\.\d{3}" + WS + r"\n", re.ASCII)


def is_clean_body(body: str) -> bool:
    """True when no ``Returned:`` or stamp unit of another call is glued into a body line."""
    return "Returned:" not in body and _GLUED_TS_RE.search(body) is None


# --- the line grammar of the slow path ---

hexdump_row = _re(r"    [0-9A-F]{8}  .*", "hexdump-row")
io = _re(r"\[(?:in|out)\] ", "io")
LINE_KINDS: tuple[tuple[str, pp.ParserElement], ...] = (
    ("blank", ws),
    ("banner", banner_text),
    ("load-result", load_result_text),
    ("header", header_text),
    ("timestamp", stamp_text),
    ("returned", returned_text),
    # body units
    ("hexdump-row", hexdump_row),
    ("compat", _lit("[compat]") + ws),
    ("template-head", io + _re(r"\S+?(?:\[\d+\])?(?: \((?:original|faked)\))?: ?\Z", "template-head")),
    ("buffer", io + _re(r"\S+(?: =)? (?:[0-9a-f]{8}(?:[0-9a-f]{8})? / -?\d+|NULL \[size : 0x[0-9A-F]+ \(-?\d+\)\]|EMPTY).*", "buffer")),
    ("scalar", io + _re(r"\S+ = .*", "scalar")),
    ("io-other", io + rest_of_line),
    ("template-entry", _re(r"    (?:CKA_[A-Z0-9_]+(?:\((?:NSS|Netsc)\))?|CKA_\? \(0x[0-9a-f]{8}\)).*", "template-entry")),
    ("indented", _re(r"[ \t].*", "indented")),
    ("mechanism-item", _re(r"(?:CKM_|Unknown Mechanism \().*", "mechanism-item")),
    ("slot-item", _re(r"Slot -?\d+.*", "slot-item")),
    ("count-item", _re(r"Count is \d+.*", "count-item")),
    ("object-item", _re(r"Object 0x[0-9a-f]+.*", "object-item")),
    ("interface-item", _re(r"Interface '.*", "interface-item")),
    ("v027-note", _re(r"(?:\(unknown type|pMechanism->).*", "v027-note")),
    ("v020-form", _re(r"(?:pApplication=|Notify=|Parameters block for |\}).*", "v020-form")),
    ("orphan-rendering", _re(r"(?:[0-9a-f]{8}(?:[0-9a-f]{8})? / -?\d+|NULL \[size : 0x[0-9A-F]+ \(-?\d+\)\]).*", "orphan-rendering")),
)
"""The line grammar of §10 of the format notes, in the order the alternatives are tried."""

SPY_LINE = _grammar(
    pp.MatchFirst(pp.Group(element + EOF)(kind) for kind, element in LINE_KINDS), "spy-line"
)
"""spy-line: one unit (a line, or a part `split_units` cut), matched whole."""
_KINDS = tuple(kind for kind, _ in LINE_KINDS)


def classify(unit: str) -> tuple[str, pp.ParseResults | None]:
    """Kind of one line or unit (a `LINE_KINDS` name, or ``"foreign"``), and its fields
    (``seq``/``func``, ``pid``/``tid``/``ts``, ``rv``/``rv_name``; the text of a load result)."""
    try:
        parsed = SPY_LINE.parse_string(unit)
    except pp.ParseException:
        return "foreign", None
    kind = next(kind for kind in _KINDS if kind in parsed)
    return kind, parsed[kind]


_KNOWN = {kind: _grammar(element + EOF, kind) for kind, element in LINE_KINDS if kind in ("returned", "header", "timestamp")}


def known_kind(line: str) -> tuple[str, pp.ParseResults | None]:
    """`classify` of a line of a ``known`` token (a header, stamp, ``Returned:`` or blank line)."""
    if not line.strip(_BLANKS):
        return "blank", None
    for kind, element in _KNOWN.items():
        try:
            return kind, element.parse_string(line)
        except pp.ParseException:
            continue
    raise ValueError(f"not a known line: {line!r}")


_BLANKS = " \t\r"
_GLUED_UNIT = _grammar((returned_text | stamp_text) + EOF, "glued unit")


def split_units(line: str) -> list[str]:
    """Cut a ``Returned:`` or stamp unit glued to the end of another unit into its own unit.

    Both units end with a newline in the spy's output, so a glued one can only stand at the
    end of a line; what precedes it (at least one character) belongs to whichever call was
    writing before (§6).  The shortest such prefix wins.
    """
    if "Returned: " not in line and line.rstrip(_BLANKS)[-4:-3] != ".":
        return [line]  # neither unit can end this line (the common case)
    if _matches(_GLUED_UNIT, line, 0):
        return [line]
    for cut in range(1, len(line)):
        if line[cut] in "RP0123456789" and _matches(_GLUED_UNIT, line, cut):
            return [line[:cut], line[cut:]]
    return [line]


def _matches(element: pp.ParserElement, text: str, at: int) -> bool:
    try:
        element.parse_string(text[at:])
    except pp.ParseException:
        return False
    return True


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
