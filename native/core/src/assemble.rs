//! Call records from the grammar's tokens, every line accounted for: `pipeline/assemble.py`.
//!
//! The token scanner is `spy.scan` (a clean record whole, a run of body lines, a run of
//! header/timestamp/`Returned:` lines, or one line), and the state machine is the
//! `Assembler`'s: open and held records, a timestamp to the newest record without one, a
//! `Returned:` to the newest with one, a thread that starts another call ends its previous
//! one (taking back a `Returned:` an overlapping call took), at most `MAX_OPEN` open records,
//! and `uncertain` for records that overlapped an active call of the same (or an unknown)
//! process.

use crate::columns::Row;
use crate::lines::{self, Kind};
use crate::tracker::Tracker;
use std::collections::HashMap;

pub const ACTIVE_HEADERS: u64 = 32;
pub const MAX_OPEN: usize = 64;
pub const MAX_SPANS: usize = 100_000;

/// Where every input line went; the parts add up to `lines`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    pub lines: u64,
    pub record_lines: u64,
    pub banner_lines: u64,
    pub blank_lines: u64,
    pub unreadable_lines: u64,
    pub other_lines: u64,
    pub unreadable_spans: Vec<[u64; 2]>,
    pub other_spans: Vec<[u64; 2]>,
}

fn add_span(spans: &mut Vec<[u64; 2]>, first: u64, last: u64) {
    if let Some(s) = spans.last_mut() {
        if s[1] + 1 == first {
            s[1] = last;
            return;
        }
    }
    if spans.len() < MAX_SPANS {
        spans.push([first, last]);
    }
}

impl Coverage {
    pub fn add_unreadable(&mut self, first: u64, last: u64) {
        self.unreadable_lines += last - first + 1;
        add_span(&mut self.unreadable_spans, first, last);
    }

    pub fn add_other(&mut self, first: u64, last: u64) {
        self.other_lines += last - first + 1;
        add_span(&mut self.other_spans, first, last);
    }

    /// Add the coverage of the lines that follow (another range of the same file).
    pub fn absorb(&mut self, later: &Coverage) {
        self.lines += later.lines;
        self.record_lines += later.record_lines;
        self.banner_lines += later.banner_lines;
        self.blank_lines += later.blank_lines;
        for s in &later.unreadable_spans {
            self.add_unreadable(s[0], s[1]);
        }
        for s in &later.other_spans {
            self.add_other(s[0], s[1]);
        }
        // lines beyond the span cap were counted but not listed
        self.unreadable_lines += later.unreadable_lines - span_lines(&later.unreadable_spans);
        self.other_lines += later.other_lines - span_lines(&later.other_spans);
    }
}

fn span_lines(spans: &[[u64; 2]]) -> u64 {
    spans.iter().map(|s| s[1] - s[0] + 1).sum()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    pub complete: u64,
    pub incomplete: u64,
    pub uncertain: u64,
    pub banners: u64,
    pub load_errors: u64,
}

impl Counts {
    pub fn absorb(&mut self, o: &Counts) {
        self.records += o.records;
        self.complete += o.complete;
        self.incomplete += o.incomplete;
        self.uncertain += o.uncertain;
        self.banners += o.banners;
        self.load_errors += o.load_errors;
    }
}

/// Where an assembler starts in its source (`assemble.Start`).
#[derive(Clone, Debug)]
pub struct Start {
    pub lines_before: u64,
    pub tracker: Tracker,
    pub own_from: u64,
    pub own_to: u64,
}

impl Default for Start {
    fn default() -> Self {
        Start {
            lines_before: 0,
            tracker: Tracker::default(),
            own_from: 1,
            own_to: u64::MAX,
        }
    }
}

/// A number as the log printed it, saturated at `u128::MAX` (only `u64` values reach the table).
pub fn big(digits: &[u8]) -> u128 {
    digits.iter().fold(0u128, |v, &d| {
        v.checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d.wrapping_sub(b'0'))))
            .unwrap_or(u128::MAX)
    })
}

