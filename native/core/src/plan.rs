//! Cutting one file into byte ranges that threads scan at once (`-j N`).
//!
//! A range starts where a whole-file pass cut a block (so each range's blocks, and the
//! dialect hints taken of them, are that pass's), reads a little text before it to warm its
//! state up, and owns the records whose header lies in it and the coverage of its lines.
//! The line number and the banner state at each cut come from a pre-pass that the ranges
//! run in parallel (newlines, banner and header lines), replayed in order afterwards.

use crate::assemble::Start;
use crate::blocks::MAX_BLOCKS_WITHOUT_BLANK;
use crate::tracker::Tracker;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// One range of a file.
#[derive(Clone, Debug)]
pub struct Range {
    /// Where the warm-up text starts (a blank line), and where the range starts.
    pub warm_from: u64,
    pub start: u64,
    /// The whole-file pass had read up to here when it cut at `start` (bytes to prime).
    pub read_to: u64,
    /// Where the next range starts (the file's size for the last).
    pub end: u64,
    /// The state at `warm_from`, and the lines owned.
    pub start_state: Start,
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// The last offset in `[from, to)` just after a line end followed by a blank line (`stream._cut`).
fn last_blank(file: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
    const WINDOW: u64 = 64 << 10;
    let mut hi = to;
    while hi > from {
        let lo = hi.saturating_sub(WINDOW).max(from);
        let buf = read_at(file, lo, (hi - lo) as usize)?;
        let a = memchr::memmem::rfind(&buf, b"\n\n").map(|i| i + 1);
        let b = memchr::memmem::rfind(&buf, b"\n\r\n").map(|i| i + 1);
        if let Some(i) = a.max(b) {
            return Ok(Some(lo + i as u64));
        }
        if lo == from {
            break;
        }
        hi = lo + 2; // a separator across the window's edge
    }
    Ok(None)
}

fn last_newline(file: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
    const WINDOW: u64 = 64 << 10;
    let mut hi = to;
    while hi > from {
        let lo = hi.saturating_sub(WINDOW).max(from);
        let buf = read_at(file, lo, (hi - lo) as usize)?;
        if let Some(i) = memchr::memrchr(b'\n', &buf) {
            return Ok(Some(lo + i as u64 + 1));
        }
        hi = lo;
    }
    Ok(None)
}

/// The blocks a whole-file pass cuts (`stream.iter_sized_blocks` with reads of `block_size`):
/// each cut, with how far the pass had read when it made it. Reads only near the cuts.
pub fn block_cuts(file: &File, size: u64, block_size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut cuts = Vec::new();
    let (mut last, mut read) = (0u64, 0u64);
    while read < size {
        read = (read + block_size).min(size);
        if read - last < block_size {
            continue;
        }
        let mut at = last_blank(file, last, read)?;
        if at.is_none() && read - last > MAX_BLOCKS_WITHOUT_BLANK as u64 * block_size {
            at = last_newline(file, last, read)?;
        }
        if let Some(at) = at {
            if at > last {
                cuts.push((at, read));
                last = at;
            }
        }
    }
    Ok(cuts)
}

/// The first blank line's start at or after `offset` (before `limit`).
fn blank_at_or_after(file: &File, offset: u64, limit: u64) -> io::Result<u64> {
    const WINDOW: usize = 1 << 20;
    let mut at = offset.saturating_sub(1);
    while at < limit {
        let buf = read_at(file, at, WINDOW)?;
        if let Some(i) = memchr::memmem::find(&buf, b"\n\n") {
            return Ok((at + i as u64 + 1).min(limit).max(offset));
        }
        if buf.len() < WINDOW {
            break;
        }
        at += WINDOW as u64 - 1;
    }
    Ok(limit)
}

/// Newlines and state events (banner and header lines) of a stretch of whole lines.
#[derive(Default)]
struct Events {
    newlines: u64,
    /// `None`: a banner; `Some((first, count))`: headers counting first, first + 1, ...
    events: Vec<Option<(u128, u64)>>,
}

const BANNER: &[u8] = crate::lines::BANNER;

/// `parallel._EVENT` on one raw line (its `\r` before the newline allowed).
fn event(line: &[u8]) -> Option<Option<u128>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line == BANNER {
        return Some(None);
    }
    let n = line.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || !line[n..].starts_with(b": ") {
        return None;
    }
    let func = &line[n + 2..];
    if func.is_empty() || func.iter().any(|&b| crate::lines::is_space(b)) {
        return None;
    }
    Some(Some(crate::assemble::big(&line[..n])))
}

