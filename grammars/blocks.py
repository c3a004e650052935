r"""A block's clean call records, cut into columns in Rust (Polars), a whole block at a time.

Most records of a log are *clean*: a blank line, a header, a timestamp, body lines and a
``Returned:`` line, with nothing of another call glued in.  Those are the grammar's
``record`` (``grammars.spy``); here the same pattern is run by Polars' Rust regex over every
record of a block at once, since Python work per record (pyparsing's call, the string cuts,
the row tuple) was most of the parse's cost (``performance-notes.md``).  What is not
certainly a clean record is left to the pyparsing scanner, which reads it as before.

A block is cut at its blank lines into *pieces* (numpy finds the blank lines; the pieces
are views of the block's bytes, not Python strings); the text of piece *i* runs from the
blank line in front of it (its first ``\n``) to the newline that ends its last line::

    block        = [ NL ] piece { NL NL piece } ;                  (* split at every blank line *)
    clean-piece  = header NL timestamp body returned [ NL ] ;      (* RECORD_PATTERN, anchored *)
    body         = NL { body-line } ;                              (* as in grammars.spy *)

and a clean piece has exactly one ``Returned:`` and one ``:SS.mmm`` line end (its own
timestamp's): ``spy.is_clean_body``.  A piece that is not clean is not necessarily wrong
(an extra blank line, a record another thread's line interrupts): it goes to the scanner.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

from grammars import spy

# Python's re.ASCII classes as Rust spells them (Rust's \d and \S are Unicode-aware).
_RUST_CLASSES = {r"\d": "[0-9]", r"\S": r"[^ \t\n\r\f\x0B]"}


def _rust(pattern: str) -> str:
    for python, rust in _RUST_CLASSES.items():
        pattern = pattern.replace(python, rust)
    return pattern


# `spy.RECORD_PATTERN` without its leading blank line, anchored at both ends; the compat
# line's look-ahead (which Rust lacks) is spelled as the newline it looks at.  A piece is
# followed by its separator, the blank line's two newlines (`_pieces`).
_BODY_LINE = "(?:(?:" + "|".join(s for s in spy.BODY_STARTS if "compat" not in s) + r")[^\n]*\n|\[compat\]\n)"
CLEAN_PIECE = _rust("^" + spy.HEADER + r"\n" + spy.TS + r"\n" + _BODY_LINE + "*" + spy.RETURNED + r"\n{0,2}$")
_GLUED_TS = _rust(r":\d\d\.\d{3}\n")


class Cut(NamedTuple):
    pieces: pl.DataFrame
    parts: pl.DataFrame


def cut_ahead(texts: Iterable[str]) -> Iterator[tuple[str, Cut]]:
    """Each block with its cut; the next block is cut on a thread while this one is used.

    Polars runs the cut without the GIL, so it overlaps the Python work of the assembler.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cut-ahead") as pool:
        ahead = None
        for text in texts:
            if ahead is not None:
                yield ahead[0], ahead[1].result()
            ahead = text, pool.submit(cut_pieces, text)
        if ahead is not None:
            yield ahead[0], ahead[1].result()


