"""`roslab history`: what the results database remembers.

roslab history test NODEID [--last N] [--json]     outcomes, first failing run
roslab history cell CELL [--last N] [--json]       a cell's runs: outcomes and boot medians
roslab history milestone NAME [--cell C] [--last N] [--json]   a milestone's figures per run
roslab history flakes [--last N] [--json]          each test's flake rate
roslab history import bench FILE.jsonl ...         what earlier runs left: bench history,
roslab history import junit FILE.xml ... [--cell C --platform P ...]     JUnit XML,
roslab history import matrix DIR ...               matrix results folders

Every form takes --results-db URL (default: $ROSLAB_RESULTS_DB, else results/roslab.db).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lab.errors import ConfigError
from reports import results_history as rh
from reports.results_db import ResultsDB, RunData, display, resolve_url

DEFAULT_LAST = 30


def add_results_db_option(parser: argparse.ArgumentParser) -> None:
    """--results-db, for every command that reads or writes the results database."""
    parser.add_argument("--results-db", metavar="URL",
                        help="sqlite:///FILE or postgresql://user@host/db (default: "
                             "$ROSLAB_RESULTS_DB, else results/roslab.db); 'off' for none")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("history", help="a test's, cell's or milestone's history, flake "
                                            "rates; import earlier results",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_results_db_option(p)
        p.add_argument("--last", type=int, default=DEFAULT_LAST,
                       help=f"the last N runs (default: {DEFAULT_LAST})")
        p.add_argument("--json", action="store_true", help="JSON for scripts")
        return p

    test = common(actions.add_parser("test", help="a test's outcomes and first failing run"))
    test.add_argument("nodeid", help="its node id, or a part of it naming one test")
    test.set_defaults(func=cmd_test)
    cell = common(actions.add_parser("cell", help="a cell's runs"))
    cell.add_argument("cell", help="a matrix cell id, or 'platform arch board' of a run")
    cell.set_defaults(func=cmd_cell)
    ms = common(actions.add_parser("milestone", help="a boot milestone's figures per run"))
    ms.add_argument("name", help="e.g. kernel, ssh, user-docker, service:network")
    ms.add_argument("--cell", help="only this cell's runs")
    ms.set_defaults(func=cmd_milestone)
    flakes = common(actions.add_parser("flakes", help="each test's flake rate"))
    flakes.set_defaults(func=cmd_flakes)

    imp = actions.add_parser("import", help="bench history, JUnit or matrix results")
    imp.add_argument("what", choices=("bench", "junit", "matrix"))
    imp.add_argument("paths", type=Path, nargs="+")
    add_results_db_option(imp)
    for key in ("cell", "platform", "arch", "board", "hw", "image_version", "git_commit"):
        imp.add_argument(f"--{key.replace('_', '-')}", dest=key,
                         help="junit: what the file does not say")
    imp.set_defaults(func=cmd_import)


def _open(args: argparse.Namespace, create: bool = False) -> ResultsDB:
    url = resolve_url(args.results_db)
    if url is None:
        raise ConfigError("--results-db off: there is no database to read")
    return ResultsDB(url, create=create, say=lambda m: print(f"roslab: {m}", file=sys.stderr))


def _scenario_runs(args: argparse.Namespace, cell: str | None = None) -> list[Any]:
    with _open(args) as db:
        runs = db.runs(kinds=rh.SCENARIO_KINDS, with_boots=False)
    if cell is not None:
        runs = [r for r in runs if rh.cell_of(r) == cell]
    return runs


def _print_json(data: object) -> int:
    print(json.dumps(data, indent=2, default=str))
    return 0


def _side(o: rh.Outcome) -> dict[str, object]:
    return {**rh.run_summary(o.run), "outcome": o.label}


def cmd_test(args: argparse.Namespace) -> int:
    runs = _scenario_runs(args)
    ids = rh.match_tests(runs, args.nodeid)
    if not ids:
        raise ConfigError(f"no stored test matches {args.nodeid!r}")
    if len(ids) > 1:
        raise ConfigError(f"{args.nodeid!r} names {len(ids)} tests; say which:\n  "
                          + "\n  ".join(ids[:20]))
    series = rh.outcomes(runs, ids[0])[-args.last:]
    change = rh.first_failure(series)
    if args.json:
        return _print_json({
            "test": ids[0],
            "runs": [{**_side(o), "duration": o.final.duration, "cause": o.cause,
                      "last_milestone": o.final.last_milestone, "evidence": o.final.evidence}
                     for o in series],
            "first_failure": None if change is None else {
                "last_pass": _side(change.last_pass), "first_fail": _side(change.first_fail),
                "failing_runs_since": change.failing_since}})
    console = Console(width=max(Console().width, 160))
    # escape: a parametrized id's "[acpid]" is no rich markup
    table = Table(title=escape(f"{ids[0]}: the last {len(series)} runs"))
    for col in ("run", "when (UTC)", "cell", "commit", "image", "outcome", "s", "cause"):
        table.add_column(col, overflow="fold")
    colour = {"passed": "green", "failed": "red", "error": "red", "skipped": "dim"}
    for o in series:
        table.add_row(str(o.run.id), o.run.started.strftime("%Y-%m-%d %H:%M"), rh.cell_of(o.run),
                      o.run.git_commit or "-", o.run.image_version or "-",
                      f"[{colour.get(o.final.outcome, 'yellow')}]{o.label}[/]",
                      f"{o.final.duration:.1f}", escape(o.cause[:120]))
    console.print(table)
    if change is None:
        console.print("no run where it went from passing to failing")
    else:
        before, after = change.last_pass, change.first_fail
        console.print(
            f"[red]first failing run[/]: #{after.run.id} {after.run.started:%Y-%m-%d %H:%M} "
            f"commit {after.run.git_commit} image {after.run.image_version} "
            f"({after.run.image_checksum or 'no checksum'})\n"
            f"[green]last passing run[/]:  #{before.run.id} {before.run.started:%Y-%m-%d %H:%M} "
            f"commit {before.run.git_commit} image {before.run.image_version} "
            f"({before.run.image_checksum or 'no checksum'})\n"
            f"failing in {change.failing_since} run(s) from then on; cause: "
            f"{escape(after.cause)}")
    return 0


def cmd_cell(args: argparse.Namespace) -> int:
    with _open(args) as db:
        runs = [r for r in db.runs() if rh.cell_of(r) == args.cell][-args.last:]
    if not runs:
        raise ConfigError(f"no stored run of cell {args.cell!r}")
    rows = []
    for run in runs:
        medians = {m: f.median for m in ("kernel", "ssh", "user-docker")
                   for f in rh.milestone_figures([run], m)}
        rows.append({**rh.run_summary(run), "outcomes": rh.counts(run), "boots": len(run.boots),
                     "failed_boots": sum(not b.ok for b in run.boots), "medians": medians})
    if args.json:
        return _print_json({"cell": args.cell, "runs": rows})
    table = Table(title=escape(f"cell {args.cell}: the last {len(rows)} runs"))
    for col in ("run", "when (UTC)", "kind", "commit", "image", "tests", "boots", "kernel",
                "ssh", "user-docker"):
        table.add_column(col)
    for r in rows:
        tests = ", ".join(f"{n} {k}" for k, n in sorted(r["outcomes"].items())) or "-"
        table.add_row(str(r["run"]), str(r["started"])[:16].replace("T", " "), str(r["kind"]),
                      str(r["commit"] or "-"), str(r["image_version"] or "-"), tests,
                      f"{r['boots']} ({r['failed_boots']} failed)" if r["failed_boots"]
                      else str(r["boots"]),
                      *(f"{r['medians'][m]:.1f}" if m in r["medians"] else "-"
                        for m in ("kernel", "ssh", "user-docker")))
    Console(width=max(Console().width, 140)).print(table)
    return 0


def cmd_milestone(args: argparse.Namespace) -> int:
    with _open(args) as db:
        runs = db.runs(with_tests=False)
    if args.cell:
        runs = [r for r in runs if rh.cell_of(r) == args.cell]
    figures = rh.milestone_figures(runs, args.name)[-args.last:]
    if not figures:
        raise ConfigError(f"no completed boot stored reached {args.name!r}"
                          + (f" in cell {args.cell!r}" if args.cell else ""))
    if args.json:
        return _print_json({"milestone": args.name, "runs": [
            {**rh.run_summary(f.run), "boots": f.n, "median": f.median, "min": f.low,
             "max": f.high} for f in figures]})
    table = Table(title=f"{args.name}: seconds since power-on, the last {len(figures)} runs")
    for col in ("run", "when (UTC)", "kind", "cell", "image", "boots", "median", "min", "max"):
        table.add_column(col, justify="right" if col in ("boots", "median", "min", "max")
                         else "left")
    for f in figures:
        table.add_row(str(f.run.id), f.run.started.strftime("%Y-%m-%d %H:%M"), f.run.kind,
                      rh.cell_of(f.run), f.run.image_version or "-", str(f.n),
                      f"{f.median:.3f}", f"{f.low:.3f}", f"{f.high:.3f}")
    Console(width=max(Console().width, 120)).print(table)
    return 0


def cmd_flakes(args: argparse.Namespace) -> int:
    with _open(args) as db:
        runs = db.runs(kinds=rh.SCENARIO_KINDS, last=args.last, with_boots=False)
    table_rows = rh.flakiness(runs)
    if args.json:
        return _print_json({"runs": len(runs), "tests": [
            {"test": f.nodeid, "runs": f.runs, "passed": f.passed, "failed": f.failed,
             "passed_on_rerun": f.passed_on_rerun, "flips": f.flips,
             "flake_rate": round(f.rate, 4), "fail_rate": round(f.fail_rate, 4)}
            for f in table_rows]})
    table = Table(title=f"flake rates over the last {len(runs)} runs (flake: passed on its "
                        "rerun, or flipped with the same commit, image and options)")
    for col in ("test", "runs", "passed", "failed", "passed on rerun", "flips", "flake rate",
                "fail rate"):
        table.add_column(col, justify="left" if col == "test" else "right", overflow="fold")
    for f in table_rows:
        table.add_row(escape(f.nodeid), str(f.runs), str(f.passed), str(f.failed),
                      str(f.passed_on_rerun), str(f.flips), f"{f.rate:.0%}", f"{f.fail_rate:.0%}")
    Console(width=max(Console().width, 140)).print(table)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from reports import results_record as rr

    added = skipped = 0
    with _open(args, create=True) as db:
        runs: list[RunData] = []
        if args.what == "bench":
            for path in args.paths:
                runs += rr.runs_from_bench_history(path, db.has_lab_run)
        elif args.what == "junit":
            given = {k: getattr(args, k) for k in ("cell", "platform", "arch", "board", "hw",
                                                   "image_version", "git_commit")}
            runs = [rr.run_from_junit(path, **given) for path in args.paths]
        else:
            runs = [rr.run_from_cell(folder, source="import:matrix")
                    for folder in rr.cell_folders(args.paths)]
        for run in runs:
            if db.add(run) is None:
                skipped += 1
            else:
                added += 1
        print(f"roslab history: {added} runs imported into {display(db.url)}, {skipped} "
              "already there")
    return 0
