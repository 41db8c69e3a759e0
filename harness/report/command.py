"""`reformer-bench report RESULTS... -o report.html [--baseline RESULTS...]`."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report", help="write the HTML report of one or more results directories",
        description="Write one self-contained HTML report (opens offline) of results directories "
                    "written by `reformer-bench run`; with --baseline, add ratio columns and a regression table.")
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS", help="results directories")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file to write")
    parser.add_argument("--baseline", nargs="+", type=Path, default=None, metavar="RESULTS",
                        help="results directories to compare against")
    parser.add_argument("--plotly-js", choices=("inline", "cdn"), default="inline",
                        help="inline plotly.js (default: the page opens offline) or load it from plotly's CDN")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """0 on success; bad input raises harness.errors.UserError (the CLI prints one line, exit 2)."""
    from ..errors import UserError
    from .page import write_report

    try:
        path = write_report(args.results, args.output, args.baseline, args.plotly_js)
    except OSError as exc:
        raise UserError(f"{exc.filename or args.output}: {exc.strerror}") from None
    print(f"wrote {path}")
    return 0
