"""User-shaped copies of real spy traces, each with the calls it must still yield.

People do not hand over the file the spy wrote: they paste it from a terminal, an editor, a web
page or a mail, cut it where the problem starts, comment it, gzip it.  docs/user-shapes.md says
where each shape below was seen in public traces.  Every function here is pure: it takes a
`Trace` (and a seeded `random.Random`) and returns a new one; nothing touches the parser.

What a shaped copy must yield is known without the parser:

* lines carry the call they head (``Line.call``), found by a plain scan of the pristine bytes
  for ``^N: C_Name`` header lines (the independent source, as `tests/spylogs.py` counts);
  a transform moves, keeps or drops lines, and the expected ``(seq, func, line)`` rows follow
  the header lines that are still there, at their new line numbers;
* a cut at an arbitrary byte has no line identity left, so its expected rows come from the
  kept bytes' own header lines (the same scan);
* every inserted line is tagged ``other`` (prose, comments, module debug output, fences,
  prompts) or ``blank``, so the manifest's accounting can be predicted from the pristine one.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import random
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# A record header on a line of its own: the spy's ``N: C_Name`` (plus trailing blanks a user's
# tools may add).  Deliberately looser than the grammar: this is what a reviewer would grep for.
HEADER = re.compile(rb"^(\d+): (C_\w+|SetOperationState)[ \t\r]*$", re.M)
BANNER = b"*************** OpenSC PKCS#11 spy *****************"

Call = tuple[int, str, int]  # seq, func, 1-based line of the header


@dataclass(frozen=True)
class Line:
    text: bytes  # without the line terminator
    call: tuple[int, str] | None = None  # (seq, func) when the line is a record header
    kind: str = "spy"  # "spy": a line of the log; "other" / "blank": inserted by the shape


@dataclass(frozen=True)
class Trace:
    name: str
    lines: tuple[Line, ...]
    eol: bytes = b"\n"
    final_eol: bool = True  # the last line ends with a terminator

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, raw: bytes, name: str = "log") -> Trace:
        """Lines of ``raw`` split at ``\\n`` (a ``\\r`` stays part of the text); headers by scan."""
        if not raw:
            return cls(name, (), final_eol=True)
        final = raw.endswith(b"\n")
        parts = raw.split(b"\n")
        if final:
            parts.pop()
        headers, line, pos = {}, 0, 0
        for m in HEADER.finditer(raw):
            line += raw.count(b"\n", pos, m.start())
            pos = m.start()
            headers[line] = (int(m.group(1)), m.group(2).decode("latin-1"))
        lines = tuple(Line(text, headers.get(i)) for i, text in enumerate(parts))
        return cls(name, lines, final_eol=final)

    @classmethod
    def load(cls, path: Path) -> Trace:
        return cls.from_bytes(Path(path).read_bytes(), Path(path).name)

    def with_lines(self, lines, **changes) -> Trace:
        return dataclasses.replace(self, lines=tuple(lines), **changes)

    # -- views ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        if not self.lines:
            return b""
        body = self.eol.join(line.text for line in self.lines)
        return body + self.eol if self.final_eol else body

    def calls(self) -> Counter:
        """Expected ``(seq, func, line)`` rows: the header lines still present, where they are now."""
        return Counter((line.call[0], line.call[1], i + 1) for i, line in enumerate(self.lines) if line.call)

    def added(self, kind: str) -> int:
        return sum(1 for line in self.lines if line.kind == kind)

    def added_at(self, kind: str) -> tuple[int, ...]:
        """1-based line numbers of the lines the shapes inserted, of ``kind``."""
        return tuple(i + 1 for i, line in enumerate(self.lines) if line.kind == kind)

    def header_indexes(self) -> list[int]:
        return [i for i, line in enumerate(self.lines) if line.call]

    def record_spans(self) -> list[tuple[int, int]]:
        """``[header, last]`` line indexes of each record: up to the line before the next blank."""
        spans = []
        for h in self.header_indexes():
            end = h
            while end + 1 < len(self.lines) and self.lines[end + 1].text.strip() != b"":
                end += 1
            spans.append((h, end))
        return spans


def line_count(raw: bytes) -> int:
    """Lines as ``wc -l`` counts them, plus a last line without newline."""
    return raw.count(b"\n") + (0 if not raw or raw.endswith(b"\n") else 1)


def header_calls(raw: bytes) -> Counter:
    """``(seq, func, line)`` of every header line of ``raw`` (the independent scan)."""
    return Trace.from_bytes(raw).calls()


# --------------------------------------------------------------------------------------------
# Generated text (our own words: nothing here is copied from a third-party trace)

_PROSE = [
    "Here is the spy log of the failing run:",
    "This is what I get after the second attempt.",
    "Then the application hangs here for a few seconds",
    "Edit: same result with the newer module.",
    "The next call is where it goes wrong, I think.",
    "(output trimmed, the rest is the same)",
    "Any idea what is going on here?",
    "Thanks in advance!",
    "Running it again with the environment variables set:",
    "Note that the call returned CKR_OK but nothing was signed.",
]
_COMMENTS = [
    "# observe the slot ids here",
    "# this is where the key is generated",
    "#",
    "## second run ##",
    "# --- cut ---",
]
_APP_OUTPUT = [
    "Using slot 0 with a present token (0x0)",
    "Logging in to \"lab token\".",
    "Key pair generated:",
    "Signature OK",
    "error: PKCS11 function C_Sign failed: rv = CKR_KEY_HANDLE_INVALID (0x60)",
    "Aborting.",
    "Available slots:",
]
_SOURCES = ["ykcs11.c", "objects.c", "token.c", "util.c", "openssl_utils.c"]


def _debug_line(rng: random.Random, func: str) -> bytes:
    """A module's own debug output, as YubiKey's ykcs11 writes it (``debug: file:line (func): ...``)."""
    style = rng.random()
    where = f"{rng.choice(_SOURCES)}:{rng.randint(10, 2999)}"
    what = rng.choice(["In", "Out", "Found 1 slot(s)", "Using key 9a", "Can return 1 object(s)"])
    if style < 0.7:
        return f"debug: {where} ({func}): {what}".encode()
    return f"DBG {where} ({func}): {what}".encode()


def _opensc_debug_line(rng: random.Random, func: str) -> bytes:
    """OpenSC's OPENSC_DEBUG output: thread, time, ``[opensc-pkcs11] file.c:N:func: text``."""
    thread = f"0x7f{rng.getrandbits(40):010x}"
    stamp = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}"
    where = f"{rng.choice(['pkcs11-session.c', 'slot.c', 'card.c', 'sec.c'])}:{rng.randint(10, 999)}"
    return f"{thread} {stamp} [opensc-pkcs11] {where}:{func}: called".encode()


