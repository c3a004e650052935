//! p11lens's native scan engine: OpenSC pkcs11-spy logs into the `calls` table's columns.
//!
//! A second implementation of the contract the reference engine (`grammars/`, `pipeline/
//! assemble.py`) defines: the same blocks, tokens, state machine, body fields and line
//! accounting, without Python. It knows nothing of Python; `native/py` is its Python face.

pub mod assemble;
pub mod blocks;
pub mod body;
pub mod columns;
pub mod enums;
pub mod lines;
pub mod plan;
pub mod tracker;

use assemble::{Assembler, Sink, Start};
use blocks::Cutter;
use columns::{Batch, Row};

pub const BATCH_ROWS: usize = 8_192;

struct Batches {
    current: Batch,
    done: Vec<Batch>,
    rows: usize,
    /// The first line of each pid among the rows (which range saw a pid first, for `-j N`).
    pid_first_line: std::collections::HashMap<u64, u64>,
}

impl Sink for Batches {
    fn row(&mut self, row: &Row<'_>) {
        if let Some(pid) = row.pid.and_then(|p| u64::try_from(p).ok()) {
            let first = self.pid_first_line.entry(pid).or_insert(row.line);
            *first = (*first).min(row.line);
        }
        self.current.push(row);
        if self.current.rows >= self.rows {
            self.done
                .push(std::mem::replace(&mut self.current, Batch::new()));
        }
    }
}

/// One scan of a byte range of one log: bytes in (as the stream reads them), batches out.
pub struct Scanner {
    assembler: Assembler,
    cutter: Cutter,
    batches: Batches,
    dialects: u8,
    /// Raw bytes, from the first read on, whose blocks give dialect hints (the range owned).
    hint_bytes: u64,
    cut_bytes: u64,
}

impl Scanner {
    pub fn new(start: Start, batch_rows: usize, block_size: usize, hint_bytes: u64) -> Self {
        Scanner {
            assembler: Assembler::new(start),
            cutter: Cutter::new(block_size),
            batches: Batches {
                current: Batch::new(),
                done: Vec::new(),
                rows: batch_rows.max(1),
                pid_first_line: Default::default(),
            },
            dialects: 0,
            hint_bytes,
            cut_bytes: 0,
        }
    }

    /// Text before the range, read to warm the state up (no block cutting, no hints): whole
    /// lines, starting at a blank line.
    pub fn warm(&mut self, raw: &[u8]) {
        let text = blocks::fold(raw);
        self.assembler.feed(&text, &mut self.batches);
    }

    /// Bytes a whole-file pass had read but not cut into a block yet (see `Cutter::prime`).
    pub fn prime(&mut self, raw: &[u8]) {
        self.cutter.prime(raw);
    }

    /// One read of the stream.
    pub fn read(&mut self, chunk: &[u8]) {
        let Scanner {
            assembler,
            cutter,
            batches,
            dialects,
            hint_bytes,
            cut_bytes,
        } = self;
        cutter.read(chunk, &mut |raw| {
            Self::block(assembler, batches, dialects, *hint_bytes, cut_bytes, raw)
        });
    }

    fn block(
        assembler: &mut Assembler,
        batches: &mut Batches,
        dialects: &mut u8,
        hint_bytes: u64,
        cut_bytes: &mut u64,
        raw: &[u8],
    ) {
        let text = blocks::fold(raw);
        if *cut_bytes < hint_bytes {
            *dialects |= blocks::dialect_hints(&text);
        }
        *cut_bytes += raw.len() as u64;
        assembler.feed(&text, batches);
    }

    /// End of the input (or of what this range needs): the rest is cut and fed, records
    /// still open are incomplete, the last batch is closed.
    pub fn finish(&mut self) {
        let Scanner {
            assembler,
            cutter,
            batches,
            dialects,
            hint_bytes,
            cut_bytes,
        } = self;
        cutter.finish(&mut |raw| {
            Self::block(assembler, batches, dialects, *hint_bytes, cut_bytes, raw)
        });
        self.stop();
    }

