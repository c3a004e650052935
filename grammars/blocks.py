r"""A block's clean call records, tested and cut into columns a whole block at a time.

Most records of a log are *clean*: a blank line, a header, a timestamp, body lines and a
``Returned:`` line, with nothing of another call glued in.  Those are the grammar's
``record`` (``grammars.spy``); here the same pattern is run by Polars' Rust regex over every
record of a block at once, and their fields are cut with numpy, since Python work per record
(pyparsing's call, the string cuts, the row tuple) was most of the parse's cost
(``performance-notes.md``).  What is not certainly a clean record is left to the pyparsing
scanner, which reads it as before.

A block is cut at its blank lines into *pieces* (numpy finds the blank lines; the pieces
are views of the block's bytes, not Python strings); the text of piece *i* runs from the
blank line in front of it (its first ``\n``) to the newline that ends its last line::

    block        = [ NL ] piece { NL NL piece } ;                  (* split at every blank line *)
    clean-piece  = header NL timestamp body returned [ NL ] ;      (* RECORD_PATTERN, anchored *)
    body         = NL { body-line } ;                              (* as in grammars.spy *)

and a clean piece has exactly one ``Returned:`` and one ``:SS.mmm`` line end (its own
timestamp's): ``spy.is_clean_body``, counted with numpy over the block's bytes.  A piece that
is not clean is not necessarily wrong (an extra blank line, a record another thread's line
interrupts): it goes to the scanner.
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
# line's look-ahead (which Rust lacks) is spelled as the newline it looks at.  The string
# it is run on runs to the next piece, so it ends in the blank line's two newlines.
_BODY_LINE = "(?:(?:" + "|".join(s for s in spy.BODY_STARTS if "compat" not in s) + r")[^\n]*\n|\[compat\]\n)"
CLEAN_PIECE = _rust("^" + spy.HEADER + r"\n" + spy.TS + r"\n" + _BODY_LINE + "*" + spy.SPY_RETURNED + r"\n{0,2}$")


class Pieces(NamedTuple):
    """A block's pieces, one array item each: where its text starts and ends in the block, its
    line count as `spy` counts a token's lines (a last line without newline counts), the
    lines of the block before it, whether it is clean."""

    start: np.ndarray
    end: np.ndarray
    nlines: np.ndarray
    before: np.ndarray
    clean: np.ndarray


class Parts(NamedTuple):
    """The clean pieces' `spy.RecordParts` columns (``frame``, with ``before`` and ``nlines``),
    and what the assembler reads of them in arrays (``pid`` -1: none printed)."""

    frame: pl.DataFrame
    before: np.ndarray
    nlines: np.ndarray
    seq: np.ndarray
    pid: np.ndarray


class Cut(NamedTuple):
    """What the assembler needs of a block, made off its thread (`cut_ahead`)."""

    pieces: Pieces
    parts: Parts
    dialects: set[str]  # `spy.dialect_hints` of the block


def cut_ahead(texts: Iterable[str]) -> Iterator[tuple[str, Cut]]:
    """Each block with its cut; the next block is read and cut on a thread while this one is used.

    The reading (decoding, hashing) and Polars' and numpy's work run there, mostly without
    the GIL, so they overlap the Python work of the assembler, which is the critical path.
    """
    blocks = iter(texts)

    def read_and_cut() -> tuple[str, Cut] | None:
        text = next(blocks, None)
        return None if text is None else (text, cut_pieces(text))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cut-ahead") as pool:
        ahead = pool.submit(read_and_cut)
        while (block := ahead.result()) is not None:
            ahead = pool.submit(read_and_cut)
            yield block


def cut_pieces(text: str) -> Cut:
    """The pieces of a block (their texts tile it), and the parts of its clean ones.

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
    candidate = np.full(content.size, len(raw) < _MAX_VIEW_OFFSET)  # a string view's offset is 32 bits
    candidate[0] &= base == 1  # no blank line in front: not a record
    if not raw.isascii():
        wide = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) >= 0x80)
        candidate[np.searchsorted(content, wide, side="right") - 1] = False
        raw = raw.translate(_ASCII_MASK)
    buf = np.frombuffer(raw, dtype=np.uint8)
    clean = candidate & (_per_piece(_returned_at(buf), content) == 1) & (_per_piece(_stamp_ends(buf, newlines), content) == 1)
    clean[clean] = _strings(raw, np.r_[content, len(raw)]).filter(clean).str.contains(CLEAN_PIECE).to_numpy()
    index = np.flatnonzero(clean)
    line_end = np.r_[seps, len(raw) - text.endswith("\n")][index]  # the newline (or end) after each Returned: line
    before = np.cumsum(nlines) - nlines
    parts, fits = _parts(buf, raw, newlines, content[index], line_end, before[index], nlines[index])
    clean[index[~fits]] = False
    return Cut(Pieces(start, end, nlines, before, clean), parts, spy.dialect_hints(text))


