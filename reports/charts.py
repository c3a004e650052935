"""Charts for the HTML report: matplotlib (Agg, no display) rendered to inline SVG strings.

Each function takes a part of the report model and returns ``<svg ...>...</svg>`` (or ``""``
when there is nothing to draw).  Text stays text (``svg.fonttype = none``), so the SVG is small
and searchable; ids are salted per chart so several charts can share one page; the output is
deterministic (no dates, fixed salt), so the same run gives byte-identical reports.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from reports.model import Bucket, SessionBar, Timeline  # noqa: E402
from reports.render import fmt_ts, visible_controls  # noqa: E402

W = 12.0  # inches: at the page's ~1140 px width, 9 pt text shows at ~12 px
INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
BLUE = "#3e6fb0"
LIGHT_BLUE = "#a9c1e3"
RED = "#c0392b"
AMBER = "#d98c1a"
GREY = "#9aa5b1"
TEAL = "#2a9d8f"

ENDED_COLORS = {"C_CloseSession": BLUE, "C_CloseAllSessions": TEAL, "C_Finalize": GREY, "never": RED}
BEFORE_LOG_ALPHA = 0.45  # a session opened before the log starts: its start is not known
ENDED_LABELS = {
    "C_CloseSession": "closed (C_CloseSession)",
    "C_CloseAllSessions": "closed (C_CloseAllSessions)",
    "C_Finalize": "ended by C_Finalize",
    "never": "left open (leaked)",
}

STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "p11lens",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.edgecolor": MUTED,
    "axes.labelcolor": INK,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlecolor": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.8,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelcolor": INK,
    "ytick.labelcolor": INK,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "figure.dpi": 96,
}


def to_svg(fig, name: str, label: str) -> str:
    """Serialise a figure to a scalable, id-unique, deterministic inline ``<svg>``."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"p11lens-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    # scale with the page: keep the viewBox, drop the fixed size
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", svg, count=1)
    svg = svg.replace("<svg ", f'<svg class="chart" role="img" aria-label="{label}" ', 1)
    # ids must be unique across the charts of one page
    svg = re.sub(r'id="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', svg)
    return svg.strip()


def label(text: str) -> str:
    """A name from a log (function, file) as chart text: controls visible, and ``$`` escaped, or
    matplotlib would typeset ``$...$`` as mathematics (and fail on what does not parse)."""
    return visible_controls(str(text)).replace("$", r"\$")


def _time_unit(span_s: float) -> tuple[float, str]:
    if span_s <= 120:
        return 1.0, "s"
    if span_s <= 2 * 3600:
        return 60.0, "min"
    if span_s <= 3 * 86400:
        return 3600.0, "h"
    return 86400.0, "days"


