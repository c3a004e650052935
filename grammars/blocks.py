r"""A block's clean call records, cut into columns in Rust (Polars), a whole block at a time.

Most records of a log are *clean*: a blank line, a header, a timestamp, body lines and a
``Returned:`` line, with nothing of another call glued in.  Those are the grammar's
``record`` (``grammars.spy``); here the same pattern is run by Polars' Rust regex over every
record of a block at once, since Python work per record (pyparsing's call, the string cuts,
the row tuple) was most of the parse's cost (``performance-notes.md``).  What is not
certainly a clean record is left to the pyparsing scanner, which reads it as before.

A block is cut at its blank lines into *pieces*; the text of piece *i* runs from the blank
line in front of it (its first ``\n``) to the newline that ends its last line::

    block        = [ NL ] piece { NL NL piece } ;                  (* split at every blank line *)
    clean-piece  = header NL timestamp body returned [ NL ] ;      (* RECORD_PATTERN, anchored *)
    body         = NL { body-line } ;                              (* as in grammars.spy *)

and a clean piece has exactly one ``Returned:`` and one ``:SS.mmm`` line end (its own
timestamp's): ``spy.is_clean_body``.  A piece that is not clean is not necessarily wrong
(an extra blank line, a record another thread's line interrupts): it goes to the scanner.
"""

from __future__ import annotations

import polars as pl

from grammars import spy

# Python's re.ASCII classes as Rust spells them (Rust's \d and \S are Unicode-aware).
_RUST_CLASSES = {r"\d": "[0-9]", r"\S": r"[^ \t\n\r\f\x0B]"}


def _rust(pattern: str) -> str:
    for python, rust in _RUST_CLASSES.items():
        pattern = pattern.replace(python, rust)
    return pattern


# `spy.RECORD_PATTERN` without its leading blank line, anchored at both ends; the compat
# line's look-ahead (which Rust lacks) is spelled as the newline it looks at.
_BODY_LINE = "(?:(?:" + "|".join(s for s in spy.BODY_STARTS if "compat" not in s) + r")[^\n]*\n|\[compat\]\n)"
CLEAN_PIECE = _rust("^" + spy.HEADER + r"\n" + spy.TS + r"\n" + _BODY_LINE + "*" + spy.RETURNED + r"\n?$")
_HEAD = _rust(r"^(\d+): (\S+)\n" + spy.TS)  # header and timestamp lines, without the newline after
_TAIL = _rust(spy.RETURNED + r"\n?$")
_GLUED_TS = _rust(r":\d\d\.\d{3}\n")

PIECE_SCHEMA = {"start": pl.Int64, "end": pl.Int64, "nlines": pl.Int64, "clean": pl.Boolean}


def cut_pieces(text: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The pieces of a block, and the parts of its clean ones.

    Pieces: ``start`` and ``end`` of each piece's text in ``text`` (they tile it), its line
    count as `spy` counts a token's lines (a last line without newline counts), ``clean``.
    Parts: one row per clean piece, in order, with the columns of `spy.RecordParts`.
    """
    base = 1 if text.startswith("\n") else 0  # the block's first blank line belongs to its first piece
    piece = pl.col("piece")
    frame = pl.DataFrame({"piece": pl.Series([text[base:]]).str.split("\n\n").explode()})
    size = piece.str.len_chars().cast(pl.Int64)
    first = pl.int_range(pl.len()) == 0
    last = pl.int_range(pl.len()) == pl.len() - 1
    content_start = (size + 2).cum_sum().shift(1, fill_value=0) + base
    lead = ~first | (base == 1)  # the blank line's newline in front of the piece
    trail = ~last  # the first newline of the blank line after it (the end of its last line)
    frame = frame.with_columns(
        (content_start - lead.cast(pl.Int64)).alias("start"),
        (content_start + size + trail.cast(pl.Int64)).alias("end"),
        (
            piece.str.count_matches("\n", literal=True).cast(pl.Int64)
            + lead.cast(pl.Int64)
            + trail.cast(pl.Int64)
            + (last & (size > 0) & ~piece.str.ends_with("\n")).cast(pl.Int64)  # a last line without newline
        ).alias("nlines"),
        (
            lead
            & piece.str.contains(CLEAN_PIECE)
            & (piece.str.count_matches("Returned:", literal=True) == 1)
            & (piece.str.count_matches(_GLUED_TS) == 1)
        ).alias("clean"),
    )
    pieces = frame.select(list(PIECE_SCHEMA))
    return pieces, _parts(frame.filter("clean").select("piece"))


def _parts(clean: pl.DataFrame) -> pl.DataFrame:
    """seq, func, pid, tid, ts, body, rv, rv_name of clean pieces (their shape is known)."""
    piece = pl.col("piece")
    head = piece.str.extract(_HEAD, 0)
    tail = piece.str.extract(_TAIL, 0)
    head_chars = head.str.len_chars()
    parts = clean.with_columns(
        head.str.extract_groups(_HEAD).alias("h"),
        tail.str.extract_groups(_TAIL).alias("r"),
        piece.str.slice(head_chars, piece.str.len_chars() - head_chars - tail.str.len_chars()).alias("body"),
    )
    h, r = pl.col("h").struct, pl.col("r").struct
    return parts.select(
        h.field("1").cast(pl.Int64).alias("seq"),
        h.field("2").alias("func"),
        h.field("3").cast(pl.Int64).alias("pid"),
        h.field("4").cast(pl.Int64).alias("tid"),
        h.field("5").alias("ts"),
        "body",
        r.field("1").cast(pl.Int64).alias("rv"),
        r.field("2").alias("rv_name"),
    )