    /// Stop here (a range that has all it owns): bytes not cut into a block yet are left
    /// unread, records still open are incomplete, the last batch is closed.
    pub fn stop(&mut self) {
        self.assembler.finish(&mut self.batches);
        if self.batches.current.rows > 0 {
            let last = std::mem::replace(&mut self.batches.current, Batch::new());
            self.batches.done.push(last.in_line_order());
        }
    }

    /// The batches completed so far.
    pub fn take_batches(&mut self) -> Vec<Batch> {
        std::mem::take(&mut self.batches.done)
    }

    pub fn assembler(&self) -> &Assembler {
        &self.assembler
    }

    /// The dialects seen, as `blocks::DIALECTS` names.
    pub fn dialects(&self) -> Vec<&'static str> {
        blocks::DIALECTS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.dialects & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect()
    }

    /// The first line of each pid among the rows emitted.
    pub fn pid_first_line(&self) -> &std::collections::HashMap<u64, u64> {
        &self.batches.pid_first_line
    }

    /// Lines consumed so far.
    pub fn line(&self) -> u64 {
        self.assembler.line
    }
}

/// Scan a whole log held in memory (tests, fuzzing): the batches and the scanner's state.
pub fn scan_all(data: &[u8], block_size: usize) -> (Vec<Batch>, Scanner) {
    let mut s = Scanner::new(Start::default(), BATCH_ROWS, block_size, u64::MAX);
    for chunk in data.chunks(block_size.max(1)) {
        s.read(chunk);
    }
    s.finish();
    (s.take_batches(), s)
}

/// The accounting invariant, checked on any input (fuzzing, tests): every line is counted
/// once, in one of the parts; each span lies within the input and the spans are in order
/// and apart; the records add up. `Err`: what does not hold.
pub fn check_accounting(data: &[u8], block_size: usize) -> Result<(), String> {
    let (batches, scanner) = scan_all(data, block_size);
    let a = scanner.assembler();
    let c = &a.coverage;
    let lines = memchr::memchr_iter(b'\n', data).count() as u64
        + u64::from(!data.is_empty() && !data.ends_with(b"\n"));
    let parts =
        c.record_lines + c.banner_lines + c.blank_lines + c.unreadable_lines + c.other_lines;
    if c.lines != lines || parts != lines {
        return Err(format!(
            "lines {lines}, counted {}, parts {parts}: {c:?}",
            c.lines
        ));
    }
    for spans in [&c.unreadable_spans, &c.other_spans] {
        let listed: u64 = spans.iter().map(|s| s[1] - s[0] + 1).sum();
        let in_order = spans.windows(2).all(|w| w[0][1] + 1 < w[1][0]);
        if !in_order
            || spans
                .iter()
                .any(|s| s[0] < 1 || s[0] > s[1] || s[1] > lines)
            || listed > lines
        {
            return Err(format!("bad spans {spans:?}"));
        }
    }
    if c.unreadable_lines != span_total(&c.unreadable_spans)
        || c.other_lines != span_total(&c.other_spans)
    {
        return Err("span lines differ from the counts".into());
    }
    let rows: usize = batches.iter().map(|b| b.rows).sum();
    let n = &a.counts;
    if rows as u64 != n.records || n.complete + n.incomplete != n.records || n.uncertain > n.records
    {
        return Err(format!("{rows} rows, counts {n:?}"));
    }
    for b in &batches {
        let inside = (0..b.rows).all(|i| {
            (1..=lines).contains(&b.line.values[i])
                && (b.line.values[i]..=lines).contains(&b.end_line.values[i])
        });
        if !inside {
            return Err("a record ends before its header or past the input".into());
        }
    }
    Ok(())
}

fn span_total(spans: &[[u64; 2]]) -> u64 {
    spans.iter().map(|s| s[1] - s[0] + 1).sum()
}