_ASCII_MASK = bytes(range(128)) + b"?" * 128
_MAX_VIEW_OFFSET = 1 << 31  # a block this large (one record of 2 GiB) is left to the scanner
_MAX_DIGITS = 18  # a longer number is left to the slow path (int64, and Python's int, agree below this)


def _parts(
    buf: np.ndarray, raw: bytes, newlines: np.ndarray, first: np.ndarray, line_end: np.ndarray, before: np.ndarray, nlines: np.ndarray
) -> tuple[Parts, np.ndarray]:
    """The parts of clean pieces, cut where `CLEAN_PIECE` put them (its lines are known:
    header, timestamp, body, ``Returned:``); and which pieces' numbers all fit
    ``_MAX_DIGITS`` (the others are left out).  Strings are views of ``raw``: no text is copied."""
    header_end = newlines[np.searchsorted(newlines, first)]
    stamp_end = newlines[np.searchsorted(newlines, header_end + 1)]
    returned = newlines[np.searchsorted(newlines, line_end) - 1] + 1
    has_pid = buf[header_end + 1] == ord("P")  # "P:<pid>; T:[0x]<tid> " (0.24+)
    negative = buf[returned + 11] == ord("-")  # "Returned:  " is 11 characters
    (seq, pid, rv), (seq_digits, pid_digits, rv_digits) = _numbers(buf, first, header_end + 3, returned + 11 + negative)
    tid_start = header_end + 3 + pid_digits + 4
    tid_start = tid_start + 2 * ((_at(buf, tid_start) == ord("0")) & (_at(buf, tid_start + 1) == ord("x")))
    (tid,), (tid_digits,) = _numbers(buf, tid_start)
    fits = (seq_digits <= _MAX_DIGITS) & (rv_digits <= _MAX_DIGITS) & (~has_pid | ((pid_digits <= _MAX_DIGITS) & (tid_digits <= _MAX_DIGITS)))
    fits &= ~negative  # a negative CK_RV (a 32-bit long's rendering) is mapped by `records.unsigned`, on the slow path
    pid = np.where(has_pid, pid, -1)[fits]
    func_start, name_start = first + seq_digits + 2, returned + 12 + negative + rv_digits
    header_end, stamp_end, returned, line_end = header_end[fits], stamp_end[fits], returned[fits], line_end[fits]
    func, ts, body, rv_name = _views(
        buf, raw, (func_start[fits], header_end), (stamp_end - 23, stamp_end), (stamp_end, returned), (name_start[fits], line_end)
    )
    frame = pl.DataFrame(
        {
            "before": before[fits],
            "nlines": nlines[fits],
            "seq": seq[fits],
            "func": func,
            "pid": pa.array(pid.astype(np.uint64), mask=pid < 0),
            "tid": pa.array(tid[fits].astype(np.uint64), mask=pid < 0),
            "ts": ts,
            "body": body,
            "rv": rv[fits].astype(np.uint64),
            "rv_name": rv_name,
        }
    )
    return Parts(frame, before[fits], nlines[fits], seq[fits], pid), fits