fn signed(text: &[u8]) -> i128 {
    match text.strip_prefix(b"-") {
        Some(d) => -(i128::try_from(big(d)).unwrap_or(i128::MAX)),
        None => i128::try_from(big(text)).unwrap_or(i128::MAX),
    }
}

type Stamp = [u8; 23];

fn stamp_of(s: &[u8]) -> Stamp {
    let mut out = [0u8; 23];
    let n = s.len().min(23);
    out[..n].copy_from_slice(&s[..n]);
    out
}

/// A record being assembled on the slow path.
#[derive(Debug)]
struct Open {
    id: u64,
    seq: u128,
    func: Vec<u8>,
    line: u64,
    process: i32,
    active_at: u64,
    pid: Option<u128>,
    tid: Option<u128>,
    ts: Option<Stamp>,
    /// Each unit behind a newline (`"\n".join` of the Python list that starts with "").
    body: Vec<u8>,
    end_line: u64,
    rv: Option<(i128, Vec<u8>)>,
    /// Records open at the same time, with their pid as last known (kept up to date while
    /// both are alive: the relation is symmetric).
    overlaps: Vec<(u64, Option<u128>)>,
}

fn same_process(a: Option<u128>, b: Option<u128>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// The consumer of emitted rows.
pub trait Sink {
    fn row(&mut self, row: &Row<'_>);
}

/// One line's content (without its newline) at `p`, and where the next line starts; whether
/// the line ended with a newline.
#[inline]
fn line_at(text: &[u8], p: usize) -> (&[u8], usize, bool) {
    match memchr::memchr(b'\n', &text[p..]) {
        Some(i) => (&text[p..p + i], p + i + 1, true),
        None => (&text[p..], text.len(), false),
    }
}

/// A clean record's parts (`spy.record_parts`), as slices of the text.
struct Parts<'a> {
    seq: u128,
    func: &'a [u8],
    pid: Option<u128>,
    tid: Option<u128>,
    ts: &'a [u8],
    body: &'a [u8],
    rv: i128,
    rv_name: &'a [u8],
    nlines: u64,
    end: usize,
    clean: bool,
}

/// `RECORD_PATTERN` at `p` (its blank line, which may hold blanks, starts there).
fn record_at<'a>(text: &'a [u8], p: usize, marks: &lines::Marks) -> Option<Parts<'a>> {
    let (b, h_start, nl) = line_at(text, p);
    if !nl || !lines::blank(b) {
        return None;
    }
    let (h, q, nl) = line_at(text, h_start);
    if !nl {
        return None;
    }
    let (seq, func) = lines::header(h)?;
    let (t, body_start, nl) = line_at(text, q);
    if !nl {
        return None;
    }
    let stamp = lines::stamp(t)?;
    let mut r = body_start;
    let mut clean = true;
    let mut nlines = 3;
    loop {
        if r >= text.len() {
            return None;
        }
        let (l, next, nl) = line_at(text, r);
        if nl && lines::body_start(l) {
            clean &= !lines::ends_with_stamp(lines::rstrip(l));
            nlines += 1;
            r = next;
            continue;
        }
        let (rv, rv_name) = lines::returned(l)?;
        clean &= !marks.within(body_start, r);
        return Some(Parts {
            seq: big(seq),
            func,
            pid: stamp.pid.map(big),
            tid: stamp.tid.map(big),
            ts: stamp.stamp,
            body: &text[body_start - 1..r],
            rv: signed(rv),
            rv_name,
            nlines: nlines + 1,
            end: next,
            clean,
        });
    }
}

/// Which of `known_kind`'s kinds a whole line is, if any.
fn known(line: &[u8]) -> Option<Kind> {
    if lines::returned(line).is_some() {
        Some(Kind::Returned)
    } else if lines::header(line).is_some() {
        Some(Kind::Header)
    } else if lines::stamp(line).is_some() {
        Some(Kind::Timestamp)
    } else {
        None
    }
}

pub struct Assembler {
    pub coverage: Coverage,
    pub counts: Counts,
    pub tracker: Tracker,
    pub processes_used: std::collections::BTreeSet<i32>,
    pub line: u64,
    own_from: u64,
    own_to: u64,
    open: Vec<Open>,
    held: Vec<Open>,
    threads: HashMap<(u128, u128), i64>,
    headers: u64,
    activity: i128,
    next_id: u64,
}

