"""`roslab dashboard -o site/`: the results database as a static site (a CI artifact, or
GitHub Pages): cells by night, boot-milestone trends per cell, flaky tests, failures with
their evidence.

roslab dashboard [-o site/] [--last N] [--results-db URL]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from commands.history import add_results_db_option
from lab.errors import ConfigError
from reports.results_db import ResultsDB, display, resolve_url

DEFAULT_OUT = Path("results/dashboard")
DEFAULT_LAST = 200


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("dashboard", help="a static site of the results database",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT,
                        help=f"the site's folder (default: {DEFAULT_OUT})")
    parser.add_argument("--last", type=int, default=DEFAULT_LAST,
                        help=f"the last N runs (default: {DEFAULT_LAST})")
    add_results_db_option(parser)
    parser.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from reports.dashboard import write_site

    url = resolve_url(args.results_db)
    if url is None:
        raise ConfigError("--results-db off: there is no database to read")
    with ResultsDB(url, create=False,
                   say=lambda m: print(f"roslab: {m}", file=sys.stderr)) as db:
        runs = db.runs(last=args.last)
    index = write_site(runs, args.output, display(url))
    print(f"roslab dashboard: {index} ({len(runs)} runs)")
    return 0
