"""Renderers: the report model (``reports.model``) → HTML, Markdown or plain text via Jinja.

One payload feeds every renderer; the templates in ``reports/templates/`` format and lay it
out and compute nothing.  The filters below are formatting only (numbers, times, tables as
text), shared by the three formats so that a figure reads the same everywhere.

Output hygiene: file names, function and mechanism names, labels and messages come from the
logs (and their names), so they can hold anything.  HTML is autoescaped.  Markdown and text are
escaped the same way, safe by default: every value a template prints passes the format's
``finalize`` (Markdown: HTML and Markdown punctuation escaped; text: control characters made
visible) unless a filter already made it safe (`Raw`: ``md``, ``code``, ``text_table``) or it
is the template's own markup (``raw``: a table a macro built from escaped cells).

    render(load_report(out), "html")          # → str
    write_reports(out, ["html", "md", "txt"])  # → [out/report.html, out/report.md, out/report.txt]
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from pipeline import __version__
from pipeline.errors import OutputError, P11lensError
from pipeline.store import atomic_path
from reports.formats import FORMATS
from reports.model import SEVERITIES, Report, Table, load_report

EXTENSIONS = {"html": ".html", "md": ".md", "txt": ".txt"}
TEMPLATES = Path(__file__).parent / "templates"
DASH = "–"


# --------------------------------------------------------------------------------------------
# formatting (no statistics: a value in, its text out)


DELTA_KINDS = {"dms": "ms", "dpct": "pct", "dpp": "pp", "dint": "int"}


def fmt(value: Any, kind: str = "text") -> str:
    if kind in DELTA_KINDS:
        return fmt_signed(value, DELTA_KINDS[kind])
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if kind == "int":
        return f"{int(value):,}"
    if kind == "ms":
        return f"{value:,.1f}"
    if kind == "pct":
        if value and abs(value) < 0.0001:
            return "<0.01%"
        return f"{value * 100:.2f}%"
    if kind == "ts":
        return fmt_ts(value)
    if kind == "bytes":
        return fmt_bytes(value)
    if kind == "bool":
        return "yes" if value else "no"
    if kind == "hex":
        return f"0x{int(value) & 0xFFFFFFFFFFFFFFFF:08X}"
    if kind == "hash":
        return str(value)[:12]
    if kind == "num":
        return f"{value:,.2f}"
    return str(value)


def fmt_ts(value: datetime | None) -> str:
    """``YYYY-MM-DD HH:MM:SS.mmm`` for any datetime (years 1-9999 padded to four digits, which
    ``strftime`` does not do everywhere)."""
    if value is None:
        return DASH
    v = value
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond // 1000:03d}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


def fmt_signed(value: float | None, kind: str = "ms") -> str:
    """A delta with its sign: ``+3.0``, ``-1.5``, ``+12.50%`` (relative change as a fraction)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, float) and math.isinf(value):
        return "from 0"
    shown = {"pct": round(value * 100, 1), "pp": round(value * 100, 2), "int": value}.get(kind, round(value, 1))
    if shown == 0:  # no "-0.0": a change too small to show is no change
        return {"pct": "0.0%", "pp": "0.00 pp", "int": "0"}.get(kind, "0.0")
    if kind == "pct":
        return f"{value * 100:+.1f}%"
    if kind == "pp":
        return f"{value * 100:+.2f} pp"
    if kind == "int":
        return f"{int(value):+,}"
    return f"{value:+,.1f}"


def trend(value: Any) -> str:
    """CSS class for a delta: ``up`` (worse: slower, more errors), ``down`` or nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == 0:
        return ""
    return "up" if value > 0 else "down"


def cell(row: Any, key: str) -> Any:
    return row[key] if isinstance(row, dict) else getattr(row, key)


def sort_key(value: Any) -> str:
    """The value a sortable HTML column sorts by (``data-v``): numbers as numbers, text as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)):
        return "" if isinstance(value, float) and math.isnan(value) else repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class Raw(str):
    """Text already safe for the format it is rendered in (see the module docstring)."""


# C0 and C1 controls, DEL, and the Unicode marks that reorder or hide text (bidi overrides).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
# Punctuation that starts inline Markdown anywhere; "_" only at a word's edge (inside a word,
# as in C_Login, CommonMark never reads it as emphasis, so it stays readable there).
_MD_INLINE = re.compile(r"([\\`*\[\]|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")
# What makes a heading, a list item or a rule when it starts a line: "#", "-", "+", "=" (runs of
# them too) or "1." / "1)", followed by a space or nothing.
_MD_LINE_START = re.compile(r"^(?:[#+=-]+|\d{1,9}(?=[.)]))(?=[.)]?(?:\s|$))")