impl Assembler {
    pub fn new(start: Start) -> Self {
        Assembler {
            coverage: Coverage::default(),
            counts: Counts::default(),
            tracker: start.tracker,
            processes_used: Default::default(),
            line: start.lines_before,
            own_from: start.own_from,
            own_to: start.own_to,
            open: Vec::new(),
            held: Vec::new(),
            threads: HashMap::new(),
            headers: 0,
            activity: -(ACTIVE_HEADERS as i128) - 1,
            next_id: 0,
        }
    }

    /// No record is open or held: everything fed so far has been emitted.
    pub fn quiet(&self) -> bool {
        self.open.is_empty() && self.held.is_empty()
    }

    /// A record whose header this assembler owns is still open or held.
    pub fn owns_open_records(&self) -> bool {
        self.open
            .iter()
            .chain(self.held.iter())
            .any(|r| r.line <= self.own_to)
    }

    /// Consume one block (it starts at a line start; all but the input's last end in `\n`).
    pub fn feed(&mut self, text: &[u8], sink: &mut dyn Sink) {
        self.tokens(text, true, sink);
    }

    /// End of input: records still open are incomplete.
    pub fn finish(&mut self, sink: &mut dyn Sink) {
        while !self.open.is_empty() {
            self.close(0, sink);
        }
    }

    fn owned(&self, line: u64) -> bool {
        self.own_from <= line && line <= self.own_to
    }

    fn owned_count(&self, first: u64, last: u64) -> u64 {
        let (a, b) = (first.max(self.own_from), last.min(self.own_to));
        if b >= a {
            b - a + 1
        } else {
            0
        }
    }

    /// `Assembler._tokens`.
    fn tokens(&mut self, text: &[u8], records: bool, sink: &mut dyn Sink) {
        let n = text.len();
        let marks = lines::Marks::of(text);
        let strict = |l: &[u8], at: usize| lines::strict_body(l, || marks.within(at, at + l.len()));
        let mut p = 0;
        while p < n {
            if records && matches!(text[p], b'\n' | b' ' | b'\t' | b'\r') {
                if let Some(parts) = record_at(text, p, &marks) {
                    let end = parts.end;
                    if parts.clean && !self.overlaps_active(parts.pid) {
                        self.record(parts, sink);
                    } else {
                        // its lines take the line path (a glued unit, or an overlap with an active call)
                        self.tokens(&text[p..end], false, sink);
                    }
                    p = end;
                    continue;
                }
            }
            let (l, next, nl) = line_at(text, p);
            if nl && strict(l, p) {
                let mut q = next;
                let mut count = 1;
                while q < n {
                    let (l, next, nl) = line_at(text, q);
                    if !(nl && strict(l, q)) {
                        break;
                    }
                    count += 1;
                    q = next;
                }
                self.body_run(&text[p..q - 1], count, sink);
                p = q;
                continue;
            }
            // known lines: [ blank ] ( header | timestamp | returned ) NL { ... } | blank
            let blank = nl && lines::blank(l);
            let mut q = if blank { next } else { p };
            let mut kinds = Vec::new();
            while q < n {
                let (l, next, nl) = line_at(text, q);
                match known(l) {
                    Some(k) if nl => kinds.push((q, l.len(), k)),
                    _ => break,
                }
                q = next;
            }
            if blank || !kinds.is_empty() {
                if blank {
                    self.line += 1;
                    self.slow_line(l, self.line, Some(Kind::Blank), sink);
                }
                for (at, len, kind) in kinds {
                    self.line += 1;
                    self.slow_line(&text[at..at + len], self.line, Some(kind), sink);
                }
                p = q;
                continue;
            }
            self.line += 1;
            self.slow_line(l, self.line, None, sink);
            p = next;
        }
    }

