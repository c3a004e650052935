"""Mutation fuzzing of real spy traces: the mutators, and the invariants every input must keep.

Used by ``tests/test_fuzz_mutation.py`` (a few thousand cases) and ``fuzz/run.py`` (``make
fuzz``, 100,000 and more).  Inputs start from real traces (the driver's sample logs and spy
logs of every OpenSC version) and are damaged the way logs get damaged and the way a hostile
input would be: bytes flipped or inserted, lines duplicated, deleted or swapped, numbers that do
not fit 64 bits, handles with too many hex digits, impossible timestamps, truncation, CR bytes,
NULs, very long lines, two logs spliced.

Invariants (issue 15), for any input:

* no exception from the parse (`pipeline.parse.parse_logs`); the only errors allowed are the
  one-line `InputError`s for an input that is not a spy log at all, or has not a single line;
* the manifest accounts for every line: ``lines`` equals the input's lines (``\\n`` count plus
  a last line without one), and the parts of the contract add up to it;
* every Parquet file written is readable by both polars and pyarrow;
* no PIN of the input, in any spelling, in any output (raw bytes, and Parquet values as text);
* for the inputs also taken through ``p11lens run``: exit 0 (or 2 with "not a pkcs11-spy
  log"), the three reports written.

Cases are checked in batches: one ``parse_logs`` call over many inputs (each input has its own
manifest entry) costs little more than one; a batch that fails is re-checked input by input, so
that every finding names its input.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from shapes import check_accounting, leaked, line_count  # noqa: E402

EXAMPLE_PINS = ("123456", "1234", "87654321", "11112222", "33334444")  # tests/data/spy-examples/README.md


@dataclass(frozen=True)
class Seed:
    name: str
    raw: bytes
    pins: tuple[str, ...]


def load_seeds() -> list[Seed]:
    """Real traces to start from: the sample logs (PINs from their truth files) and the examples."""
    seeds = []
    for path in sorted((ROOT / "sample-logs").glob("*.log")):
        truth = json.loads(path.with_name(path.name + ".truth.json").read_text())
        seeds.append(Seed(path.name, path.read_bytes(), tuple(sorted(truth["pins"].values()))))
    for path in sorted((ROOT / "tests" / "data" / "spy-examples").glob("*.log")):
        if path.stat().st_size > 200:
            seeds.append(Seed(path.name, path.read_bytes(), EXAMPLE_PINS))
    return seeds


def all_pins(seeds: list[Seed]) -> tuple[str, ...]:
    return tuple(sorted({p for s in seeds for p in s.pins}))


# ---- mutators: (raw, rng, other) -> raw --------------------------------------------------------

_DIGITS = re.compile(rb"\d+")
_HEX = re.compile(rb"0x[0-9a-fA-F]+")
_STAMP = re.compile(rb"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{3})")
_HEADER = re.compile(rb"^(\d+): ", re.M)
_PID = re.compile(rb"P:(\d+); T:0x(\d+)")


def _lines(raw: bytes) -> list[bytes]:
    return raw.splitlines(keepends=True)


def _pick(rng: random.Random, pattern: re.Pattern, raw: bytes):
    matches = list(pattern.finditer(raw))
    return rng.choice(matches) if matches else None


def _big_number(rng: random.Random, safe) -> bytes:
    """20 to 60 digits (beyond 2**64 = 18446744073709551616), none spelling a PIN."""
    while True:
        n = str(rng.choice([2**64, 2**64 - 1, 2**64 + 1, 10**20, 2**128])) if rng.random() < 0.3 else ""
        n = n or str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(rng.randint(19, 60)))
        if not any(p in n for p in safe):
            return n.encode()


def flip_byte(raw, rng, other, safe):
    if not raw:
        return raw
    i = rng.randrange(len(raw))
    return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]


def flip_bit(raw, rng, other, safe):
    if not raw:
        return raw
    i = rng.randrange(len(raw))
    return raw[:i] + bytes([raw[i] ^ (1 << rng.randrange(8))]) + raw[i + 1 :]


def insert_bytes(raw, rng, other, safe):
    i = rng.randrange(len(raw) + 1)
    junk = rng.choice([
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))),
        b"\x00" * rng.randint(1, 8),
        b"\r", b"\n", b"\r\n", b"\n\n", b"\t", b"\xff\xfe", "é€".encode(), b"\x1b[31m",
    ])
    return raw[:i] + junk + raw[i:]


def delete_bytes(raw, rng, other, safe):
    if not raw:
        return raw
    i = rng.randrange(len(raw))
    return raw[:i] + raw[i + rng.randint(1, 64) :]


def duplicate_line(raw, rng, other, safe):
    lines = _lines(raw)
    if not lines:
        return raw
    i = rng.randrange(len(lines))
    lines[i:i] = [lines[i]] * rng.randint(1, 3)
    return b"".join(lines)


def delete_line(raw, rng, other, safe):
    lines = _lines(raw)
    if not lines:
        return raw
    i = rng.randrange(len(lines))
    del lines[i : i + rng.randint(1, 4)]
    return b"".join(lines)


def swap_lines(raw, rng, other, safe):
    lines = _lines(raw)
    if len(lines) < 2:
        return raw
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


def duplicate_record(raw, rng, other, safe):
    """A whole record (header to the next blank line) twice."""
    m = _pick(rng, _HEADER, raw)
    if not m:
        return raw
    end = raw.find(b"\n\n", m.start())
    end = len(raw) if end < 0 else end + 2
    return raw[:end] + raw[m.start() : end] + raw[end:]


def huge_digits(raw, rng, other, safe):
    """A run of digits (counter, handle, length, rv, pid) made larger than 2**64."""
    m = _pick(rng, _DIGITS, raw)
    return raw if not m else raw[: m.start()] + _big_number(rng, safe) + raw[m.end() :]


def long_hex(raw, rng, other, safe):
    """A ``0x`` number (handle, slot, flags, tid) with 17 to 40 hex digits."""
    m = _pick(rng, _HEX, raw)
    if not m:
        return raw
    digits = "".join(rng.choice("0123456789abcdef") for _ in range(rng.randint(17, 40)))
    return raw[: m.start()] + b"0x" + digits.encode() + raw[m.end() :]


def bad_timestamp(raw, rng, other, safe):
    """A stamp that is no date: year 0, month 13, day 32, 25 o'clock, Feb 30, second 60 ..."""
    m = _pick(rng, _STAMP, raw)
    if not m:
        return raw
    y, mo, d, h, mi, s, ms = (g.decode() for g in m.groups())
    choice = rng.randrange(9)
    if choice == 0:
        y = "0000"
    elif choice == 1:
        mo = "13"
    elif choice == 2:
        mo = "00"
    elif choice == 3:
        d = "32"
    elif choice == 4:
        mo, d = "02", "30"
    elif choice == 5:
        h = "25"
    elif choice == 6:
        s = "60"
    elif choice == 7:
        y = "9999"
        mo, d = "12", "31"
        h, mi, s, ms = "23", "59", "59", "999"
    else:
        y = "0001"
        mo, d = "01", "01"
    return raw[: m.start()] + f"{y}-{mo}-{d} {h}:{mi}:{s}.{ms}".encode() + raw[m.end() :]


