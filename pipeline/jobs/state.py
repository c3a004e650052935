"""The job's state: one checkpoint per input file and the list of the dataset's part files.

``OUT/job/state.json`` is the commit point of a run.  It is replaced atomically (temporary
file, fsync, rename, fsync of the folder) and only after every part file it lists is durable.
A part file that exists but is not listed (a run was killed before its commit, or after its
commit but before it removed the files it replaced) is removed by the next run before it does
anything else, so the dataset is always exactly what the last committed state says.

A checkpoint says where a file's *committed* rows end: a byte offset at a record boundary
where the parser had no open record (a quiet point), with what the parser knew there (line
number, banner index, pid → banner map).  Rows after it are the file's *tail*: kept in
replaceable part files and parsed again from the checkpoint whenever the file changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.assemble import Coverage
from pipeline.errors import P11lensError
from pipeline.store import atomic_path, fsync_dir

STATE_VERSION = 1
COUNT_KEYS = ("records", "complete", "incomplete", "uncertain", "banners", "load_errors")
COVERAGE_KEYS = ("lines", "record_lines", "banner_lines", "blank_lines", "unparsed_lines", "unreadable_lines", "other_lines")
SPAN_KEYS = ("unreadable_spans", "other_spans")  # line ranges of each kind of unparsed line (`assemble.Coverage`)


class StateError(P11lensError):
    """A state file that cannot be used (exit 2)."""


@dataclass
class Stats:
    """What the parser reported for a stretch of a file (added up over runs)."""

    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    coverage: dict = field(default_factory=lambda: {**dict.fromkeys(COVERAGE_KEYS, 0), **{k: [] for k in SPAN_KEYS}})
    dialects: list = field(default_factory=list)
    processes_used: list = field(default_factory=list)

    def plus(self, other: Stats) -> Stats:
        """These lines' stats followed by ``other``'s (spans that touch are merged; a state
        written before spans were kept apart has none, and its counts of each kind are 0)."""
        spans = {k: [list(s) for s in self.coverage.get(k, [])] for k in SPAN_KEYS}
        for kind, merged in spans.items():
            for first, last in other.coverage.get(kind, []):
                if merged and merged[-1][1] == first - 1:
                    merged[-1][1] = last
                elif len(merged) < Coverage.MAX_SPANS:
                    merged.append([first, last])
        return Stats(
            counts={k: self.counts.get(k, 0) + other.counts.get(k, 0) for k in COUNT_KEYS},
            coverage={**{k: self.coverage.get(k, 0) + other.coverage.get(k, 0) for k in COVERAGE_KEYS}, **spans},
            dialects=sorted(set(self.dialects) | set(other.dialects)),
            processes_used=sorted(set(self.processes_used) | set(other.processes_used)),
        )

    @property
    def processes(self) -> int:
        return max(len(self.processes_used), self.counts.get("banners", 0))


@dataclass
class Checkpoint:
    path: str  # the input as matched (the rows' `source`)
    dev: int
    ino: int
    head_len: int  # bytes hashed at the file's start (min(size, 64 KiB) when last read)
    head_sha256: str
    size_seen: int  # bytes read last time (the file's size then)
    mtime_ns: int
    offset: int = 0  # committed up to this byte (a quiet record boundary)
    anchor_sha256: str = ""  # hash of the bytes just before `offset` (detects rewrites in place)
    resume: dict = field(default_factory=dict)  # the parser's state at `offset` (`assemble.Start` fields)
    committed: Stats = field(default_factory=Stats)
    tail: Stats = field(default_factory=Stats)
    tail_bytes: int = 0  # bytes after `offset` (parsed again next time the file changes)
    missing: bool = False  # the file was not found by the last run (its rows stay)
    compression: str | None = None  # gzip, bzip2, xz, zstd: read whole each time it changes (no resume point)

    @property
    def lines_before(self) -> int:
        return int(self.resume.get("lines_before", 0))

    @property
    def stats(self) -> Stats:
        return self.committed.plus(self.tail)

    @staticmethod
    def from_json(d: dict) -> Checkpoint:
        d = dict(d)
        d["committed"] = Stats(**d.get("committed", {}))
        d["tail"] = Stats(**d.get("tail", {}))
        return Checkpoint(**d)


@dataclass
class Part:
    file: str  # relative to OUT/calls, e.g. "date=2026-11-28/part-000003-0001.parquet"
    date: str | None  # the partition's day; None for rows without a timestamp
    rows: int
    sources: list[str]
    tail_of: str | None = None  # the input whose tail this part holds (replaced when it changes)


@dataclass
class Retired:
    """A file generation that was rotated away or replaced: its rows stay, under this source."""

    source: str
    was: str
    retired: str  # UTC time of detection
    stats: Stats


@dataclass
class State:
    files: dict[str, Checkpoint] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    retired: list[Retired] = field(default_factory=list)
    serial: int = 0  # committed runs that changed the dataset (names new part files)

    def to_json(self) -> dict:
        return {
            "version": STATE_VERSION,
            "serial": self.serial,
            "files": {k: asdict(v) for k, v in sorted(self.files.items())},
            "parts": [asdict(p) for p in self.parts],
            "retired": [asdict(r) for r in self.retired],
        }

    @staticmethod
    def from_json(d: dict) -> State:
        if d.get("version") != STATE_VERSION:
            raise StateError(f"job state version {d.get('version')!r} is not {STATE_VERSION}")
        return State(
            files={k: Checkpoint.from_json(v) for k, v in d.get("files", {}).items()},
            parts=[Part(**p) for p in d.get("parts", [])],
            retired=[Retired(**{**r, "stats": Stats(**r["stats"])}) for r in d.get("retired", [])],
            serial=int(d.get("serial", 0)),
        )


def load_state(path: Path) -> State | None:
    """The committed state, or None when there is none yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror}") from None
    try:
        return State.from_json(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(f"{path}: damaged job state ({type(exc).__name__}: {exc}); move the output folder away to start over") from None


def save_state(path: Path, state: State) -> None:
    """Commit: the new state replaces the old one atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(state.to_json(), indent=1) + "\n", encoding="utf-8")
    fsync_dir(path.parent)
