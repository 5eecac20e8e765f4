"""`roslab mutants`: the mutation coverage table from the last run of tests/test_mutants.py.

Each mutant run leaves results/mutants/<mutant>.json: which scenarios the broken image
must fail, whether each failed with its named cause, and what the run cost (boots,
seconds). The table has a row per scenario case as pytest collects it (a parametrized
scenario's every case, `test_x[url]`), so a case no mutant fails shows as such.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lab.errors import ConfigError

DEFAULT = Path("results/mutants")
ROOT = Path(__file__).resolve().parent.parent
NO_MUTANT = "NO (no mutant run)"  # no results: no mutant, or its run not done


def scenario_cases(timeout: float = 600) -> list[str]:
    """Every scenario case's node id, parameters included, as pytest collects them for
    the reference image on QEMU (the profile decides some parameters: its services)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "scenarios", "--collect-only",
         "-q", "--platform", "qemu", "--accel", "tcg"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise ConfigError("collecting the scenarios failed:\n"
                          + result.stdout[-3000:] + result.stderr[-3000:])
    return [line.strip() for line in result.stdout.splitlines() if "::" in line]


def load(folder: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not runs:
        raise ConfigError(f"no mutant results in {folder}: run "
                          "`pytest tests/test_mutants.py` first")
    return runs


def table(runs: list[dict], cases: list[str]) -> str:
    """A row per mutant's scenario case, and one per collected case that no mutant fails."""
    rows = [(r["scenario"].removeprefix("scenarios/"), r["mutant"],
             "yes" if r["cause_seen"] else f"NO ({r['outcome']})", r["message"])
            for run in runs for r in run["rows"]]
    covered = {r["scenario"] for run in runs for r in run["rows"]}
    rows += [(case.removeprefix("scenarios/"), "-", NO_MUTANT, "")
             for case in cases if case not in covered]
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
    seen = {r[0] for r in rows if r[2] == "yes"}
    failed_cases = sum(case.removeprefix("scenarios/") in seen for case in cases)
    lines.append(f"\n{proven}/{len(rows)} checks proven able to fail by {len(runs)} mutants; "
                 f"{failed_cases}/{len(cases)} scenario cases failed by one; "
                 f"{boots} boots, {seconds:.0f} s of scenario runs (serial)")
    return "\n".join(lines)


def verdict(runs: list[dict], cases: list[str]) -> bool:
    """Every mutant failed its cases with their causes, and every case has a mutant."""
    proven = {r["scenario"] for run in runs for r in run["rows"] if r["cause_seen"]}
    return all(r["cause_seen"] for run in runs for r in run["rows"]) and proven >= set(cases)