def huge_header(raw, rng, other, safe):
    """A record counter beyond 2**64, or negative."""
    m = _pick(rng, _HEADER, raw)
    if not m:
        return raw
    n = _big_number(rng, safe) if rng.random() < 0.7 else b"-" + m.group(1)
    return raw[: m.start(1)] + n + raw[m.end(1) :]


def huge_pid(raw, rng, other, safe):
    """``P:<pid>; T:0x<tid>`` (0.24+) with numbers beyond 64 bits."""
    m = _pick(rng, _PID, raw)
    if not m:
        return raw
    group = rng.choice([1, 2])
    return raw[: m.start(group)] + _big_number(rng, safe) + raw[m.end(group) :]


def negative_number(raw, rng, other, safe):
    m = _pick(rng, re.compile(rb"(?<=[= ])\d+\b"), raw)
    return raw if not m else raw[: m.start()] + b"-" + raw[m.start() :]


def truncate(raw, rng, other, safe):
    return raw[: rng.randrange(len(raw) + 1)] if raw else raw


def cut_head(raw, rng, other, safe):
    return raw[rng.randrange(len(raw) + 1) :] if raw else raw


def crlf_some(raw, rng, other, safe):
    lines = _lines(raw)
    for _ in range(rng.randint(1, 20)):
        if lines:
            i = rng.randrange(len(lines))
            lines[i] = lines[i].replace(b"\n", b"\r\n")
    return b"".join(lines)