fn scan_events(data: &[u8]) -> Events {
    let mut out = Events::default();
    let mut start = 0;
    let push = |line: &[u8], out: &mut Events| {
        let first = line.first().copied();
        if !matches!(first, Some(b'0'..=b'9' | b'*')) {
            return;
        }
        match event(line) {
            Some(None) => out.events.push(None),
            Some(Some(seq)) => match out.events.last_mut() {
                Some(Some((first, count))) if first.saturating_add(u128::from(*count)) == seq => {
                    *count += 1
                }
                _ => out.events.push(Some((seq, 1))),
            },
            None => {}
        }
    };
    for i in memchr::memchr_iter(b'\n', data) {
        push(&data[start..i], &mut out);
        out.newlines += 1;
        start = i + 1;
    }
    if start < data.len() {
        push(&data[start..], &mut out);
    }
    out
}

fn replay(tracker: &mut Tracker, events: &Events) {
    for e in &events.events {
        match e {
            None => tracker.banner(),
            Some((first, count)) => {
                let process = tracker.header(*first);
                if *count > 1 {
                    tracker.expect_next(process, first.saturating_add(u128::from(*count)));
                }
            }
        }
    }
}

/// Cut a file into at most `workers` ranges of `min_range` bytes or more; one range when
/// that is all it takes. The pre-pass runs on `workers` threads.
pub fn plan(
    path: &std::path::Path,
    workers: usize,
    block_size: u64,
    min_range: u64,
    warmup: u64,
) -> io::Result<Vec<Range>> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let workers = (workers as u64).min(size / min_range.max(1)).max(1);
    let single = || Range {
        warm_from: 0,
        start: 0,
        read_to: 0,
        end: size,
        start_state: Start::default(),
    };
    if workers < 2 {
        return Ok(vec![single()]);
    }
    let cuts = block_cuts(&file, size, block_size)?;
    let mut starts: Vec<(u64, u64)> = vec![(0, 0)];
    for k in 1..workers {
        let target =
            u64::try_from(u128::from(size) * u128::from(k) / u128::from(workers)).unwrap_or(size);
        if let Some(&(cut, read)) = cuts.iter().find(|(c, _)| *c >= target) {
            if cut > starts[starts.len() - 1].0 && cut < size {
                starts.push((cut, read));
            }
        }
    }
    if starts.len() < 2 {
        return Ok(vec![single()]);
    }
    let mut warms = vec![0];
    for &(cut, _) in &starts[1..] {
        warms.push(blank_at_or_after(&file, cut.saturating_sub(warmup), cut)?);
    }
    // the pre-pass: newlines and events of each stretch between the points, in parallel
    let mut points: Vec<u64> = starts
        .iter()
        .map(|s| s.0)
        .chain(warms.iter().copied())
        .collect();
    points.push(size);
    points.sort_unstable();
    points.dedup();
    let stretches: Vec<(u64, u64)> = points.windows(2).map(|w| (w[0], w[1])).collect();
    let results: Vec<io::Result<Events>> = std::thread::scope(|scope| {
        let chunks = stretches.chunks(stretches.len().div_ceil(workers as usize).max(1));
        let handles: Vec<_> = chunks
            .map(|chunk| {
                let file = &file;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(a, b)| {
                            let mut all = Events::default();
                            let mut at = a;
                            while at < b {
                                let len = (b - at).min(8 << 20);
                                let mut data = read_at(file, at, len as usize)?;
                                if at + len < b {
                                    let keep =
                                        memchr::memrchr(b'\n', &data).map_or(data.len(), |i| i + 1);
                                    data.truncate(keep);
                                }
                                if data.is_empty() {
                                    break;
                                }
                                at += data.len() as u64;
                                let e = scan_events(&data);
                                all.newlines += e.newlines;
                                all.events.extend(e.events);
                            }
                            Ok(all)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(io::Error::other("pre-pass thread failed"))])
            })
            .collect()
    });
    let mut tracker = Tracker::default();
    let mut lines = 0u64;
    let mut state_at = std::collections::HashMap::new();
    state_at.insert(0u64, (0u64, tracker.clone()));
    for ((_, b), events) in stretches.iter().zip(results) {
        let events = events?;
        replay(&mut tracker, &events);
        lines += events.newlines;
        state_at.insert(*b, (lines, tracker.clone()));
    }
    let line_at = |offset: u64| state_at.get(&offset).map_or(0, |s| s.0);
    let mut ranges = Vec::new();
    for k in 0..starts.len() {
        let (start, read_to) = starts[k];
        let end = starts.get(k + 1).map_or(size, |s| s.0);
        let (lines_before, state) = state_at.get(&warms[k]).cloned().unwrap_or_default();
        let mut tracker = state;
        tracker.pid_process.clear();
        ranges.push(Range {
            warm_from: warms[k],
            start,
            read_to,
            end,
            start_state: Start {
                lines_before,
                tracker,
                own_from: line_at(start) + 1,
                own_to: if k + 1 == starts.len() {
                    u64::MAX
                } else {
                    line_at(end)
                },
            },
        });
    }
    Ok(ranges)
}