def _per_piece(positions: np.ndarray, content: np.ndarray) -> np.ndarray:
    """How many of ``positions`` fall in each piece (pieces start at ``content``)."""
    return np.bincount(np.searchsorted(content, positions, side="right") - 1, minlength=content.size)


_RETURNED = np.frombuffer(b"Returned:", dtype=np.uint8)


def _returned_at(buf: np.ndarray) -> np.ndarray:
    """Where ``Returned:`` stands in the block (a clean piece has one: its own last line)."""
    at = np.flatnonzero(buf[: buf.size - _RETURNED.size + 1] == _RETURNED[0])
    for offset in range(1, _RETURNED.size):
        at = at[buf[at + offset] == _RETURNED[offset]]
    return at


def _stamp_ends(buf: np.ndarray, newlines: np.ndarray) -> np.ndarray:
    """The line ends that close a ``:SS.mmm`` (a clean piece has one: its own timestamp's);
    `spy.is_clean_body`'s glued-timestamp test, for a whole block at once."""
    at = newlines[newlines >= 7]
    digit = lambda back: (buf[at - back] >= ord("0")) & (buf[at - back] <= ord("9"))  # noqa: E731
    return at[(buf[at - 7] == ord(":")) & digit(6) & digit(5) & (buf[at - 4] == ord(".")) & digit(3) & digit(2) & digit(1)]


def _at(buf: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The byte at each position (the last one past the end: for rows whose value is unused)."""
    return buf[np.minimum(position, buf.size - 1)]


def _numbers(buf: np.ndarray, *starts: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The decimal number at each of ``starts``' positions, and its count of digits (over
    ``_MAX_DIGITS``: too long); all columns in one pass (numpy's cost is per call here)."""
    start = np.concatenate(starts)
    window = _at(buf, start[:, None] + np.arange(_MAX_DIGITS + 1)) - np.uint8(ord("0"))  # a non-digit wraps past 9
    is_digit = window <= 9
    count = np.where(is_digit.all(axis=1), _MAX_DIGITS + 1, np.argmin(is_digit, axis=1))
    value = np.zeros(start.size, dtype=np.int64)
    for column in range(min(int(count.max(initial=0)), _MAX_DIGITS)):
        more = column < count
        value[more] = value[more] * 10 + window[more, column]
    cuts = np.cumsum([s.size for s in starts])[:-1]
    return np.split(value, cuts), np.split(count, cuts)


def _views(buf: np.ndarray, raw: bytes, *spans: tuple[np.ndarray, np.ndarray]) -> list[pa.Array]:
    """``raw[start[i]:stop[i]]`` for each i of each ``(start, stop)``, as Arrow string view
    arrays over ``raw`` itself; all columns in one pass."""
    start = np.concatenate([first for first, _ in spans])
    size = np.concatenate([stop for _, stop in spans]) - start
    views = np.zeros((size.size, 16), dtype=np.uint8)
    views[:, 0:4] = size.astype("<i4").view(np.uint8).reshape(-1, 4)
    head = _at(buf, start[:, None] + np.arange(12))
    inline = size <= 12  # short strings live in the view itself, long ones point into the buffer
    views[inline, 4:16] = np.where(np.arange(12) < size[inline, None], head[inline], 0)
    views[~inline, 4:8] = head[~inline, :4]
    views[~inline, 12:16] = start[~inline].astype("<i4").view(np.uint8).reshape(-1, 4)
    array = pa.Array.from_buffers(pa.string_view(), size.size, [None, pa.py_buffer(views), pa.py_buffer(raw)])
    offsets = np.cumsum([0] + [first.size for first, _ in spans]).tolist()
    return [array.slice(a, b - a) for a, b in zip(offsets, offsets[1:])]


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


def _strings(raw: bytes, offsets: np.ndarray) -> pl.Series:
    """``raw[offsets[i]:offsets[i + 1]]`` for each i (ASCII), as one string column, without copying in Python."""
    array = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(raw))
    return pl.from_arrow(array)