def long_line(raw, rng, other, safe):
    i = raw.find(b"\n", rng.randrange(len(raw) + 1)) if raw else -1
    i = len(raw) if i < 0 else i
    filler = rng.choice([b"A", b" ", b"00 ", b"\t"]) * rng.randint(1_000, 50_000)
    return raw[:i] + filler + raw[i:]


def splice(raw, rng, other, safe):
    """The start of this log glued to the end of another (two files concatenated, one cut)."""
    a = rng.randrange(len(raw) + 1) if raw else 0
    b = rng.randrange(len(other) + 1) if other else 0
    return raw[:a] + other[b:]


MUTATORS = [
    flip_byte, flip_bit, insert_bytes, delete_bytes, duplicate_line, delete_line, swap_lines,
    duplicate_record, huge_digits, long_hex, bad_timestamp, huge_header, huge_pid, negative_number,
    truncate, cut_head, crlf_some, long_line, splice,
]
# The numeric and structural ones are the point of the exercise; long lines are slow, so rare.
WEIGHTS = [4, 3, 3, 3, 3, 3, 2, 2, 6, 6, 6, 3, 3, 2, 2, 2, 2, 0.3, 1]


def window(raw: bytes, rng: random.Random, most: int = 600, whole: float = 0.02) -> bytes:
    """A line-aligned piece of a log, 20 to ``most`` lines (small inputs mutate and parse faster);
    with probability ``whole`` the whole log."""
    lines = _lines(raw)
    if len(lines) <= most or rng.random() < whole:
        return raw
    n = rng.randint(min(20, most), most)
    i = rng.randrange(max(1, len(lines) - n))
    return b"".join(lines[i : i + n])


def mutate(seed: Seed, rng: random.Random, seeds: list[Seed], most: int = 600, whole: float = 0.02) -> tuple[bytes, list[str]]:
    """One case: a window of ``seed`` with one to four mutations; returns it and their names."""
    raw = window(seed.raw, rng, most, whole)
    other = window(rng.choice(seeds).raw, rng, most, whole)
    names = []
    for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
        fn = rng.choices(MUTATORS, WEIGHTS)[0]
        raw = fn(raw, rng, other, seed.pins)
        names.append(fn.__name__)
    return raw, names


# ---- invariants ---------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str  # exception | accounting | parquet | pin | run
    message: str  # one line: the signature used to group findings
    case: int = -1
    detail: str = ""


@dataclass
class BatchResult:
    findings: list[Finding] = field(default_factory=list)
    not_spy: int = 0  # inputs refused as not a spy log (allowed)
    runs: int = 0