# --------------------------------------------------------------------------------------------
# Line-level shapes


def pad_spaces(t: Trace, rng: random.Random) -> Trace:
    """Trailing spaces on every line (web pages, editors, ``sed 's/$/ /'``)."""
    return t.with_lines(dataclasses.replace(line, text=line.text + b" " * rng.randint(1, 3)) for line in t.lines)


def pad_tabs(t: Trace, rng: random.Random) -> Trace:
    """A trailing tab (or space + tab) on every line."""
    return t.with_lines(dataclasses.replace(line, text=line.text + rng.choice([b"\t", b" \t", b"\t\t"])) for line in t.lines)


def crlf(t: Trace, rng: random.Random) -> Trace:
    """Windows line ends (a log opened and saved on Windows, or copied from a Windows console)."""
    return dataclasses.replace(t, eol=b"\r\n")


def terminal_width(t: Trace, rng: random.Random, width: int = 120) -> Trace:
    """Every line right-padded with spaces to the terminal's width, blank lines included.

    Longer lines are kept whole, not wrapped: terminals remember soft wraps and copy a long line
    as one (docs/user-shapes.md), and no public trace showed a hard-wrapped record line.
    """
    return t.with_lines(dataclasses.replace(line, text=line.text.ljust(width)) for line in t.lines)


def strip_trailing(t: Trace, rng: random.Random) -> Trace:
    """Trailing whitespace removed from every line (editors, pastes): the spy's own padding goes too."""
    return t.with_lines(dataclasses.replace(line, text=line.text.rstrip()) for line in t.lines)


def html_collapse(t: Trace, rng: random.Random) -> Trace:
    """A trace shown on a web page: runs of spaces collapse to one and indentation is lost."""
    return t.with_lines(dataclasses.replace(line, text=b" ".join(line.text.split())) for line in t.lines)


# --------------------------------------------------------------------------------------------
# Cuts