def _ms_axis(ax, top: float) -> None:
    """Linear up to 50 ms; beyond, symlog with plain 0, 1, 2, 5, 10, 20, 50 ... ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if top <= 50:
        ax.set_xlim(left=-0.02 * top)
        return
    ax.set_xscale("symlog", linthresh=1, linscale=0.4)
    ticks = [0.0] + [m * 10**e for e in range(0, 8) for m in (1, 2, 5) if m * 10**e <= top * 1.05]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
    ax.set_xlim(left=0, right=top * 1.1)


def latency_chart(rows: list[dict]) -> str:
    """Per function (busiest first): a bar from p50 to p99 with p50, p95, p99 and max marked."""
    if not rows:
        return ""
    with plt.rc_context(STYLE):
        n = len(rows)
        fig, ax = plt.subplots(figsize=(W, 0.6 + 0.28 * n))
        ys = list(range(n))[::-1]
        names = [label(r["func"]) for r in rows]
        get = lambda key: [r[key] if r[key] is not None else 0 for r in rows]  # noqa: E731
        p50, p95, p99, mx = get("p50_ms"), get("p95_ms"), get("p99_ms"), get("max_ms")
        ax.hlines(ys, p50, mx, color=GRID, linewidth=2, zorder=1)
        ax.hlines(ys, p50, p99, color=LIGHT_BLUE, linewidth=7, zorder=2)
        ax.scatter(p50, ys, marker="|", s=90, color=INK, zorder=3, label="p50")
        ax.scatter(p95, ys, marker="D", s=22, color=BLUE, zorder=4, label="p95")
        ax.scatter(p99, ys, marker="|", s=90, color=BLUE, zorder=3, label="p99")
        ax.scatter(mx, ys, marker="x", s=18, color=MUTED, zorder=3, label="max")
        ax.set_yticks(ys, names, fontfamily="monospace")
        ax.set_ylim(-0.7, n - 0.3)
        _ms_axis(ax, max(mx + p99 + [1]))
        ax.set_xlabel("ms between a call's entry and the next entry in its thread (upper bound, 1 ms resolution)")
        ax.grid(axis="y", visible=False)
        ax.legend(ncol=4, loc="lower right", bbox_to_anchor=(1, 1.0), borderaxespad=0.2)
        return to_svg(fig, "latency", "Latency percentiles by function")


def activity_chart(buckets: list[Bucket]) -> str:
    """Calls and error returns per time bucket, and p95 latency per bucket below."""
    if not buckets:
        return ""
    t0 = buckets[0].start
    span = (buckets[-1].start - t0).total_seconds() + buckets[-1].seconds
    div, unit = _time_unit(span)
    xs = [(b.start - t0).total_seconds() / div for b in buckets]
    width = buckets[0].seconds / div
    calls = [b.calls for b in buckets]
    errors = [b.errors for b in buckets]
    p95 = [b.p95_ms for b in buckets]
    with plt.rc_context(STYLE):
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(W, 3.8), sharex=True, height_ratios=[2, 1])
        if len(buckets) <= 120:
            ax.bar(xs, calls, width=width * 0.9, align="edge", color=LIGHT_BLUE, label="calls")
            ax.bar(xs, errors, width=width * 0.9, align="edge", color=RED, label="error returns")
        else:  # many buckets: filled steps keep the SVG small
            edges = xs + [xs[-1] + width]
            ax.stairs(calls, edges, fill=True, color=LIGHT_BLUE, label="calls")
            ax.stairs(errors, edges, fill=True, color=RED, label="error returns")
        ax.set_ylabel(f"calls per {_fmt_seconds(buckets[0].seconds)}")
        ax.legend(loc="lower right", bbox_to_anchor=(1, 1.0), ncol=2, borderaxespad=0.2)
        ax.grid(axis="x", visible=False)
        px = [x + width / 2 for x in xs]
        py = [float("nan") if v is None else v for v in p95]  # no calls in a bucket: a gap, not a line
        ax2.plot(px, py, color=BLUE, linewidth=1.4, marker="o" if len(px) <= 60 else None, markersize=3)
        ax2.set_ylabel("p95 ms")
        ax2.set_ylim(bottom=0)
        ax2.set_xlabel(f"{unit} since {fmt_ts(t0)}")
        ax2.set_xlim(0, span / div)
        fig.align_ylabels((ax, ax2))
        return to_svg(fig, "activity", "Calls, errors and p95 latency over time")


def _fmt_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:g} ms"
    if s < 60:
        return f"{s:g} s"
    if s < 3600:
        return f"{s / 60:g} min"
    return f"{s / 3600:g} h"


def _pack(bars: Iterable[SessionBar]) -> list[tuple[SessionBar, int]]:
    """Give overlapping sessions of one lane their own row (first free row wins)."""
    ends: list[float] = []
    out = []
    for bar in sorted(bars, key=lambda b: (b.start_s, b.end_s)):
        for i, end in enumerate(ends):
            if bar.start_s >= end:
                ends[i] = bar.end_s
                out.append((bar, i))
                break
        else:
            ends.append(bar.end_s)
            out.append((bar, len(ends) - 1))
    return out


def _since(unit: str, origin) -> str:
    if origin is None:
        return f"{unit} since each process's first call"
    return f"{unit} since {fmt_ts(origin)}"


def sessions_chart(timeline: Timeline) -> str:
    if timeline.bars:
        return _timeline(timeline.bars, timeline.origin)
    if timeline.open_sessions:
        return _open_sessions(timeline.open_sessions, timeline.origin)
    return ""


def _timeline(bars: list[SessionBar], t0) -> str:
    lanes: dict[str, list[SessionBar]] = {}
    for b in bars:
        lanes.setdefault(b.lane, []).append(b)
    span = max(b.end_s for b in bars) or 0.001
    div, unit = _time_unit(span)
    min_w = span / div * 0.004
    with plt.rc_context(STYLE):
        rows_total = sum(max(r for _b, r in _pack(v)) + 1 for v in lanes.values())
        fig, ax = plt.subplots(figsize=(W, 0.9 + 0.22 * rows_total + 0.12 * len(lanes)))
        y = 0.0
        ticks, labels = [], []
        for lane, lane_bars in lanes.items():
            packed = _pack(lane_bars)
            depth = max(r for _b, r in packed) + 1
            for bar, row in packed:
                x0 = bar.start_s / div
                w = max((bar.end_s - bar.start_s) / div, min_w)
                ax.broken_barh([(x0, w)], (y + row + 0.15, 0.7), facecolors=ENDED_COLORS.get(bar.ended_by, GREY),
                               hatch="////" if bar.leaked else None, edgecolor="white" if bar.leaked else "none", linewidth=0,
                               alpha=BEFORE_LOG_ALPHA if bar.before_log else 1.0)
            ticks.append(y + depth / 2)
            labels.append(label(lane))
            y += depth
            ax.axhline(y + 0.1, color=GRID, linewidth=0.8)
            y += 0.2
        ax.set_yticks(ticks, labels)
        ax.set_ylim(y, -0.1)
        ax.set_xlim(0, span / div * 1.01)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(_since(unit, t0))
        seen = [k for k in ENDED_COLORS if any(b.ended_by == k for b in bars)]
        handles = [Patch(color=ENDED_COLORS[k], label=ENDED_LABELS[k]) for k in seen]
        if any(b.before_log for b in bars):
            handles.append(Patch(color=GREY, alpha=BEFORE_LOG_ALPHA, label="opened before the log (drawn from its first call)"))
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1, 1.0), ncol=len(handles), borderaxespad=0.2)
        return to_svg(fig, "sessions", "Session timeline per process")


def _open_sessions(series: dict[str, list[tuple[float, int]]], t0) -> str:
    span = max(s[-1][0] for s in series.values()) or 0.001
    div, unit = _time_unit(span)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(W, 3))
        for lane, pts in series.items():
            ax.step([t / div for t, _ in pts], [n for _, n in pts], where="post", linewidth=1.2, label=label(lane))
        ax.set_ylabel("open sessions")
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, span / div)
        ax.set_xlabel(_since(unit, t0))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
        return to_svg(fig, "sessions", "Open sessions over time per process")


def compare_chart(rows: list[dict]) -> str:
    """p95 per function, baseline vs candidate (functions in both runs, biggest change first)."""
    rows = [r for r in rows if r.get("p95_ms_b") is not None and r.get("p95_ms_c") is not None]
    if not rows:
        return ""
    with plt.rc_context(STYLE):
        n = len(rows)
        fig, ax = plt.subplots(figsize=(W, 0.6 + 0.3 * n))
        ys = list(range(n))[::-1]
        b = [r["p95_ms_b"] for r in rows]
        c = [r["p95_ms_c"] for r in rows]
        for y, x0, x1 in zip(ys, b, c):
            ax.annotate("", xy=(x1, y), xytext=(x0, y),
                        arrowprops=dict(arrowstyle="-|>", color=RED if x1 > x0 else TEAL, lw=1.4, shrinkA=3, shrinkB=3))
        ax.scatter(b, ys, color=GREY, s=26, zorder=3, label="baseline p95")
        ax.scatter(c, ys, color=BLUE, s=26, zorder=3, label="candidate p95")
        ax.set_yticks(ys, [label(r["func"]) for r in rows], fontfamily="monospace")
        ax.set_ylim(-0.7, n - 0.3)
        _ms_axis(ax, max(b + c + [1]))
        ax.set_xlabel("p95 ms (upper bound, 1 ms resolution)")
        ax.grid(axis="y", visible=False)
        ax.legend(ncol=2, loc="lower right", bbox_to_anchor=(1, 1.0), borderaxespad=0.2)
        return to_svg(fig, "compare", "p95 latency per function, baseline vs candidate")