def visible_controls(text: str) -> str:
    r"""Control characters as visible escapes (``\x1b``, ``\u202e``): a name from a log must
    not move a terminal's cursor, recolour it, or reorder the text around it."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


def md_text(value: Any) -> Raw:
    """A value as literal Markdown text: no HTML (``<``, ``>``, ``&`` as entities), no inline
    markup (emphasis, links, code, table pipes, strike-through backslash-escaped), no heading or
    list when it starts a line, and its controls visible (a newline too: one value, one line)."""
    text = visible_controls(str(value)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_INLINE.sub(r"\\\1", text)
    m = _MD_LINE_START.match(text)
    if m and text[0].isdigit():
        return Raw(text[: m.end()] + "\\" + text[m.end() :])  # "1. x" -> "1\. x"
    return Raw("\\" + text if m else text)


def md_code(value: Any, cell: bool = False) -> Raw:
    """A value as a Markdown code span that shows it exactly: a fence longer than any run of
    backticks in it, padded when it starts or ends with a backtick or a space.  In a table
    ``cell`` its pipes are escaped (GFM splits cells on them even inside code)."""
    text = visible_controls(str(value))
    if cell:
        text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return Raw(f"{fence}{pad}{text}{pad}{fence}")


def sentence(text: str) -> str:
    """The first letter upper-case, the rest as written (Jinja's ``capitalize`` lowers it:
    "CKR_OK" would read "ckr_ok")."""
    return text[:1].upper() + text[1:]


def raw(value: Any) -> Raw:
    """Mark a template's own markup (a macro's table) as already safe."""
    return Raw(value)


def _md_finalize(value: Any) -> str:
    return value if isinstance(value, Raw) else md_text(value)


def _txt_finalize(value: Any) -> str:
    return value if isinstance(value, Raw) else visible_controls(str(value))


def text_table(table: Table, indent: str = "  ") -> str:
    """A table as aligned plain text (numbers right-aligned), for terminals."""
    if not table.rows:
        return Raw(f"{indent}({table.empty})")
    header = [c.label for c in table.columns]
    body = [[visible_controls(fmt(cell(r, c.key), c.kind)) for c in table.columns] for r in table.rows]
    return Raw(text_grid(header, body, [c.numeric for c in table.columns], indent))


def text_grid(header: list[str], body: list[list[str]], right: list[bool], indent: str = "  ") -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(header), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in body])


# --------------------------------------------------------------------------------------------
# rendering


_FINALIZE = {"md": _md_finalize, "txt": _txt_finalize}


def environment(fmt_name: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=fmt_name == "html",
        finalize=_FINALIZE.get(fmt_name),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        fmt=fmt,
        ts=fmt_ts,
        bytes=fmt_bytes,
        duration=fmt_duration,
        signed=fmt_signed,
        sort_key=sort_key,
        md=md_text,
        code=md_code,
        raw=raw,
        sentence=sentence,
        text_table=text_table,
        trend=trend,
    )
    env.globals.update(cell=cell, severities=SEVERITIES, tool_version=__version__)
    return env


def render(report: Report, fmt_name: str = "html") -> str:
    if fmt_name not in FORMATS:
        raise P11lensError(f"unknown report format {fmt_name!r} (choose html, md or txt)")
    if fmt_name == "html" and not report.charts:
        from reports import charts  # matplotlib is only needed for HTML

        t0 = report.run.first_ts
        report.charts = {
            "latency": charts.latency_chart(report.latency_chart),
            "activity": charts.activity_chart(report.buckets),
            "sessions": charts.sessions_chart(report.timeline) if t0 else "",
        }
    template = environment(fmt_name).get_template(f"report.{fmt_name}.j2")
    return template.render(r=report, run=report.run)


def render_comparison(comp, fmt_name: str = "html") -> str:
    """A `reports.compare.Comparison` as HTML, Markdown or text."""
    if fmt_name not in FORMATS:
        raise P11lensError(f"unknown report format {fmt_name!r} (choose html, md or txt)")
    if fmt_name == "html" and not comp.charts:
        from reports import charts

        comp.charts = {"latency": charts.compare_chart(comp.chart_rows)}
    template = environment(fmt_name).get_template(f"compare.{fmt_name}.j2")
    return template.render(c=comp, base=comp.base.report.run, cand=comp.cand.report.run)


def default_path(out_dir: Path, fmt_name: str) -> Path:
    return Path(out_dir) / f"report{EXTENSIONS[fmt_name]}"


def write_text(path: Path, text: str) -> Path:
    """Write atomically (temp name, then rename), so a reader never sees half a report."""
    try:
        with atomic_path(Path(path)) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return Path(path)


def write_reports(out_dir: Path | str, formats: list[str] | tuple[str, ...] = ("html", "md", "txt"),
                  report: Report | None = None) -> list[Path]:
    """Render every requested format for a run folder into ``out_dir/report.<ext>``."""
    out_dir = Path(out_dir)
    report = report or load_report(out_dir)
    written = []
    for name in formats:
        written.append(write_text(default_path(out_dir, name), render(report, name)))
    return written