def cut_records(t: Trace, rng: random.Random) -> Trace:
    """Keep a run of whole records: start at a random header (or its blank line), end after a record."""
    heads = t.header_indexes()
    if len(heads) < 3:
        return t
    a = rng.randrange(1, len(heads) - 1)
    b = rng.randrange(a + 1, len(heads) + 1)
    start = heads[a] - (1 if rng.random() < 0.5 and t.lines[heads[a] - 1].text.strip() == b"" else 0)
    end = heads[b] if b < len(heads) else len(t.lines)
    if b < len(heads) and t.lines[end - 1].text.strip() == b"":
        end -= 1  # without the blank line in front of record b
    return t.with_lines(t.lines[start:end])


def cut_lines(t: Trace, rng: random.Random) -> Trace:
    """Start and end at random lines: the log begins and ends in the middle of a record."""
    n = len(t.lines)
    if n < 4:
        return t
    a = rng.randrange(1, n // 2)
    later = [h for h in t.header_indexes() if h > a]
    b = rng.randrange(later[0] + 1, n) if later and later[0] + 1 < n else rng.randrange(a + 1, n)
    return t.with_lines(t.lines[a:b])  # holds at least one header when there is one after a


def cut_bytes(raw: bytes, rng: random.Random) -> bytes:
    """A byte range of the log: it may start and end in the middle of a line."""
    if len(raw) < 4:
        return raw
    a = rng.randrange(0, len(raw) // 2)
    b = rng.randrange(a + 1, len(raw) + 1)
    return raw[a:b]


# --------------------------------------------------------------------------------------------
# Insertions


def _gaps(t: Trace) -> list[int]:
    """Indexes of headers that follow a blank line: the places between two records."""
    return [i for i in t.header_indexes() if i > 0 and t.lines[i - 1].text.strip() == b""]


def _insert(t: Trace, at: dict[int, list[Line]]) -> Trace:
    """Insert ``at[i]`` before line ``i`` (``len(lines)`` appends)."""
    out: list[Line] = []
    for i, line in enumerate(t.lines):
        out.extend(at.get(i, ()))
        out.append(line)
    out.extend(at.get(len(t.lines), ()))
    return t.with_lines(out)


def _some(rng: random.Random, places: list[int], share: float = 0.15, most: int = 40) -> list[int]:
    if not places:
        return []
    k = max(1, min(most, int(len(places) * share)))
    return sorted(rng.sample(places, min(k, len(places))))


def prose(t: Trace, rng: random.Random) -> Trace:
    """Paragraphs of prose between records, with blank lines around them (an issue comment)."""
    at = {}
    for h in _some(rng, _gaps(t)):
        at[h] = [Line(rng.choice(_PROSE).encode(), kind="other"), Line(b"", kind="blank")]
    at[0] = [Line(b"I ran the application with the spy, this is the trace:", kind="other"), Line(b"", kind="blank")]
    at[len(t.lines)] = [Line(b"", kind="blank"), Line(b"Thanks for looking.", kind="other")]
    return _insert(t, at)


def comments(t: Trace, rng: random.Random) -> Trace:
    """``#`` comments a user wrote into the log, directly above a record's header."""
    at = {h: [Line(rng.choice(_COMMENTS).encode(), kind="other")] for h in _some(rng, _gaps(t))}
    return _insert(t, at)


def app_output(t: Trace, rng: random.Random) -> Trace:
    """The application's own output between records (spy and application sharing a terminal)."""
    at = {h: [Line(rng.choice(_APP_OUTPUT).encode(), kind="other")] for h in _some(rng, _gaps(t))}
    return _insert(t, at)


def debug_inside(t: Trace, rng: random.Random) -> Trace:
    """Module debug lines printed while a call runs: after its ``[in]`` lines, before ``Returned:``."""
    at: dict[int, list[Line]] = {}
    spans = t.record_spans()
    for h, end in [spans[i] for i in _some(rng, list(range(len(spans))), share=0.3, most=80)]:
        if end - h < 2 or not t.lines[end].text.startswith(b"Returned:"):
            continue  # a record without its Returned: (truncated, interleaved): leave it alone
        func = t.lines[h].call[1]
        # the first [out] line, else the Returned: line; never before the timestamp line
        target = next((i for i in range(h + 2, end + 1) if t.lines[i].text.startswith((b"[out]", b"Returned:"))), end)
        at[target] = [Line(_debug_line(rng, func), kind="other") for _ in range(rng.randint(1, 3))]
    return _insert(t, at)


def debug_banner(t: Trace, rng: random.Random) -> Trace:
    """Module debug output between the banner's star line and its ``Loaded:`` line (module load)."""
    at = {}
    for i, line in enumerate(t.lines[:-1]):
        if line.text.rstrip() == BANNER and t.lines[i + 1].text.startswith(b"Loaded:"):
            at[i + 1] = [Line(_debug_line(rng, "C_GetFunctionList"), kind="other") for _ in range(2)]
    return _insert(t, at)


def opensc_debug(t: Trace, rng: random.Random) -> Trace:
    """OPENSC_DEBUG lines of the module inside records, and between them."""
    at: dict[int, list[Line]] = {}
    spans = t.record_spans()
    for h, end in [spans[i] for i in _some(rng, list(range(len(spans))), share=0.2, most=40)]:
        if end - h < 2 or not t.lines[end].text.startswith(b"Returned:"):
            continue
        at[end] = [Line(_opensc_debug_line(rng, t.lines[h].call[1]), kind="other") for _ in range(rng.randint(1, 4))]
    return _insert(t, at)


def opensc_debug_windows(t: Trace, rng: random.Random) -> Trace:
    """OpenSC's debug output as its Windows build writes it: each line starts with a date-time
    stamp (``YYYY-MM-DD HH:MM:SS.mmm [opensc-pkcs11] …``), shaped like the start of a spy stamp."""
    at: dict[int, list[Line]] = {}
    spans = t.record_spans()
    for h, end in [spans[i] for i in _some(rng, list(range(len(spans))), share=0.2, most=40)]:
        if end - h < 2 or not t.lines[end].text.startswith(b"Returned:"):
            continue
        func = t.lines[h].call[1]
        stamp = f"2015-10-28 {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}"
        texts = [f"{stamp} [opensc-pkcs11] apdu.c:{rng.randint(100, 999)}:sc_transmit: returning with: 0 (Success)",
                 f"{stamp} {func}(hSession:0x{rng.getrandbits(28):x}) = CKR_OK"]
        at[end] = [Line(rng.choice(texts).encode(), kind="other") for _ in range(rng.randint(1, 3))]
    return _insert(t, at)


def shell_prompt(t: Trace, rng: random.Random) -> Trace:
    """The command line the user typed, pasted above the trace."""
    cmd = b"$ PKCS11SPY=/usr/lib/softhsm/libsofthsm2.so pkcs11-tool --module /usr/lib/x86_64-linux-gnu/pkcs11-spy.so -O"
    return _insert(t, {0: [Line(cmd, kind="other")]})


def fence(t: Trace, rng: random.Random) -> Trace:
    """A Markdown code fence around the log (every GitHub issue)."""
    opener = rng.choice([b"```", b"```text", b"~~~"])
    closer = b"~~~" if opener == b"~~~" else b"```"
    return _insert(t, {0: [Line(opener, kind="other")], len(t.lines): [Line(closer, kind="other")]})


def elide(t: Trace, rng: random.Random) -> Trace:
    """A run of records replaced by an elision mark (``. . . . .``) the user typed."""
    spans = t.record_spans()
    if len(spans) < 4:
        return t
    a = rng.randrange(1, len(spans) - 2)
    b = rng.randrange(a, min(len(spans) - 1, a + 8))
    first, last = spans[a][0], spans[b][1]
    mark = Line(rng.choice([b". . . . .", b"...", b"[...]", b"(snip)"]), kind="other")
    return t.with_lines(t.lines[:first] + (mark,) + t.lines[last + 1 :])


def redact_pins(t: Trace, rng: random.Random) -> Trace:
    """PIN hexdump rows overwritten with ``x`` by a careful user (the C_Login record stays)."""
    out = list(t.lines)
    for h, end in t.record_spans():
        if t.lines[h].call[1] not in ("C_Login", "C_InitPIN", "C_SetPIN", "C_InitToken", "C_LoginUser"):
            continue
        for i in range(h + 1, end + 1):
            text = t.lines[i].text
            if re.match(rb"^\s+[0-9a-fA-F]{8}  ", text):
                out[i] = dataclasses.replace(out[i], text=b"    xxxxxxxxxxxxxx xxxxxxxxxx")
    return t.with_lines(out)


def concat(a: Trace, b: Trace, labelled: bool = False) -> Trace:
    """Two runs one after the other (``cat run1.log run2.log``, or pasted with a label each)."""
    lines: list[Line] = []
    if labelled:
        lines += [Line(b"first run:", kind="other")]
    lines += a.lines
    if labelled:
        lines += [Line(b"", kind="blank")] * 3 + [Line(b"second run, with the other library:", kind="other")]
    lines += b.lines
    return a.with_lines(lines, name=f"{a.name}+{b.name}", final_eol=b.final_eol)


# --------------------------------------------------------------------------------------------
# Compression


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401

        return True
    except ImportError:
        return shutil.which("zstd") is not None


def compress(raw: bytes, fmt: str) -> bytes:
    if fmt == "gz":
        return gzip.compress(raw, mtime=0)
    if fmt == "bz2":
        return bz2.compress(raw)
    if fmt == "xz":
        return lzma.compress(raw)
    if fmt == "zst":
        try:
            import zstandard

            return zstandard.ZstdCompressor().compress(raw)
        except ImportError:
            return subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    raise ValueError(fmt)


# --------------------------------------------------------------------------------------------
# The catalogue


@dataclass(frozen=True)
class Shaped:
    """A user-shaped copy and what p11lens must make of it."""

    shape: str
    data: bytes  # the bytes handed to p11lens (compressed for the compression shapes)
    text: bytes  # the log text inside
    suffix: str  # file name ending to use
    calls: Counter  # expected (seq, func, line) rows
    other_added: int  # inserted lines that are not spy output
    blank_added: int  # inserted blank lines
    # "same": the pristine accounting + the added lines, exactly; "blank-or-record": the same, but
    # a line may move between record and blank (a whitespace-only line inside a record that the
    # shape emptied); "loose": the invariants only
    coverage: str
    copies: int = 1
    other_at: tuple[int, ...] = ()  # line numbers of the inserted other lines


@dataclass(frozen=True)
class Shape:
    name: str
    make: Callable[[Trace, random.Random], Trace]
    coverage: str = "same"
    compression: str | None = None
    suffix: str = ".log"
    extra: bool = False  # seen in public traces but not in issue 15's list (docs/user-shapes.md)
    copies: int = 1  # how many copies of the log the shape holds (concatenations)


def _identity(t: Trace, rng: random.Random) -> Trace:
    return t


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("pad-spaces", pad_spaces),
        Shape("pad-tabs", pad_tabs),
        Shape("crlf", crlf),
        Shape("terminal-120", terminal_width),
        Shape("terminal-80", lambda t, r: terminal_width(t, r, 80)),
        Shape("crlf+terminal", lambda t, r: crlf(terminal_width(t, r), r)),
        Shape("strip-trailing", strip_trailing, coverage="blank-or-record", extra=True),
        Shape("cut-records", cut_records, coverage="loose"),
        Shape("cut-lines", cut_lines, coverage="loose"),
        Shape("prose", prose),
        Shape("comments", comments),
        Shape("app-output", app_output),
        Shape("debug-inside", debug_inside),
        Shape("debug-banner", debug_banner, extra=True),
        Shape("opensc-debug", opensc_debug, extra=True),
        Shape("opensc-debug-windows", opensc_debug_windows, extra=True),
        Shape("shell-prompt", shell_prompt, extra=True),
        Shape("fence", fence),
        Shape("fence+pad+prose", lambda t, r: fence(prose(pad_spaces(t, r), r), r)),
        Shape("elide", elide, coverage="loose", extra=True),
        Shape("redact-pins", redact_pins, coverage="loose", extra=True),
        Shape("html-collapse", html_collapse, coverage="loose", extra=True),
        Shape("gz", _identity, compression="gz", suffix=".log.gz"),
        Shape("gz-named-log", _identity, compression="gz", suffix=".log"),
        Shape("bz2", _identity, compression="bz2", suffix=".log.bz2"),
        Shape("xz", _identity, compression="xz", suffix=".log.xz"),
        Shape("zst", _identity, compression="zst", suffix=".log.zst"),
        Shape("gz+crlf+pad", lambda t, r: crlf(pad_spaces(t, r), r), compression="gz", suffix=".log.gz"),
        Shape("concat", lambda t, r: concat(t, t), copies=2),
        Shape("concat-labelled", lambda t, r: concat(t, t, labelled=True), copies=2),
    ]
}


