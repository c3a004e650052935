"""``p11lens report OUT [--format html|md|txt] [-o FILE]``: stage outputs → one report file."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import write_stdout
from reports.formats import FORMATS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="render a report (HTML, Markdown or text) from an analyzed output folder",
        description=(
            "Render the stage outputs of OUT (written by `p11lens analyze` or `p11lens run`) as one "
            "self-contained HTML page (works offline), GitHub-flavoured Markdown, or plain text. "
            "Without -o the report goes to OUT/report.<format>; -o - writes it to stdout."
        ),
    )
    p.add_argument("out", type=Path, metavar="OUT", help="an output folder with manifest.json and the stage files")
    p.add_argument("-f", "--format", choices=sorted(FORMATS), default=None,
                   help="report format (default: from -o's extension, else html)")
    p.add_argument("-o", "--output", metavar="FILE", default=None, help="where to write (default OUT/report.<format>; - for stdout)")
    p.set_defaults(run=run)


def output_format(fmt: str | None, output: str | None) -> str:
    """The format asked for, else the one -o's extension names (.md, .txt, .html), else html."""
    if fmt:
        return fmt
    suffix = Path(output).suffix.lower().lstrip(".") if output and output != "-" else ""
    return {"htm": "html", "markdown": "md", "text": "txt"}.get(suffix, suffix) if suffix in (*FORMATS, "htm", "markdown", "text") else "html"


def run(args: argparse.Namespace) -> int:
    from pipeline.outputs import recover, replacing
    from reports.model import load_report
    from reports.render import default_path, render, write_text  # here, not at the top: `p11lens --help` loads no data library

    fmt = output_format(args.format, args.output)
    if args.output is None:  # OUT/report.<format> joins OUT's set like any of its outputs
        with replacing(args.out, keep_derived=True, create=False) as stage:
            write_text(default_path(stage, fmt), render(load_report(args.out), fmt))
        write_stdout(f"{default_path(args.out, fmt)}\n")
        return 0
    recover(args.out)  # read a whole set, not one a killed run was installing
    text = render(load_report(args.out), fmt)
    if args.output == "-":
        write_stdout(text)
    else:
        write_stdout(f"{write_text(Path(args.output), text)}\n")
    return 0
