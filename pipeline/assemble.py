"""Turn the grammar's token stream into call records, accounting for every line.

This is the reference engine's assembler; ``native/`` implements the same rules, and the
differential test holds the two to one output.  A clean record (the grammar's ``record``)
that overlaps no active call of its process is taken whole.  Everything else arrives line by
line (a run of body lines in one piece) and goes through a small state machine that follows
the spy's own rules (format notes §6-§8):

* a header opens a record; it stays *open* until a ``Returned:`` unit closes it;
* a timestamp unit belongs to the newest open record that has none yet;
* a ``Returned:`` unit closes the newest open record that has a timestamp (a call cannot
  return before it was stamped), else the newest open one;
* other spy units belong to the newest open record; foreign lines are *other* text, and
  spy-shaped lines no record could take are *unreadable* (`Coverage`);
* an open record is given up (``complete = False``) when its thread starts another call
  (same ``P:``/``T:``), when more than 64 records are open, or at the end of the input.
  (Another process's chunks may arrive hundreds of records later, §7, so age alone is no
  reason to give up.)

Which process (banner) a call belongs to is `pipeline.processes`' concern.

A record that overlapped another *active* record of the same process (or of an unknown
one) is marked ``uncertain``: which of them a detached line belongs to is a guess.  An open
record that received nothing during the last 32 calls no longer counts as active, so one
truncated record does not taint the rest of a log.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyparsing as pp

from grammars import spy
from pipeline.processes import ProcessTracker
from pipeline.records import I64_MAX, RawCall, unsigned

ACTIVE_HEADERS = 32
MAX_OPEN = 64


@dataclass
class Coverage:
    """Where every input line went; the parts add up to ``lines``.

    A line that no record took is either an *unreadable* call-record line (shaped like spy
    output -- a header, stamp, ``Returned:``, ``[in]``/``[out]`` or dump line -- that could not
    be read into a call: a record was lost, and the user is warned) or *other* text
    (application output, prose, comments: nothing of the trace is lost).
    ``unparsed_lines`` is their sum, kept for readers of older manifests.
    """

    lines: int = 0
    record_lines: int = 0
    banner_lines: int = 0
    blank_lines: int = 0
    unparsed_lines: int = 0
    unreadable_lines: int = 0
    unreadable_spans: list[list[int]] = field(default_factory=list)  # [first, last] line numbers, 1-based
    other_lines: int = 0
    other_spans: list[list[int]] = field(default_factory=list)

    MAX_SPANS = 100_000

    def add_unreadable(self, line: int, last: int | None = None) -> None:
        """Lines ``line`` .. ``last`` (default: just ``line``) look like spy output but were not read."""
        self.unreadable_lines += self._add(self.unreadable_spans, line, line if last is None else last)

    def add_other(self, line: int, last: int | None = None) -> None:
        """Lines ``line`` .. ``last`` (default: just ``line``) are not spy output."""
        self.other_lines += self._add(self.other_spans, line, line if last is None else last)

    def _add(self, spans: list[list[int]], line: int, last: int) -> int:
        self.unparsed_lines += last - line + 1
        if spans and spans[-1][1] == line - 1:
            spans[-1][1] = last
        elif len(spans) < self.MAX_SPANS:
            spans.append([line, last])
        return last - line + 1

    def absorb(self, later: Coverage) -> None:
        """Add the coverage of the lines that follow (a parallel worker's range)."""
        for name in ("lines", "record_lines", "banner_lines", "blank_lines"):
            setattr(self, name, getattr(self, name) + getattr(later, name))
        for first, last in later.unreadable_spans:
            self.add_unreadable(first, last)
        for first, last in later.other_spans:
            self.add_other(first, last)


@dataclass
class Counts:
    records: int = 0
    complete: int = 0
    incomplete: int = 0
    uncertain: int = 0
    banners: int = 0
    load_errors: int = 0

    def absorb(self, other: Counts) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass(eq=False)
class _Open:
    """A record being assembled on the slow path."""

    seq: int
    func: str
    line: int
    process: int
    active_at: int  # header count when it last received a unit
    pid: int | None = None
    tid: int | None = None
    ts: str | None = None
    body: list[str] = field(default_factory=lambda: [""])
    end_line: int = 0
    rv: int | None = None
    rv_name: str | None = None
    overlaps: list[_Open] = field(default_factory=list)  # records open at the same time


def _same_process(record: _Open, pid: int | None) -> bool:
    return record.pid is None or pid is None or record.pid == pid


@dataclass(frozen=True)
class Start:
    """Where an assembler starts in its source, for parsing a part of a file.

    A worker of a parallel parse, or an incremental job, starts somewhere inside a log: it
    needs the line number and banner index reached there, and it *owns* only a range of
    lines (records whose header is in it, coverage of its lines); text before the range is
    read only to warm up the state, text after it only to close the records it owns.
    """

    lines_before: int = 0  # lines in the source before the first text fed
    process: int = 0  # banner index in force at that point
    seen_content: bool = False  # a banner or record came before (the next banner is a new process)
    own_from: int = 1
    own_to: int = sys.maxsize
    pid_process: dict[int, int] = field(default_factory=dict)  # banner index of each pid seen
    next_seq: dict[int, int] = field(default_factory=dict)  # next counter value of each process
    last_pidless: int = 0  # process of the previous header (see `ProcessTracker`)

    def tracker(self) -> ProcessTracker:
        return ProcessTracker(self.process, self.seen_content, self.last_pidless, dict(self.next_seq), dict(self.pid_process))


class Assembler:
    """Per-source state: banners and processes, open records, counts and coverage."""

    def __init__(
        self,
        source: str,
        emit: Callable[[RawCall], None],
        start: Start = Start(),
    ) -> None:
        self.source = source
        self.emit = emit
        self.coverage = Coverage()
        self.counts = Counts()
        self.dialects: set[str] = set()
        self.line = start.lines_before
        self.own_from, self.own_to = start.own_from, start.own_to
        self.tracker = start.tracker()
        self.processes_used: set[int] = set()
        self._open: list[_Open] = []
        self._held: list[_Open] = []  # closed, but a call they overlapped may still claim their Returned
        self._recent: dict[_Open, None] = {}  # the open records, least recently active first (`_active`)
        self._threads: Counter[tuple[int, int]] = Counter()  # open records per (pid, tid)
        self._headers = 0
        self._activity = -ACTIVE_HEADERS - 1  # header count when an open record last received a unit

    # --- feeding ---

    def feed(self, text: str) -> None:
        """Consume one block of text that starts at a line start and ends after a newline."""
        self.dialects |= spy.dialect_hints(text)
        self.line = self._tokens(text, self.line)

    def _tokens(self, text: str, line: int, records: bool = True) -> int:
        """Consume the grammar's tokens of ``text``; returns the line number reached."""
        for token in spy.scan(text, records):
            if token.kind == "records":
                for parsed in token.records:
                    line = self._record(text, spy.record_parts(parsed, text), line)
            elif token.kind == "run":
                line = self._body_run(text, token.start, token.end, line)
            elif token.kind == "line":
                line = self._slow_lines(text, token.start, token.end, line)
            else:  # known and blank lines: whole lines whose kinds need no classifier call
                line = self._known_lines(text[token.start : token.end - 1].split("\n"), line)
        return line

    def owns_open_records(self) -> bool:
        """True while a record whose header this assembler owns is still open or held."""
        return any(r.line <= self.own_to for r in self._open) or any(r.line <= self.own_to for r in self._held)

    @property
    def quiet(self) -> bool:
        """No record is open or held: everything fed so far has been emitted (a safe resume point)."""
        return not self._open and not self._held

    def resume_point(self) -> Start:
        """Where a new assembler would start to carry on from here (meaningful when `quiet`)."""
        t = self.tracker
        return Start(
            lines_before=self.line, process=t.process, seen_content=t.seen,
            pid_process=dict(t.pid_process), next_seq=dict(t.next_seq), last_pidless=t.last_pidless,
        )

    @property
    def pid_process(self) -> dict[int, int]:
        return self.tracker.pid_process

    def finish(self) -> None:
        """End of input: records still open are incomplete."""
        for record in list(self._open):
            self._close(record)

    # --- records ---

    def _record(self, text: str, parts: spy.RecordParts, line: int) -> int:
        """A record of ``text`` (its `spy.RecordParts`): one row at once if it is clean and
        overlaps no active call of its process, else its lines take the line path.  Returns
        the line number reached."""
        nlines = text.count("\n", parts.start, parts.end) + (text[parts.end - 1] != "\n")
        if not spy.is_clean_body(parts.body) or not self._fast_record(parts, line, nlines):
            return self._tokens(text[parts.start : parts.end], line, records=False)
        if self.own_from <= line + 2 <= self.own_to:
            coverage = self.coverage
            coverage.lines += nlines
            coverage.blank_lines += 1  # the separator line in front of the header
            coverage.record_lines += nlines - 1
        return line + nlines

    def _fast_record(self, parts: spy.RecordParts, line: int, nlines: int) -> bool:
        """Emit a clean record that overlaps no active call of its process; False: use the slow path."""
        seq, func, pid, tid, ts, body, rv, rv_name, _, _ = parts
        if self._overlaps_active(pid):
            return False
        self._headers += 1
        process = self.tracker.header(seq)
        if pid is not None:
            process = self.tracker.pid(pid)
        self._emit(seq, func, line + 2, process, pid, tid, ts, rv, rv_name, body, line + nlines, False)
        return True

    def _overlaps_active(self, pid: int | None) -> bool:
        """A record of this pid would overlap an active slow-path record of its process."""
        return bool(self._open) and any(_same_process(other, pid) for other in self._active())

    # --- the slow path ---

    def _owned(self, first: int, last: int) -> int:
        """How many of the lines ``first`` .. ``last`` are this assembler's to account for."""
        return max(0, min(last, self.own_to) - max(first, self.own_from) + 1)

    def _known_lines(self, lines: Iterable[str], line: int) -> int:
        """Blank, header, timestamp and ``Returned:`` lines (`spy.known_kind`), after line ``line``."""
        for one in lines:
            line += 1
            self._slow_line(one, line, spy.known_kind(one))
        return line

    def _slow_lines(self, text: str, start: int, end: int, line: int) -> int:
        """Lines ``text[start:end]`` one by one; returns the line number reached."""
        nlines = text.count("\n", start, end) + (text[end - 1] != "\n")
        for offset, one in enumerate(text[start:end].split("\n")[:nlines]):
            self._slow_line(one, line + 1 + offset)
        return line + nlines

    def _body_run(self, text: str, start: int, end: int, line: int) -> int:
        """Body lines (``text[start:end]``, each ending in a newline) outside a clean record.

        Each is a body unit, so all go to the newest open record, as `_unit` would send them
        one by one; with no record open they are unparsed.
        """
        first, last = line + 1, line + text.count("\n", start, end)
        owned = self._owned(first, last)
        coverage = self.coverage
        coverage.lines += owned
        if self._open:
            record = self._open[-1]
            record.body.append(text[start : end - 1])
            self._touch(record)
            record.end_line = last
            coverage.record_lines += owned
        elif owned:  # body lines of a record whose header is not in the log (or was lost), or indented prose
            for number, one in enumerate(text[start : end - 1].split("\n"), first):
                if self.own_from <= number <= self.own_to:
                    self._unclaimed(spy.classify(one)[0], number)
        return last

    def _slow_line(self, text: str, line: int, known: tuple[str, pp.ParseResults | None] | None = None) -> None:
        """One line; ``known``: its kind and fields, when the scanner told them (a whole line, one unit)."""
        owned = self.own_from <= line <= self.own_to
        coverage = self.coverage
        coverage.lines += owned
        units = [text] if known or not text else spy.split_units(text)
        used, shaped = False, "foreign"  # the most spy-like kind among the units
        for unit in units:
            kind, match = known or spy.classify(unit)
            if shaped in ("foreign", "indented"):
                shaped = kind
            if kind == "header" and len(units) > 1:
                kind = "foreign"  # a header is a whole line (its unit starts and ends with a newline)
            if kind == "blank":
                coverage.blank_lines += owned
                return
            if kind in ("banner", "load-result"):
                self._banner(kind, unit, owned)
                coverage.banner_lines += owned
                return
            used |= self._unit(kind, match, unit, line)
        if not owned:
            return
        if used:
            coverage.record_lines += 1
        else:
            self._unclaimed(shaped, line)

    def _unclaimed(self, kind: str, line: int) -> None:
        """A line no record took: spy output (a call, or part of one, is lost) or other text.
        A merely indented line is the spy's only inside a record; alone it is prose."""
        if kind in ("foreign", "indented"):
            self.coverage.add_other(line)
        else:
            self.coverage.add_unreadable(line)

    def _banner(self, kind: str, unit: str, owned: bool) -> None:
        if kind == "banner":
            self.tracker.banner()
            self.counts.banners += owned
        elif unit.startswith("Error:"):
            self.counts.load_errors += owned

    def _unit(self, kind: str, fields: pp.ParseResults | None, unit: str, line: int) -> bool:
        """Attach one unit to a record; False when it belongs to none (it is unparsed)."""
        if kind == "header":
            self._open_record(int(fields["seq"]), fields["func"], line)
            return True
        if kind == "foreign" or not self._open:
            return False
        if kind == "timestamp":
            record = next((r for r in reversed(self._open) if r.ts is None), None)
            if record is None:
                return False
            record.ts = fields["ts"]
            if "pid" in fields:
                record.pid, record.tid = int(fields["pid"]), int(fields["tid"])
                record.process = self.tracker.pid(record.pid)
                self._threads[record.pid, record.tid] += 1
                self._thread_moved_on(record)
        elif kind == "returned":
            record = next((r for r in reversed(self._open) if r.ts is not None), self._open[-1])
            record.rv, record.rv_name = int(fields["rv"]), fields["rv_name"]
            record.end_line = line
            self._close(record)
            return True
        else:
            record = self._open[-1]
            record.body.append(unit)
        self._touch(record)
        record.end_line = line
        return True

    def _open_record(self, seq: int, func: str, line: int) -> None:
        self._headers += 1
        record = _Open(seq, func, line, self.tracker.header(seq), self._headers, end_line=line)
        self._activity = self._headers
        for other in self._active():
            other.overlaps.append(record)
            record.overlaps.append(other)
        self._open.append(record)
        self._recent[record] = None
        if len(self._open) > MAX_OPEN:
            self._close(self._open[0])

    def _touch(self, record: _Open) -> None:
        """``record`` received a unit: it is the most recently active one."""
        del self._recent[record]
        self._recent[record] = None
        record.active_at = self._activity = self._headers

    def _active(self) -> list[_Open]:
        """The open records that received a unit during the last ``ACTIVE_HEADERS`` calls.

        ``_recent`` is in order of ``active_at`` (always set to the current header count),
        so only its newest end is read, not every open record (dozens linger in a log with
        truncated records).
        """
        if self._headers - self._activity > ACTIVE_HEADERS:
            return []  # no open record received anything lately (the common case: skip the scan)
        since = self._headers - ACTIVE_HEADERS
        active = []
        for record in reversed(self._recent):
            if record.active_at < since:
                break
            active.append(record)
        return active

    def _thread_moved_on(self, current: _Open) -> None:
        """A thread makes one call at a time: when it starts another, its previous call returned.

        If that call is still open, its ``Returned:`` was given to an overlapping call of
        another thread; take it back, and let that call wait for the next one.
        """
        if self._threads[current.pid, current.tid] < 2:
            return  # no other open call of this thread (the common case: skip the scan)
        for record in [r for r in self._open if r is not current and r.pid == current.pid and r.tid == current.tid]:
            taker = next(
                (
                    h for h in reversed(self._held)
                    if h.rv is not None and h in record.overlaps and h.tid != record.tid
                    and h.end_line > record.line  # a call cannot return before its header
                ),
                None,
            )
            if taker is None:
                self._close(record)
                continue
            record.rv, record.rv_name, record.end_line = taker.rv, taker.rv_name, taker.end_line
            taker.rv = taker.rv_name = None
            self._held.remove(taker)
            self._open.insert(self._open.index(record), taker)
            self._recent = dict.fromkeys(sorted(self._open, key=lambda r: r.active_at))
            if taker.pid is not None:
                self._threads[taker.pid, taker.tid] += 1
            self._close(record)

    def _close(self, record: _Open) -> None:
        """Close a record; it is emitted once no call it overlapped could still claim its Returned."""
        self._open.remove(record)
        del self._recent[record]
        if record.pid is not None:
            self._threads[record.pid, record.tid] -= 1
        self._held.append(record)
        claimants = {r for r in self._active() if r.tid is not None}
        for held in list(self._held):
            if not claimants or claimants.isdisjoint(held.overlaps):
                self._held.remove(held)
                self._emit_open(held)

    def _emit_open(self, record: _Open) -> None:
        uncertain = any(_same_process(record, other.pid) for other in record.overlaps)
        record.overlaps = []  # break the reference cycles between overlapping records
        self._emit(
            record.seq, record.func, record.line, record.process, record.pid, record.tid, record.ts,
            record.rv, record.rv_name, "\n".join(record.body) + "\n", record.end_line, uncertain,
        )

    # --- shared ---

    def _emit(self, seq, func, line, process, pid, tid, ts, rv, rv_name, body, end_line, uncertain) -> None:
        if not self.own_from <= line <= self.own_to:
            return
        complete = rv is not None
        counts = self.counts
        counts.records += 1
        if complete:
            counts.complete += 1
        else:
            counts.incomplete += 1
        if uncertain:
            counts.uncertain += 1
        self.processes_used.add(process)
        problems: list[str] = []
        pid, tid, rv = unsigned(pid, "pid", problems), unsigned(tid, "tid", problems), unsigned(rv, "rv", problems)
        if seq > I64_MAX:
            seq = None
            problems.append("out-of-range:seq")
        self.emit(RawCall(self.source, process, pid, tid, seq, line, ts, func, rv, rv_name, complete, end_line, uncertain, problems or None, body))

    @property
    def processes(self) -> int:
        return max(len(self.processes_used), self.counts.banners)