def _signature(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    text = re.sub(r"/\S+", "<path>", text)
    text = re.sub(r"\"[^\"]*\"|'[^']*'", "<v>", text)  # the offending values
    text = re.sub(r"\b(0x)?[0-9a-fA-F]*\d[0-9a-fA-F]*\b", "<n>", text)
    return text[:120]


def _is_not_spy(exc: BaseException) -> bool:
    """The refusals allowed: no spy log at all, or an input without a single line (exit 2)."""
    from pipeline.errors import InputError

    return isinstance(exc, InputError) and any(m in str(exc) for m in REFUSALS)


REFUSALS = ("not a pkcs11-spy log", "is empty (not a single line)")


def check_parse_output(out: Path, cases: list[bytes], pins) -> list[Finding]:
    """The invariants on one parse's outputs (manifest inputs in the order of ``cases``)."""
    findings = []
    manifest = json.loads((out / "manifest.json").read_text())
    for i, (entry, raw) in enumerate(zip(manifest["inputs"], cases, strict=True)):
        try:
            check_accounting(entry["coverage"], line_count(raw))
        except AssertionError as exc:
            findings.append(Finding("accounting", _signature(exc), i, str(exc)[:2000]))
    try:
        found = leaked(out, pins)  # reads every Parquet file with pyarrow and polars
    except Exception as exc:  # a Parquet file pyarrow or polars cannot read, or whose values do not convert
        return findings + [Finding("parquet", _signature(exc), -1, traceback.format_exc()[-2000:])]
    for name, needle in found[:5]:
        findings.append(Finding("pin", f"PIN spelling {needle!r} in {Path(name.split('#')[0]).name}", -1))
    return findings


def parse_batch(cases: list[bytes], work: Path, pins) -> BatchResult:
    """Parse ``cases`` in one call; a group that fails is halved until each finding names its input."""
    result = BatchResult()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths = []
    for i, raw in enumerate(cases):
        path = work / f"case{i:04d}.log"
        path.write_bytes(raw)
        paths.append(str(path))
    # inputs that look like no spy log at all would make their whole group fail: alone
    alone = [i for i, raw in enumerate(cases) if not _looks_like_spy(raw)]
    rest = [i for i in range(len(cases)) if i not in set(alone)]
    for group in [[i] for i in alone] + ([rest] if rest else []):
        _parse_group(group, cases, paths, work, pins, result)
    result.findings.sort(key=lambda f: f.case)
    return result


_SPYISH = re.compile(rb"^\d+: \S|OpenSC PKCS#11 spy", re.M)


def _looks_like_spy(raw: bytes) -> bool:
    """A header line or a banner somewhere (the parse's own test is stricter; this only groups)."""
    return _SPYISH.search(raw) is not None


def _parse_group(group: list[int], cases, paths, work: Path, pins, result: BatchResult) -> None:
    from pipeline.parse import parse_logs

    out = work / f"out{group[0]:04d}-{len(group)}"
    try:
        parse_logs([paths[i] for i in group], out)
    except Exception as exc:
        if len(group) == 1:
            if _is_not_spy(exc):
                result.not_spy += 1
            else:
                result.findings.append(Finding("exception", _signature(exc), group[0], traceback.format_exc()[-3000:]))
            result.findings += _leftovers(out, group[0])
            return
        findings = None
    else:
        findings = check_parse_output(out, [cases[i] for i in group], pins)
        for f in findings:
            f.case = group[f.case] if f.case >= 0 else -1
        if len(group) == 1 or not any(f.case < 0 for f in findings):
            for f in findings:
                f.case = group[0] if f.case < 0 else f.case
            result.findings += findings
            return
    shutil.rmtree(out, ignore_errors=True)
    half = len(group) // 2
    _parse_group(group[:half], cases, paths, work, pins, result)
    _parse_group(group[half:], cases, paths, work, pins, result)


def _leftovers(out: Path, case: int) -> list[Finding]:
    """After a failed parse: whatever Parquet file it left behind must still be readable."""
    import polars as pl
    import pyarrow.parquet as pq

    findings = []
    for path in sorted(out.rglob("*")) if out.exists() else []:
        if path.is_file() and ".parquet" in path.name:
            try:
                pq.read_table(path)
                pl.read_parquet(path)
            except Exception as exc:
                findings.append(Finding("parquet", f"left behind unreadable: {_signature(exc)}", case))
    return findings


def run_one(raw: bytes, work: Path, pins) -> list[Finding]:
    """``p11lens run`` (in-process) on one input: exit 0 with three reports, or 2 for a non-log."""
    from pipeline.cli import main

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path, out = work / "case.log", work / "out"
    path.write_bytes(raw)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["-q", "run", str(path), "-o", str(out)])
    stderr = err.getvalue().strip()
    if rc == 2 and any(m in stderr for m in REFUSALS):
        return []
    if rc != 0:
        last = stderr.splitlines()[-1] if stderr else ""
        return [Finding("run", _signature(RuntimeError(f"exit {rc}: {last}")), 0, stderr[-3000:])]
    findings = []
    for report in ("report.html", "report.md", "report.txt"):
        if not (out / report).exists():
            findings.append(Finding("run", f"exit 0 but {report} missing", 0))
    return findings + check_parse_output(out, [raw], pins)


def check_case(raw: bytes, work: Path, pins, run: bool = False) -> list[Finding]:
    """Every invariant on a single input (regression files, minimisation)."""
    result = parse_batch([raw], work / "parse", pins)
    findings = result.findings
    if run and not findings:
        findings += run_one(raw, work / "run", pins)
    return findings


def minimise(raw: bytes, still_fails, budget: int = 300) -> bytes:
    """Delta debugging over lines, then a trim of bytes at both ends: a small input that still fails."""
    lines = _lines(raw)
    chunk = max(1, len(lines) // 2)
    tries = 0
    while chunk >= 1 and tries < budget:
        i, changed = 0, False
        while i < len(lines) and tries < budget:
            candidate = lines[:i] + lines[i + chunk :]
            tries += 1
            if candidate and still_fails(b"".join(candidate)):
                lines, changed = candidate, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return b"".join(lines)