    /// `Assembler._record`: a clean record that overlaps no active call of its process, whole.
    fn record(&mut self, parts: Parts<'_>, sink: &mut dyn Sink) {
        let line = self.line;
        self.headers += 1;
        let mut process = self.tracker.header(parts.seq);
        if let Some(pid) = parts.pid {
            process = self.tracker.pid(pid_key(pid));
        }
        let header = line + 2;
        if self.owned(header) {
            let c = &mut self.coverage;
            c.lines += parts.nlines;
            c.blank_lines += 1;
            c.record_lines += parts.nlines - 1;
        }
        self.emit(
            sink,
            &Row {
                process,
                pid: parts.pid,
                tid: parts.tid,
                seq: parts.seq,
                line: header,
                ts: Some(parts.ts),
                func: parts.func,
                rv: Some((parts.rv, parts.rv_name)),
                end_line: line + parts.nlines,
                uncertain: false,
                body: parts.body,
            },
        );
        self.line += parts.nlines;
    }

    fn overlaps_active(&self, pid: Option<u128>) -> bool {
        !self.open.is_empty() && self.active().any(|o| same_process(o.pid, pid))
    }

    /// The open records that received a unit during the last `ACTIVE_HEADERS` calls.
    fn active(&self) -> impl Iterator<Item = &Open> {
        let lapsed = i128::from(self.headers) - self.activity > ACTIVE_HEADERS as i128;
        let since = self.headers.saturating_sub(ACTIVE_HEADERS);
        let since_signed = i128::from(self.headers) - ACTIVE_HEADERS as i128;
        self.open
            .iter()
            .filter(move |r| !lapsed && (since_signed < 0 || r.active_at >= since))
    }

    fn find_open(&self, id: u64) -> Option<usize> {
        self.open.iter().position(|r| r.id == id)
    }

    /// `Assembler._body_run`: body lines (`run`, without its last newline) outside a clean record.
    fn body_run(&mut self, run: &[u8], count: u64, _sink: &mut dyn Sink) {
        let (first, last) = (self.line + 1, self.line + count);
        let owned = self.owned_count(first, last);
        self.coverage.lines += owned;
        if let Some(r) = self.open.len().checked_sub(1) {
            let rec = &mut self.open[r];
            rec.body.push(b'\n');
            rec.body.extend_from_slice(run);
            self.touch(r);
            self.open[r].end_line = last;
            self.coverage.record_lines += owned;
        } else if owned > 0 {
            // a record whose header is not in the log (or was lost), or indented prose
            for (number, line) in (first..).zip(run.split(|&b| b == b'\n')) {
                if self.owned(number) {
                    self.unclaimed(lines::classify(line), number);
                }
            }
        }
        self.line = last;
    }

    /// `Assembler._slow_line`: one line; `known`: its kind when the scanner told it.
    fn slow_line(&mut self, text: &[u8], line: u64, known: Option<Kind>, sink: &mut dyn Sink) {
        let owned = self.owned(line);
        let o = u64::from(owned);
        self.coverage.lines += o;
        let split = if known.is_some() || text.is_empty() {
            None
        } else {
            lines::split_at(text)
        };
        let units: [Option<&[u8]>; 2] = match split {
            Some(i) => [Some(&text[..i]), Some(&text[i..])],
            None => [Some(text), None],
        };
        let several = split.is_some();
        let mut used = false;
        let mut shaped = Kind::Foreign; // the most spy-like kind among the units
        for unit in units.into_iter().flatten() {
            let mut kind = known.unwrap_or_else(|| lines::classify(unit));
            if matches!(shaped, Kind::Foreign | Kind::Indented) {
                shaped = kind;
            }
            if kind == Kind::Header && several {
                kind = Kind::Foreign;
            }
            match kind {
                Kind::Blank => {
                    self.coverage.blank_lines += o;
                    return;
                }
                Kind::Banner => {
                    self.tracker.banner();
                    self.counts.banners += o;
                    self.coverage.banner_lines += o;
                    return;
                }
                Kind::LoadResult => {
                    if unit.starts_with(b"Error:") {
                        self.counts.load_errors += o;
                    }
                    self.coverage.banner_lines += o;
                    return;
                }
                _ => used |= self.unit(kind, unit, line, sink),
            }
        }
        if !owned {
            return;
        }
        if used {
            self.coverage.record_lines += 1;
        } else {
            self.unclaimed(shaped, line);
        }
    }