def make(shape: str, trace: Trace, seed: int) -> Shaped:
    """The ``shape`` copy of ``trace``, reproducible from ``seed``."""
    spec = SHAPES[shape]
    rng = random.Random(f"{shape}:{trace.name}:{seed}")
    shaped = spec.make(trace, rng)
    text = shaped.to_bytes()
    data = compress(text, spec.compression) if spec.compression else text
    return Shaped(
        shape=shape,
        data=data,
        text=text,
        suffix=spec.suffix,
        calls=shaped.calls(),
        other_added=shaped.added("other"),
        blank_added=shaped.added("blank"),
        coverage=spec.coverage,
        copies=spec.copies,
        other_at=shaped.added_at("other"),
    )


def byte_cut(trace: Trace, seed: int) -> Shaped:
    """A cut at random bytes; its rows are whatever header lines the kept bytes hold."""
    raw = cut_bytes(trace.to_bytes(), random.Random(f"bytes:{trace.name}:{seed}"))
    return Shaped("cut-bytes", raw, raw, ".log", header_calls(raw), 0, 0, "loose")


# --------------------------------------------------------------------------------------------
# Checking what p11lens wrote (shared by the shape, fragment and fuzz tests)

ACCOUNT = ("record_lines", "banner_lines", "blank_lines", "unreadable_lines", "other_lines")


