"""`roslab mutants`: the mutation coverage table from the last run of tests/test_mutants.py.

Each mutant run leaves results/mutants/<mutant>.json: which scenarios the broken image
must fail, whether each failed with its named cause, and what the run cost (boots,
seconds). The table shows at a glance which checks are proven able to fail.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lab.errors import ConfigError

DEFAULT = Path("results/mutants")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("mutants", help="print the mutation coverage table of the last "
                                         "`pytest tests/test_mutants.py` run")
    cmd.add_argument("--results", type=Path, default=DEFAULT,
                     help=f"folder of the mutant runs' JSON files (default {DEFAULT})")
    cmd.set_defaults(func=cmd_mutants)


def load(folder: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not runs:
        raise ConfigError(f"no mutant results in {folder}: run "
                          "`pytest tests/test_mutants.py` first")
    return runs


def table(runs: list[dict]) -> str:
    rows = [(r["scenario"].removeprefix("scenarios/"), r["mutant"],
             "yes" if r["cause_seen"] else f"NO ({r['outcome']})", r["message"])
            for run in runs for r in run["rows"]]
    rows.sort()
    head = ("scenario", "mutant", "cause seen", "message")
    widths = [min(max(len(row[i]) for row in [head, *rows]), 90) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + "  " + head[3]]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
                     + "  " + row[3][:120])
    proven = sum(r[2] == "yes" for r in rows)
    boots = sum(run["boots"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    lines.append(f"\n{proven}/{len(rows)} checks proven able to fail by {len(runs)} mutants; "
                 f"{boots} boots, {seconds:.0f} s of scenario runs (serial)")
    return "\n".join(lines)


def cmd_mutants(args: argparse.Namespace) -> int:
    runs = load(args.results)
    print(table(runs))
    return 0 if all(r["cause_seen"] for run in runs for r in run["rows"]) else 1