    /// A line no record took: spy output (a call, or part of one, is lost) or other text. A
    /// merely indented line is the spy's only inside a record; alone it is prose.
    fn unclaimed(&mut self, kind: Kind, line: u64) {
        if matches!(kind, Kind::Foreign | Kind::Indented) {
            self.coverage.add_other(line, line);
        } else {
            self.coverage.add_unreadable(line, line);
        }
    }

    /// `Assembler._unit`: attach one unit to a record; false when it belongs to none.
    fn unit(&mut self, kind: Kind, unit: &[u8], line: u64, sink: &mut dyn Sink) -> bool {
        if kind == Kind::Header {
            if let Some((seq, func)) = lines::header(unit) {
                self.open_record(big(seq), func, line, sink);
            }
            return true;
        }
        if kind == Kind::Foreign || self.open.is_empty() {
            return false;
        }
        let r = match kind {
            Kind::Timestamp => {
                let Some(r) = self.open.iter().rposition(|r| r.ts.is_none()) else {
                    return false;
                };
                let Some(s) = lines::stamp(unit) else {
                    return false;
                };
                self.open[r].ts = Some(stamp_of(s.stamp));
                let id = self.open[r].id;
                if let Some(pid) = s.pid {
                    self.stamp_pid(id, big(pid), s.tid.map(big), sink);
                }
                match self.find_open(id) {
                    Some(r) => r,
                    None => return true,
                }
            }
            Kind::Returned => {
                let r = self
                    .open
                    .iter()
                    .rposition(|r| r.ts.is_some())
                    .unwrap_or(self.open.len() - 1);
                if let Some((rv, name)) = lines::returned(unit) {
                    self.open[r].rv = Some((signed(rv), name.to_vec()));
                }
                self.open[r].end_line = line;
                self.close(r, sink);
                return true;
            }
            _ => {
                let r = self.open.len() - 1;
                let rec = &mut self.open[r];
                rec.body.push(b'\n');
                rec.body.extend_from_slice(unit);
                r
            }
        };
        self.touch(r);
        self.open[r].end_line = line;
        true
    }

    /// A record got its `P:`/`T:`: its process, its thread's count, and the thread moved on.
    fn stamp_pid(&mut self, id: u64, pid: u128, tid: Option<u128>, sink: &mut dyn Sink) {
        let Some(r) = self.find_open(id) else {
            return;
        };
        let process = self.tracker.pid(pid_key(pid));
        let rec = &mut self.open[r];
        rec.pid = Some(pid);
        rec.tid = tid;
        rec.process = process;
        let others: Vec<u64> = rec.overlaps.iter().map(|o| o.0).collect();
        for other in self.open.iter_mut().chain(self.held.iter_mut()) {
            if others.contains(&other.id) {
                for entry in other.overlaps.iter_mut().filter(|e| e.0 == id) {
                    entry.1 = Some(pid);
                }
            }
        }
        *self.threads.entry((pid, tid.unwrap_or(0))).or_insert(0) += 1;
        self.thread_moved_on(id, sink);
    }

    fn open_record(&mut self, seq: u128, func: &[u8], line: u64, sink: &mut dyn Sink) -> u64 {
        self.headers += 1;
        let id = self.next_id;
        self.next_id += 1;
        let process = self.tracker.header(seq);
        self.activity = i128::from(self.headers);
        let active: Vec<(u64, Option<u128>)> = self.active().map(|o| (o.id, o.pid)).collect();
        for other in self.open.iter_mut() {
            if active.iter().any(|a| a.0 == other.id) {
                other.overlaps.push((id, None));
            }
        }
        self.open.push(Open {
            id,
            seq,
            func: func.to_vec(),
            line,
            process,
            active_at: self.headers,
            pid: None,
            tid: None,
            ts: None,
            body: Vec::new(),
            end_line: line,
            rv: None,
            overlaps: active,
        });
        if self.open.len() > MAX_OPEN {
            self.close(0, sink);
        }
        id
    }

