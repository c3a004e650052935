//! Which load of the spy (banner) each call belongs to: `pipeline/processes.py`'s `ProcessTracker`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast hash for the tracker's small integer keys (counters, processes, pids); the keys
/// come from the log, but a collision only costs time, and each map is small or keyed by
/// values the log's own order makes distinct.
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
    fn write_i32(&mut self, v: i32) {
        self.write_u64(u64::from(v as u32));
    }
}

pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// The processes that expect one counter value: almost always one.
#[derive(Clone, Debug)]
enum Waiting {
    One(i32),
    Many(Vec<i32>), // sorted
}

/// The banner state; changes only at banner and header lines (and pids, for 0.24+).
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    /// Index of the newest banner.
    pub process: i32,
    /// A banner or header came before (the next banner is a new process).
    pub seen: bool,
    /// Process of the previous header.
    pub last_pidless: i32,
    /// Process -> the counter value it prints next.
    pub next_seq: FxMap<i32, u128>,
    /// Pid -> banner index it was first seen under.
    pub pid_process: FxMap<u64, i32>,
    expecting: FxMap<u128, Waiting>,
}

impl Tracker {
    pub fn new(process: i32, seen: bool, last_pidless: i32, next_seq: HashMap<i32, u128>) -> Self {
        let mut t = Tracker {
            process,
            seen,
            last_pidless,
            ..Tracker::default()
        };
        for (p, s) in next_seq {
            t.next_seq.insert(p, s);
            t.wait(s, p);
        }
        t
    }

    fn wait(&mut self, seq: u128, process: i32) {
        match self.expecting.get_mut(&seq) {
            None => {
                self.expecting.insert(seq, Waiting::One(process));
            }
            Some(Waiting::One(q)) => {
                if *q != process {
                    let (a, b) = (process.min(*q), process.max(*q));
                    self.expecting.insert(seq, Waiting::Many(vec![a, b]));
                }
            }
            Some(Waiting::Many(v)) => {
                if let Err(i) = v.binary_search(&process) {
                    v.insert(i, process);
                }
            }
        }
    }

    fn unwait(&mut self, seq: u128, process: i32) {
        let empty = match self.expecting.get_mut(&seq) {
            Some(Waiting::One(q)) => *q == process,
            Some(Waiting::Many(v)) => {
                v.retain(|&p| p != process);
                if v.len() == 1 {
                    let last = v[0];
                    self.expecting.insert(seq, Waiting::One(last));
                }
                false
            }
            None => false,
        };
        if empty {
            self.expecting.remove(&seq);
        }
    }

    pub fn banner(&mut self) {
        if self.seen {
            self.process = self.process.saturating_add(1);
        }
        self.seen = true;
        self.expect(self.process, 0);
    }

    /// The process of a header with counter `seq`, judged without a pid.
    pub fn header(&mut self, seq: u128) -> i32 {
        self.seen = true;
        let process = match self.expecting.get(&seq) {
            None => self.process,
            Some(Waiting::One(p)) => *p,
            Some(Waiting::Many(v)) => {
                if v.contains(&self.last_pidless) {
                    self.last_pidless
                } else {
                    v.first().copied().unwrap_or(self.process)
                }
            }
        };
        self.expect(process, seq.saturating_add(1));
        self.last_pidless = process;
        process
    }

    /// The process of a call that printed `P:<pid>`.
    pub fn pid(&mut self, pid: u64) -> i32 {
        *self.pid_process.entry(pid).or_insert(self.process)
    }

    /// A stretch of headers counting on from one `header` call expects its next value.
    pub fn expect_next(&mut self, process: i32, seq: u128) {
        self.expect(process, seq);
    }

    fn expect(&mut self, process: i32, seq: u128) {
        if let Some(old) = self.next_seq.insert(process, seq) {
            if old == seq {
                return;
            }
            self.unwait(old, process);
        }
        self.wait(seq, process);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_tell_processes_apart() {
        let mut t = Tracker::default();
        t.banner();
        assert_eq!(t.header(0), 0);
        assert_eq!(t.header(1), 0);
        t.banner();
        assert_eq!(t.header(0), 1);
        assert_eq!(t.header(2), 0);
        assert_eq!(t.header(1), 1);
        assert_eq!(t.header(7), 1);
        assert_eq!(t.pid(5), 1);
        t.banner();
        assert_eq!(t.pid(5), 1);
    }
}
