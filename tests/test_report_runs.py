"""Shared set-up for the report tests: real traces parsed and analyzed for real, once per session.

No test lives here (pytest collects the module and finds none); the report test modules import
`run_dir` and friends.  Every run is built from real spy logs: the example logs in
``tests/data/spy-examples`` and, when present, the driver's traces in ``sample-logs/``.
"""

from __future__ import annotations

import atexit
import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import polars as pl
import pytest
from spylogs import DATA, PINS, pin_patterns

from pipeline.analyze import analyze
from pipeline.parse import parse_logs

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample-logs").glob("*.log"))

RUNS = {
    # several spy versions, secrets, wrong PINs, PIN admin, several processes, a truncated file
    "examples": [
        DATA / "02-keygen-sign_0.27.1.log",
        DATA / "03-wrong-pin_0.27.1.log",
        DATA / "04-pin-admin_0.23.0-debian.log",
        DATA / "05-secrets_0.23.0-debian.log",
        DATA / "07-multiprocess-append_0.27.1.log",
        DATA / "08-truncated-exit-midcall_0.27.1.log",
    ],
    "keygen": [DATA / "02-keygen-sign_0.27.1.log"],
    "keygen+wrongpin": [DATA / "02-keygen-sign_0.27.1.log", DATA / "03-wrong-pin_0.27.1.log"],
    "samples": SAMPLES,
}
_ROOT_TMP = Path(tempfile.mkdtemp(prefix="p11lens-report-tests-"))
atexit.register(shutil.rmtree, _ROOT_TMP, True)


@lru_cache(maxsize=None)
def run_dir(name: str) -> Path:
    """Parse + analyze the named set of real logs (once) and return its output folder."""
    logs = RUNS[name]
    if not logs:
        pytest.skip(f"no logs for run {name!r} (sample-logs/ is empty)")
    out = _ROOT_TMP / name
    parse_logs([str(p) for p in logs], out)
    analyze(out)
    return out


def stage(out: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / f"{name}.parquet")


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def all_pins() -> list[str]:
    """The example logs' PINs and the driver's throw-away PINs from the truth files."""
    pins = list(PINS)
    for truth in (ROOT / "sample-logs").glob("*.truth.json"):
        pins.extend(v for v in json.loads(truth.read_text()).get("pins", {}).values() if v)
    return pins


def pin_needles() -> list[str]:
    """What must never appear in a report: every PIN's hex forms, and its text when it is long
    enough not to occur by chance (>= 6 characters; "1234" is also a line number)."""
    out = set()
    for pin in all_pins():
        spaced, packed, text = pin_patterns(pin)
        out.update({spaced, packed, spaced.lower(), packed.lower()})
        if len(pin) >= 6:
            out.add(text)
    return sorted(out)


# ---- real traces cut and edited the way users do it ---------------------------------------------

HEADER = re.compile(rb"^(?:P:\d+; T:\S+ )?\d+: (C_\w+)\r?$", re.M)
STAMP = re.compile(rb"^((?:P:\d+; T:\S+ )?)(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})(\r?)$", re.M)


def records(raw: bytes) -> list[tuple[int, str]]:
    """(byte offset, function) of every record header line in a log."""
    return [(m.start(), m.group(1).decode()) for m in HEADER.finditer(raw)]


def cut_before(raw: bytes, func: str) -> bytes:
    """The log from the first ``func`` record on (a log that starts mid-run, at a record boundary)."""
    return raw[next(at for at, name in records(raw) if name == func):]


def without_records(raw: bytes, funcs: set[str]) -> bytes:
    """The log with every record of ``funcs`` cut out whole (header to the next header)."""
    heads = records(raw) + [(len(raw), "")]
    drop = [(a, b) for (a, name), (b, _next) in zip(heads, heads[1:]) if name in funcs]
    out, at = [], 0
    for a, b in drop:
        out.append(raw[at:a])
        at = b
    return b"".join(out) + raw[at:]


def shift_stamps(raw: bytes, after: int, ms: int) -> bytes:
    """Every timestamp line at or after byte ``after`` moved ``ms`` later (a pause inserted there)."""
    def moved(m: re.Match) -> bytes:
        if m.start() < after:
            return m.group(0)
        t = datetime.strptime(m.group(2).decode(), "%Y-%m-%d %H:%M:%S.%f") + timedelta(milliseconds=ms)
        return m.group(1) + f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d}".encode() + m.group(3)

    return STAMP.sub(moved, raw)


def run_log(raw: bytes, folder: Path, name: str = "trace.log") -> Path:
    """Write ``raw`` as ``folder/name`` and run ``p11lens run`` on it in this process (exit 0
    asserted); returns the output folder."""
    from pipeline.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    log, out = folder / name, folder / "out"
    log.write_bytes(raw)
    assert main(["-q", "run", str(log), "-o", str(out)]) == 0
    return out


# ---- reading tables back out of the rendered formats ------------------------------------------


class _Tables(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._id = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._id = dict(attrs).get("id")
            self.tables[self._id] = []
        elif tag == "tr" and self._id is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._id].append(self._row)
            self._row = None
        elif tag == "table":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(text: str) -> dict[str, list[list[str]]]:
    """Every ``<table id=...>`` as rows of cell texts (header row first)."""
    p = _Tables()
    p.feed(text)
    return p.tables


def as_dicts(rows: list[list[str]]) -> list[dict[str, str]]:
    header, *body = rows
    return [dict(zip(header, r)) for r in body]


def md_table(text: str, heading: str) -> list[dict[str, str]]:
    """The first GFM table after a Markdown heading, as dicts of cell text (backticks dropped)."""
    lines = text.split(heading, 1)[1].splitlines()
    rows = []
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip().strip("`").replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
            rows.append(cells)
        elif rows:
            break
    header, _sep, *body = rows
    return [dict(zip(header, r)) for r in body]


def text_table(text: str, heading: str) -> list[dict[str, str]]:
    """The aligned table after a plain-text heading: columns located by the dashes line."""
    lines = text.split(heading, 1)[1].splitlines()[1:]
    header, dashes = lines[0], lines[1]
    spans, i = [], 0
    for part in dashes.split("  "):
        if part:
            start = dashes.index(part, i)
            spans.append((start, start + len(part)))
            i = start + len(part)
    def cut(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in spans]

    rows = []
    for line in lines[2:]:
        note = line.strip().startswith("(") and line.strip().endswith(")")  # "(showing ...)", "(N call(s) ...)"
        if not line.strip() or not line.startswith("  ") or note:
            break
        rows.append(dict(zip(cut(header), cut(line))))
    return rows


def ms(v) -> str:
    return "–" if v is None else f"{v:,.1f}"


# ---- headless Chromium ---------------------------------------------------------------------------


@lru_cache(maxsize=None)
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (we may be root on a fresh box)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], env=env,
                       check=False, capture_output=True)
        found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it)")
    return found


def chromium_run(url: str, *extra: str, timeout: int = 90) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="p11lens-chromium-")
    try:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url],
            capture_output=True, text=True, timeout=timeout,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