def cut_pieces(text: str) -> Cut:
    """The pieces of a block, and the parts of its clean ones.

    Pieces: ``start`` and ``end`` of each piece's text in ``text`` (they tile it), its line
    count as `spy` counts a token's lines (a last line without newline counts), the lines
    of the block before it (``before``), ``clean``.  Parts: one row per clean piece, in
    order, with its ``before`` and ``nlines`` and the columns of `spy.RecordParts`.

    Polars sees the block's bytes with every non-ASCII byte masked (a piece that holds one
    is not clean, so the mask never reaches a row): byte offsets are character offsets.
    """
    base = 1 if text.startswith("\n") else 0  # the block's first blank line belongs to its first piece
    raw = text.encode("latin-1")  # one byte per character: offsets in it are offsets in ``text``
    newlines = _newlines(raw)
    content = np.r_[base, (seps := _separators(newlines, base)) + 2]  # where each piece's first line starts
    last = content.size - 1
    start = content - 1
    start[0] = 0
    end = np.r_[seps + 1, len(raw)]
    nlines = np.searchsorted(newlines, end) - np.searchsorted(newlines, start)
    if end[last] > start[last] and not text.endswith("\n"):
        nlines[last] += 1  # a last line without newline
    candidate = np.ones(content.size, dtype=bool)
    candidate[0] = base == 1  # no blank line in front: not a record
    if not raw.isascii():
        wide = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) >= 0x80)
        candidate[np.searchsorted(content, wide, side="right") - 1] = False
        raw = raw.translate(_ASCII_MASK)
    first_newline = np.minimum(np.searchsorted(newlines, content), newlines.size - 2)  # past the end: not clean anyway
    frame = pl.DataFrame(
        {
            "piece": _strings(raw, np.r_[content, len(raw)]),
            "start": start,
            "end": end,
            "nlines": nlines,
            "before": np.cumsum(nlines) - nlines,
            "candidate": candidate,
            "header_end": newlines[first_newline] - content if newlines.size >= 2 else 0,
            "stamp_end": newlines[first_newline + 1] - content if newlines.size >= 2 else 0,
        }
    )
    piece = pl.col("piece")
    frame = frame.with_columns(
        (
            pl.col("candidate")
            & piece.str.contains(CLEAN_PIECE)
            & (piece.str.count_matches("Returned:", literal=True) == 1)
            & (piece.str.count_matches(_GLUED_TS) == 1)
        ).alias("clean")
    )
    return Cut(frame.select("start", "end", "nlines", "before", "clean"), _parts(frame.filter("clean")))


_ASCII_MASK = bytes(range(128)) + b"?" * 128


def _parts(clean: pl.DataFrame) -> pl.DataFrame:
    """seq, func, pid, tid, ts, body, rv, rv_name of clean pieces, cut with string operations
    where `CLEAN_PIECE` put them (``header_end``, ``stamp_end``: their first two newlines)."""
    piece, header_end, stamp_end = pl.col("piece"), pl.col("header_end"), pl.col("stamp_end")
    header = piece.str.slice(0, header_end).str.split_exact(": ", 1)
    stamp_line = piece.str.slice(header_end + 1, stamp_end - header_end - 1)
    prefix = stamp_line.str.head(-24)  # "P:<pid>; T:[0x]<tid>" (0.24+), else empty
    threads = prefix.str.split_exact("; T:", 1)
    returned = piece.str.find("\nReturned:  ", literal=True)  # the only one: the piece is clean
    result = piece.str.slice(returned + 12).str.strip_chars_end("\n").str.split_exact(" ", 1)
    return clean.select(
        "before",
        "nlines",
        header.struct.field("field_0").cast(pl.Int64).alias("seq"),
        header.struct.field("field_1").alias("func"),
        pl.when(prefix != "").then(threads.struct.field("field_0").str.strip_prefix("P:").cast(pl.Int64)).alias("pid"),
        pl.when(prefix != "").then(threads.struct.field("field_1").str.strip_prefix("0x").cast(pl.Int64)).alias("tid"),
        stamp_line.str.slice(-23).alias("ts"),
        piece.str.slice(stamp_end, returned + 1 - stamp_end).alias("body"),
        result.struct.field("field_0").cast(pl.Int64).alias("rv"),
        result.struct.field("field_1").alias("rv_name"),
    )


def _newlines(raw: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 10)


def _separators(newlines: np.ndarray, base: int) -> np.ndarray:
    """Offsets of the blank lines' ``\\n\\n`` after ``base``, found left to right without
    overlap (as ``str.split`` finds them: of three newlines only the first two separate)."""
    newlines = newlines[newlines >= base]
    pairs = np.flatnonzero(np.diff(newlines) == 1)
    if pairs.size:
        index = np.arange(pairs.size)
        run_start = np.maximum.accumulate(np.where(np.r_[True, np.diff(pairs) != 1], index, 0))
        pairs = pairs[(index - run_start) % 2 == 0]
    return newlines[pairs]


def _strings(utf8: bytes, offsets: np.ndarray) -> pl.Series:
    """``utf8[offsets[i]:offsets[i + 1]]`` for each i, as one string column, without copying in Python."""
    array = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(utf8))
    return pl.from_arrow(array)