def check_accounting(cov: dict, lines: int) -> None:
    """Every input line is accounted for once, in the split of the shared contract (§1)."""
    missing = [k for k in ("lines", *ACCOUNT) if k not in cov]
    assert not missing, f"manifest coverage lacks {missing} (contract: unreadable/other split): {sorted(cov)}"
    assert cov["lines"] == lines, f"manifest says {cov['lines']} lines, the input has {lines}"
    assert cov["lines"] == sum(cov[k] for k in ACCOUNT), cov
    if "unparsed_lines" in cov:
        assert cov["unparsed_lines"] == cov["unreadable_lines"] + cov["other_lines"], cov


def expected_accounting(pristine: dict, shaped: Shaped) -> dict:
    """The pristine log's accounting, times the copies, plus the lines the shape inserted."""
    out = {k: pristine[k] * shaped.copies for k in ACCOUNT}
    out["other_lines"] += shaped.other_added
    out["blank_lines"] += shaped.blank_added
    return out


def span_lines(spans) -> set[int]:
    """The line numbers that ``[first, last]`` spans cover."""
    return {n for first, last in spans for n in range(first, last + 1)}


def pin_needles(pins) -> list[str]:
    """Spellings of each PIN that must never reach an output: the hexdump's spaced and packed hex
    (both cases) and, when it is long enough not to occur by chance (>= 6), the text itself."""
    out = set()
    for pin in pins:
        hexes = [f"{b:02X}" for b in pin.encode()]
        for spelled in (" ".join(hexes), "".join(hexes)):
            out.update({spelled, spelled.lower()})
        if len(pin) >= 6:
            out.add(pin)
    return sorted(out)


