"""Rules of the grammar that the real logs rarely reach, on hand-made fragments (labelled so).

The scanner takes a run of body lines as one token and hands all of it to the newest open
record, without classifying each line; that is only right if every line ``spy.body_line``
accepts is a body unit for the line grammar and carries no glued unit of another call.
"""

from __future__ import annotations

import pyparsing as pp
from hypothesis import given
from hypothesis import strategies as st

from grammars import spy

BODY_KINDS = {kind for kind, _ in spy.LINE_KINDS[[kind for kind, _ in spy.LINE_KINDS].index("returned") + 1 :]}


def _first_token(text: str) -> spy.Token:
    return next(spy.scan(text))


def _is_body_line(line: str) -> bool:
    """``line`` is one `spy.body_line` (its newline included), matched whole."""
    try:
        (spy.body_line + spy.EOF).leave_whitespace().parse_with_tabs().parse_string(line)
    except pp.ParseException:
        return False
    return True

# Hand-made: each body start as the spy prints it, and a few near misses.
STARTS = [
    "[in] ", "[out] ", "[compat]", " ", "\t", "    ", "CKM_", "Unknown Mechanism (", "Slot 1", "Count is 3",
    "Object 0x1", "Interface '", "(unknown type", "pMechanism->", "pApplication=", "Notify=",
    "Parameters block for ", "}", "00007f10848f8c50 / 3", "0000abcd / 1",
    "Returned:  0 CKR_OK", "12: C_Sign", "2026-11-28 15:13:49.400", "Object 0xZ", "Slot x", "[compat]x",
]
TAIL = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\n"), max_size=40)
GLUED = st.sampled_from(["", "Returned:  0 CKR_OK", "2026-11-28 15:13:49.400", "P:1; T:0x2 2026-11-28 15:13:49.400"])


@given(start=st.sampled_from(STARTS), tail=TAIL, glued=GLUED)
def test_a_body_run_line_is_one_body_unit(start, tail, glued):
    line = start + tail + glued
    if _is_body_line(line + "\n"):
        assert spy.split_units(line) == [line]
        assert spy.classify(line)[0] in BODY_KINDS


@given(start=st.sampled_from(STARTS[:20]), tail=st.text(alphabet="abc =/0123456789ABCDEF", max_size=30))
def test_plain_body_lines_make_a_run(start, tail):
    """The spy's own body lines (no glued unit) are taken as a run, not line by line; a line of
    blanks outside a record is a (padded) blank line."""
    line = start + tail if start != "[compat]" else start
    token = _first_token(line + "\n" + line + "\n")
    if not line.strip(" \t"):
        assert (token.kind, token.start, token.end) == ("blank", 0, len(line) + 1)
    else:
        assert (token.kind, token.start, token.end) == ("run", 0, 2 * len(line) + 2)


@given(start=st.sampled_from(STARTS[:20]), tail=st.text(alphabet="abc =/0123456789ABCDEF", max_size=30), pad=st.text(" \t\r", min_size=1, max_size=9))
def test_padded_body_lines_make_the_same_run(start, tail, pad):
    """Trailing blanks (a terminal's or an editor's) do not change what a body line is."""
    line = start + tail if start != "[compat]" else start
    plain = _first_token(line + "\n" + line + "\n")
    padded = _first_token(line + pad + "\n" + line + pad + "\n")
    if line.strip(" \t"):
        assert padded.kind == plain.kind == "run" and padded.end == 2 * len(line + pad) + 2


def test_latin1_space_lookalike_in_a_header_keeps_it_a_header():
    """Hand-made: 0xA0 (no-break space in Latin-1) is not the spy's whitespace."""
    assert spy.classify("23: C_Cr\xa0eateObject")[0] == "header"
    record = "\n23: C_Cr\xa0eateObject\n2026-11-28 15:13:49.400\n[in] hSession = 0x1\nReturned:  0 CKR\xa0OK\n"
    token = _first_token(record)
    assert token.kind == "records" and token.end == len(record)
    parts = spy.record_parts(token.records[0], record)
    assert (parts.func, parts.rv, parts.rv_name) == ("C_Cr\xa0eateObject", 0, "CKR\xa0OK")
