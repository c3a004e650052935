"""Which load of the spy (banner) each call belongs to.

Several processes can append to one log, each announcing itself with a banner (§2.3, §7).
From OpenSC 0.24 every call carries ``P:<pid>``, and a pid keeps the banner it was first seen
under: a process's banner reaches the file in the same flush as its first record, so the
newest banner is the right one for a new pid.  Before 0.24 there is no pid; a call goes to
the process whose counter it continues (each load counts 0, 1, 2, ...; §2.4), among several
at the same count the one that wrote the previous call, else the oldest; with none, the
newest banner.

The state changes only at banner lines and header lines, in file order, whatever else the
lines hold.  That is what lets a parallel parse compute the state at any offset with a
byte-level pre-pass (`pipeline.parallel`) and a job resume it from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProcessTracker:
    process: int = 0  # index of the newest banner
    seen: bool = False  # a banner or header came before (the next banner is a new process)
    last_pidless: int = 0  # process of the previous header
    next_seq: dict[int, int] = field(default_factory=dict)  # process -> counter value it prints next
    pid_process: dict[int, int] = field(default_factory=dict)  # pid -> banner index
    _expecting: dict[int, set[int]] = field(default_factory=dict, repr=False)  # next_seq inverted

    def __post_init__(self) -> None:
        self._expecting = {}
        for process, seq in self.next_seq.items():
            self._expecting.setdefault(seq, set()).add(process)

    def banner(self) -> None:
        if self.seen:
            self.process += 1
        self.seen = True
        self._expect(self.process, 0)

    def header(self, seq: int) -> int:
        """The process of a header with counter ``seq``, judged without a pid."""
        self.seen = True
        continuing = self._expecting.get(seq)
        if not continuing:
            process = self.process
        elif len(continuing) == 1:
            (process,) = continuing
        else:
            process = self.last_pidless if self.last_pidless in continuing else min(continuing)
        self._expect(process, seq + 1)
        self.last_pidless = process
        return process

    def pid(self, pid: int) -> int:
        """The process of a call that printed ``P:<pid>``."""
        return self.pid_process.setdefault(pid, self.process)

    def headers(self, seqs: list[int]) -> list[tuple[int, int]]:
        """`header` for consecutive headers, as ``(process, count)`` per stretch of them.

        No banner comes between them, and a stretch that continues one counter (n, n+1, ...)
        stays with the process of its first header: that process expects each next value and
        wrote the previous call, which is what `header` decides by.  So `header` runs once per
        stretch, not once per call.
        """
        stretches = []
        first, size = 0, len(seqs)
        while first < size:
            stop = first + 1
            while stop < size and seqs[stop] == seqs[stop - 1] + 1:
                stop += 1
            process = self.header(seqs[first])
            if stop - first > 1:
                self._expect(process, seqs[stop - 1] + 1)
            stretches.append((process, stop - first))
            first = stop
        return stretches

    def copy(self) -> ProcessTracker:
        return ProcessTracker(self.process, self.seen, self.last_pidless, dict(self.next_seq), dict(self.pid_process))

    def _expect(self, process: int, seq: int) -> None:
        old = self.next_seq.get(process)
        if old is not None:
            waiting = self._expecting[old]
            waiting.discard(process)
            if not waiting:
                del self._expecting[old]
        self.next_seq[process] = seq
        self._expecting.setdefault(seq, set()).add(process)
