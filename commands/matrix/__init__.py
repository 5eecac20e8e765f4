"""`roslab matrix`: the nightly matrix (matrix.yml) planned, emitted as CI files, run, reported.

roslab matrix plan [--file matrix.yml] [--json]
roslab matrix emit github|gitlab [--file matrix.yml] [-o FILE]
roslab matrix run [--cell ID ...|--where KEY=VALUE ...] [--results results/matrix] [--rehearse]
                  [--results-db URL]
roslab matrix report RESULTS... [-o results/matrix-report] [--previous DIR|bench.jsonl]
                  [--results-db URL]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from commands.history import add_results_db_option
from commands.matrix import plan as mx
from lab.errors import ConfigError
from reports.results_db import ENV, resolve_url

DEFAULT_RESULTS = Path("results/matrix")
DEFAULT_REPORT = Path("results/matrix-report")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("matrix", help="the nightly matrix: plan, emit CI files, run, "
                                           "report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)

    def with_file(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--file", type=Path, default=mx.DEFAULT_FILE,
                       help=f"the matrix (default: {mx.DEFAULT_FILE})")
        return p

    plan = with_file(actions.add_parser("plan", help="check the matrix and list its cells"))
    plan.add_argument("--json", action="store_true", help="the cells as JSON")
    plan.set_defaults(func=cmd_plan)

    emit = with_file(actions.add_parser("emit", help="write the CI configuration"))
    emit.add_argument("system", choices=("github", "gitlab"))
    emit.add_argument("-o", "--output", type=Path,
                      help="default: .github/workflows/nightly.yml or .gitlab/nightly.yml")
    emit.set_defaults(func=cmd_emit)

    run = with_file(actions.add_parser("run", help="run cells here, one after another"))
    run.add_argument("--cell", action="append", default=[], metavar="ID")
    run.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                     help="cells whose field matches, e.g. platform=qemu arch=aarch64")
    run.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                     help=f"a folder per cell under it (default: {DEFAULT_RESULTS})")
    run.add_argument("--rehearse", action="store_true",
                     help="run the cloud cells against their drivers' stand-ins on this host "
                          "(real QEMU guests), not the clouds: no secrets needed")
    add_results_db_option(run)
    run.set_defaults(func=cmd_run)

    rep = actions.add_parser("report", help="merge cells' results: HTML, JUnit, allure, "
                                            "summary line, exit code")
    rep.add_argument("results", type=Path, nargs="+",
                     help="cell results folders, or folders holding them")
    rep.add_argument("-o", "--output", type=Path, default=DEFAULT_REPORT)
    rep.add_argument("--previous", type=Path,
                     help="the previous nightly's report folder or bench.jsonl (boot medians); "
                          "default: the latest nightly in --results-db, when given")
    rep.add_argument("--results-db", metavar="URL",
                     help="the results database to read the previous nightly from")
    rep.add_argument("--matrix", type=Path,
                     help="the matrix: its cells without results are named as missing")
    rep.set_defaults(func=cmd_report)


def cmd_plan(args: argparse.Namespace) -> int:
    matrix = mx.load(args.file)
    if args.json:
        print(json.dumps({"cells": [asdict(c) for c in matrix.cells],
                          "known_failures": [e.to_json() for e in matrix.known_failures],
                          "allowed_flakes": [e.to_json() for e in matrix.allowed_flakes]},
                         indent=2))
        return 0
    table = Table(title=f"{args.file}: {len(matrix.cells)} cells")
    for col in ("cell", "platform", "arch", "image", "hw", "scenarios", "timeout",
                "secrets", "gc"):
        table.add_column(col, overflow="fold")
    for c in matrix.cells:
        scen = " ".join(c.scenarios) + (f" -k {c.keyword}" if c.keyword else "")
        table.add_row(c.id, c.platform, c.arch, c.image, c.hw or "-", scen,
                      f"{c.timeout_minutes} min", " ".join(c.secrets) or "-",
                      "yes" if c.cloud else "-")
    # CI logs are no terminal: rich would fold the table to 80 columns there
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    for e in matrix.known_failures:
        console.print(f"known failure: {e.scenario} ({', '.join(e.cells) or 'every cell'}) "
                      f"until {e.expires}: {e.tracker}")
    for e in matrix.allowed_flakes:
        console.print(f"allowed to flake: {e.scenario} ({', '.join(e.cells) or 'every cell'})"
                      f": {e.tracker}")
    return 0


def cmd_emit(args: argparse.Namespace) -> int:
    from commands.matrix.emit import DEFAULT_OUTPUT, emit

    matrix = mx.load(args.file)
    out = args.output or DEFAULT_OUTPUT[args.system]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(emit(matrix, args.system), "utf-8")
    print(f"roslab matrix: wrote {out} ({len(matrix.cells)} cells)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from commands.matrix.run import run_cell

    matrix = mx.load(args.file)
    cells = [matrix.cell(c) for c in args.cell] if args.cell else matrix.where(args.where)
    if args.cell and args.where:
        cells = [c for c in cells if c in matrix.where(args.where)]
    if not cells:
        raise ConfigError("no cell matches: see `roslab matrix plan`")
    started = time.monotonic()
    url = resolve_url(args.results_db)
    verdicts = [run_cell(matrix, cell, args.results, args.rehearse, url) for cell in cells]
    minutes = (time.monotonic() - started) / 60
    neutral = [v.cell for v in verdicts if v.not_configured]
    green = sum(v.green for v in verdicts)
    print(f"roslab matrix: {green} of {len(cells)} cells green in {minutes:.1f} min"
          + (f", {len(neutral)} not configured ({', '.join(neutral)})" if neutral else "")
          + f"; results in {args.results}")
    return 0 if all(v.green or v.not_configured for v in verdicts) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from reports.matrix import report

    expected = [c.id for c in mx.load(args.matrix).cells] if args.matrix else []
    previous: Path | list[dict[str, Any]] | None = args.previous
    named = args.results_db or os.environ.get(ENV)  # only a database named: none by default
    url = resolve_url(named) if named else None
    if previous is None and url is not None:
        from reports.results_db import ResultsDB
        from reports.results_record import previous_nightly

        with ResultsDB(url, create=True) as db:  # a first nightly: an empty history
            previous = previous_nightly(db, args.results)
    nightly = report(args.results, args.output, previous, expected)
    print(nightly.summary())
    print(f"report: {args.output / 'report.html'}", file=sys.stderr)
    return 0 if nightly.green else 1