    fn touch(&mut self, r: usize) {
        self.open[r].active_at = self.headers;
        self.activity = i128::from(self.headers);
    }

    /// `Assembler._thread_moved_on`: a thread makes one call at a time.
    fn thread_moved_on(&mut self, current: u64, sink: &mut dyn Sink) {
        let Some(c) = self.find_open(current) else {
            return;
        };
        let (pid, tid) = (self.open[c].pid, self.open[c].tid);
        let Some(pid) = pid else {
            return;
        };
        if self
            .threads
            .get(&(pid, tid.unwrap_or(0)))
            .copied()
            .unwrap_or(0)
            < 2
        {
            return;
        }
        let same: Vec<u64> = self
            .open
            .iter()
            .filter(|r| r.id != current && r.pid == Some(pid) && r.tid == tid)
            .map(|r| r.id)
            .collect();
        for rid in same {
            let Some(r) = self.find_open(rid) else {
                continue;
            };
            let record_tid = self.open[r].tid;
            let record_line = self.open[r].line;
            let taker = self.held.iter().rposition(|h| {
                h.rv.is_some()
                    && self.open[r].overlaps.iter().any(|o| o.0 == h.id)
                    && h.tid != record_tid
                    && h.end_line > record_line // a call cannot return before its header
            });
            let Some(t) = taker else {
                self.close(r, sink);
                continue;
            };
            let mut taker = self.held.remove(t);
            let rv = taker.rv.take();
            self.open[r].rv = rv;
            self.open[r].end_line = taker.end_line;
            if let Some(tp) = taker.pid {
                *self
                    .threads
                    .entry((tp, taker.tid.unwrap_or(0)))
                    .or_insert(0) += 1;
            }
            self.open.insert(r, taker);
            self.close(r + 1, sink);
        }
    }

    /// `Assembler._close`: a record is emitted once no call it overlapped could still claim
    /// its `Returned:`.
    fn close(&mut self, r: usize, sink: &mut dyn Sink) {
        let rec = self.open.remove(r);
        if let Some(pid) = rec.pid {
            *self.threads.entry((pid, rec.tid.unwrap_or(0))).or_insert(0) -= 1;
        }
        self.held.push(rec);
        let claimants: Vec<u64> = self
            .active()
            .filter(|o| o.tid.is_some())
            .map(|o| o.id)
            .collect();
        let mut i = 0;
        while i < self.held.len() {
            let free = claimants.is_empty()
                || !self.held[i]
                    .overlaps
                    .iter()
                    .any(|o| claimants.contains(&o.0));
            if free {
                let rec = self.held.remove(i);
                self.emit_open(rec, sink);
            } else {
                i += 1;
            }
        }
    }

    fn emit_open(&mut self, mut rec: Open, sink: &mut dyn Sink) {
        let uncertain = rec.overlaps.iter().any(|o| same_process(rec.pid, o.1));
        rec.body.push(b'\n');
        self.emit(
            sink,
            &Row {
                process: rec.process,
                pid: rec.pid,
                tid: rec.tid,
                seq: rec.seq,
                line: rec.line,
                ts: rec.ts.as_ref().map(|s| &s[..]),
                func: &rec.func,
                rv: rec.rv.as_ref().map(|(v, n)| (*v, &n[..])),
                end_line: rec.end_line,
                uncertain,
                body: &rec.body,
            },
        );
    }

    fn emit(&mut self, sink: &mut dyn Sink, row: &Row<'_>) {
        if !self.owned(row.line) {
            return;
        }
        let c = &mut self.counts;
        c.records += 1;
        if row.rv.is_some() {
            c.complete += 1;
        } else {
            c.incomplete += 1;
        }
        if row.uncertain {
            c.uncertain += 1;
        }
        self.processes_used.insert(row.process);
        sink.row(row);
    }

    /// `max(len(processes_used), banners)`.
    pub fn processes(&self) -> u64 {
        (self.processes_used.len() as u64).max(self.counts.banners)
    }
}

/// Pids key the tracker's map as `u64` (one too large to print is kept apart from all others).
fn pid_key(pid: u128) -> u64 {
    u64::try_from(pid).unwrap_or(u64::MAX)
}
