"""`roslab mutants`: the mutation coverage table of the last `pytest tests/test_mutants.py`
run (reports/mutants.py); exits non-zero when a case has no mutant or a cause was not seen."""

from __future__ import annotations

import argparse
from pathlib import Path

from reports.mutants import DEFAULT, load, scenario_cases, table, verdict


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("mutants", help="print the mutation coverage table of the last "
                                         "`pytest tests/test_mutants.py` run")
    cmd.add_argument("--results", type=Path, default=DEFAULT,
                     help=f"folder of the mutant runs' JSON files (default {DEFAULT})")
    cmd.set_defaults(func=cmd_mutants)


def cmd_mutants(args: argparse.Namespace) -> int:
    runs = load(args.results)
    cases = scenario_cases()
    print(table(runs, cases))
    return 0 if verdict(runs, cases) else 1