def output_texts(out_dir: Path) -> dict[str, str]:
    """Every output file as text: raw bytes (Latin-1), and each Parquet file's values cast to text.

    Reading every Parquet file with both pyarrow and polars is itself one of the checks.
    """
    import polars as pl
    import pyarrow.parquet as pq

    texts = {}
    for path in sorted(Path(out_dir).rglob("*")):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        texts[str(path)] = raw.decode("latin-1")
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            frame = pl.read_parquet(path)
            assert frame.height == table.num_rows, path
            values = []
            for column in table.column_names:
                try:
                    values.append(str(table.column(column).to_pylist()))
                except (ValueError, OverflowError) as exc:  # e.g. a timestamp outside Python's dates
                    raise AssertionError(f"{path.name} column {column}: values do not convert: {exc}") from exc
            texts[f"{path}#values"] = "\n".join(values)
    return texts


def _run_of_bytes(needle: str) -> bool:
    steps = {ord(b) - ord(a) for a, b in zip(needle, needle[1:])}
    return steps in ({1}, {-1})


def leaked(out_dir: Path, pins) -> list[tuple[str, str]]:
    """(file, needle) for every PIN spelling found in an output.

    In a Parquet file's raw (compressed) bytes a PIN made of consecutive characters ("123456")
    is spelled by the integer columns themselves (seq 0, 1, 2, ... as bytes), so those needles
    are searched in its values cast to text only.
    """
    needles = pin_needles(pins)
    found = []
    for name, text in output_texts(out_dir).items():
        binary = name.endswith(".parquet")
        found += [(name, n) for n in needles if n in text and not (binary and _run_of_bytes(n))]
    return found
