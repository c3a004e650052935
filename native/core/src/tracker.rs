//! Which load of the spy (banner) each call belongs to: `pipeline/processes.py`'s `ProcessTracker`.

use std::collections::{BTreeSet, HashMap};

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
    pub next_seq: HashMap<i32, u128>,
    /// Pid -> banner index it was first seen under.
    pub pid_process: HashMap<u64, i32>,
    expecting: HashMap<u128, BTreeSet<i32>>,
}

impl Tracker {
    pub fn new(process: i32, seen: bool, last_pidless: i32, next_seq: HashMap<i32, u128>) -> Self {
        let mut expecting: HashMap<u128, BTreeSet<i32>> = HashMap::new();
        for (&p, &s) in &next_seq {
            expecting.entry(s).or_default().insert(p);
        }
        Tracker {
            process,
            seen,
            last_pidless,
            next_seq,
            pid_process: HashMap::new(),
            expecting,
        }
    }

    pub fn banner(&mut self) {
        if self.seen {
            self.process += 1;
        }
        self.seen = true;
        self.expect(self.process, 0);
    }

    /// The process of a header with counter `seq`, judged without a pid.
    pub fn header(&mut self, seq: u128) -> i32 {
        self.seen = true;
        let process = match self.expecting.get(&seq) {
            None => self.process,
            Some(set) if set.len() == 1 => set.iter().next().copied().unwrap_or(self.process),
            Some(set) => {
                if set.contains(&self.last_pidless) {
                    self.last_pidless
                } else {
                    set.iter().next().copied().unwrap_or(self.process)
                }
            }
        };
        self.expect(process, seq + 1);
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
            if let Some(waiting) = self.expecting.get_mut(&old) {
                waiting.remove(&process);
                if waiting.is_empty() {
                    self.expecting.remove(&old);
                }
            }
        }
        self.expecting.entry(seq).or_default().insert(process);
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
