"""Renderers: the report model (``reports.model``) → HTML, Markdown or plain text via Jinja.

One payload feeds every renderer; the templates in ``reports/templates/`` format and lay it
out and compute nothing.  The filters below are formatting only (numbers, times, tables as
text), shared by the three formats so that a figure reads the same everywhere.

    render(load_report(out), "html")          # → str
    write_reports(out, ["html", "md", "txt"])  # → [out/report.html, out/report.md, out/report.txt]
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from pipeline import __version__
from pipeline.errors import OutputError, P11lensError
from pipeline.store import atomic_path
from reports.model import SEVERITIES, Report, Table, load_report

FORMATS = {"html": "html", "md": "md", "txt": "txt"}
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
    if value is None:
        return DASH
    return f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond // 1000:03d}"


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
    return f"{seconds / 3600:.1f} h"


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


def md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def text_table(table: Table, indent: str = "  ") -> str:
    """A table as aligned plain text (numbers right-aligned), for terminals."""
    if not table.rows:
        return f"{indent}({table.empty})"
    header = [c.label for c in table.columns]
    body = [[fmt(cell(r, c.key), c.kind) for c in table.columns] for r in table.rows]
    return text_grid(header, body, [c.numeric for c in table.columns], indent)


def text_grid(header: list[str], body: list[list[str]], right: list[bool], indent: str = "  ") -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(header), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in body])


# --------------------------------------------------------------------------------------------
# rendering


def environment(fmt_name: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=fmt_name == "html",
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
        md=md_cell,
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
