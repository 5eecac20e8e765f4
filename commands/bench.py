"""`roslab bench`: run boots (no action), `compare`, `report`, `merge`, `show`.

roslab bench --platform qemu --runs 10 [--image DIR] [--arch x86_64] [--accel auto]
roslab bench compare --baseline H [--baseline-where k=v] --candidate H2 [...]
roslab bench report HISTORY... -o report.html
roslab bench merge A B -o C
roslab bench show HISTORY [--where k=v]
roslab soak --runs 50 [same options as a bench run]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from commands.history import add_results_db_option
from drivers import DEFAULT_PLATFORM, PLATFORMS, add_platform_options, platform_option_values
from lab.errors import ConfigError
from reports import history
from reports.bench import BenchOptions, fmt_s, print_summary, run_bench
from reports.results_db import resolve_url
from reports.stats import Criteria, Verdict, compare, describe, failure_counts

DEFAULT_HISTORY = Path("results/bench/history.jsonl")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser(
        "bench",
        help="boot-time bench: N cold boots into a history; compare, report, merge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Run options sit on `bench` itself so `roslab bench --platform qemu --runs 5` runs.
    _run_options(bench, runs=5)
    bench.set_defaults(func=cmd_run)
    soak = sub.add_parser(
        "soak",
        help="boot, check the image contract and stop, N times: the lab's own flake rate",
    )
    _run_options(soak, runs=50)
    soak.set_defaults(func=cmd_soak)
    actions = bench.add_subparsers(
        dest="action", metavar="{compare,report,merge,show,restore,power}"
    )

    cmp_ = actions.add_parser("compare", help="is the candidate slower than the baseline?")
    cmp_.add_argument("--baseline", type=Path, required=True, help="history file")
    cmp_.add_argument("--candidate", type=Path, help="history file (default: the baseline's)")
    cmp_.add_argument(
        "--baseline-where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="filter the baseline, e.g. image_version=v1.4.1 or since=2025-01-01",
    )
    cmp_.add_argument("--candidate-where", action="append", default=[], metavar="KEY=VALUE")
    cmp_.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="filter both, e.g. platform=qemu arch=x86_64 accel=kvm",
    )
    cmp_.add_argument(
        "--alpha", type=float, default=Criteria.alpha, help="per metric (default: 0.02)"
    )
    cmp_.add_argument(
        "--min-effect",
        type=float,
        default=Criteria.min_effect,
        help="smallest slowdown that counts, seconds (default: 0.03)",
    )
    cmp_.add_argument(
        "--min-effect-pct",
        type=float,
        default=Criteria.min_effect_rel * 100,
        help="... or percent of the baseline median, the larger wins (default: 6)",
    )
    cmp_.set_defaults(func=cmd_compare)

    rep = actions.add_parser("report", help="single-file HTML report of a history")
    rep.add_argument("histories", type=Path, nargs="+")
    rep.add_argument("-o", "--output", type=Path, required=True)
    rep.add_argument("--where", action="append", default=[], metavar="KEY=VALUE")
    rep.set_defaults(func=cmd_report)

    mrg = actions.add_parser("merge", help="merge histories, dedup by record id")
    mrg.add_argument("histories", type=Path, nargs="+")
    mrg.add_argument("-o", "--output", type=Path, required=True)
    mrg.set_defaults(func=cmd_merge)

    show = actions.add_parser("show", help="per-milestone statistics of a history")
    show.add_argument("histories", type=Path, nargs="+")
    show.add_argument("--where", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(func=cmd_show)

    rst = actions.add_parser(
        "restore", help="boot one machine, save it, restore it N times (timed, each checked)"
    )
    _run_options(rst, runs=20)
    rst.set_defaults(func=cmd_restore)

    pw = actions.add_parser(
        "power", help="detection and false-alarm rates of `compare` on simulated boots"
    )
    pw.add_argument("--runs", type=int, default=10, help="boots a side (default: 10)")
    pw.add_argument("--shift-pct", type=float, default=10.0, help="slowdown (default: 10)")
    pw.add_argument("--trials", type=int, default=400, help="compares per figure")
    pw.add_argument(
        "--spread-pct", type=float, help="every phase's run-to-run spread (default: the soak's)"
    )
    pw.add_argument("--history", type=Path, help="take phases and spreads from this history")
    pw.add_argument("--where", action="append", default=[], metavar="KEY=VALUE")
    pw.set_defaults(func=cmd_power)


def _console() -> Console:
    return Console(stderr=True)


def _run_options(parser: argparse.ArgumentParser, runs: int) -> None:
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, choices=sorted(PLATFORMS),
                        help=f"where to boot (default: {DEFAULT_PLATFORM})")
    parser.add_argument("--image", type=Path, help="image folder or file (default: reference)")
    parser.add_argument("--runs", type=int, default=runs, help=f"cold boots (default: {runs})")
    parser.add_argument("--arch", default="x86_64", help="guest architecture (default: x86_64)")
    parser.add_argument("--accel", default="auto", help="kvm, tcg, hvf or auto (default)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per boot step")
    parser.add_argument(
        "--history",
        type=Path,
        default=DEFAULT_HISTORY,
        help=f"history to append to (default: {DEFAULT_HISTORY})",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where boots keep console logs (default: beside the history)"
    )
    add_results_db_option(parser)
    add_platform_options(parser.add_argument_group("platform options").add_argument)


def _bench_options(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        platform=args.platform,
        image=args.image,
        runs=args.runs,
        arch=args.arch,
        accel=args.accel,
        history=args.history,
        timeout=args.timeout,
        workdir=args.workdir,
        platform_options=platform_option_values(args),
        results_db=resolve_url(args.results_db),
    )


def cmd_run(args: argparse.Namespace) -> int:
    result = run_bench(_bench_options(args), _console())
    if result.interrupted:
        raise KeyboardInterrupt
    return 1 if result.failed else 0


def cmd_soak(args: argparse.Namespace) -> int:
    from reports.soak import run_soak

    result = run_soak(_bench_options(args), _console())
    if result.interrupted:
        raise KeyboardInterrupt
    return 1 if result.failed else 0


def _selected(paths: list[Path], where: list[str]) -> list[history.Record]:
    filters = history.parse_filters(where)  # before reading: a typo fails fast
    return history.select(history.read(paths), filters)


def cmd_show(args: argparse.Namespace) -> int:
    records = _selected(args.histories, args.where)
    if not records:
        raise ConfigError("no boot records match")
    print_summary(records, Console(), title=", ".join(map(str, args.histories)))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from reports.restore import run_restore_bench

    records = run_restore_bench(_bench_options(args), _console())
    return 0 if records and all(r["ok"] for r in records) else 1


def cmd_power(args: argparse.Namespace) -> int:
    from reports.power import SOAK_PHASES, BootModel, model_phases, simulate

    if args.runs < 3 or args.trials < 1:
        raise ConfigError("--runs must be at least 3 and --trials at least 1")
    phases = model_phases(_selected([args.history], args.where)) if args.history else SOAK_PHASES
    if not phases:
        raise ConfigError(f"{args.history}: no completed boot matches")
    if args.spread_pct is not None:
        phases = {name: (median, args.spread_pct / 100) for name, (median, _) in phases.items()}
    rates = simulate(BootModel(phases), args.runs, 1 + args.shift_pct / 100, args.trials)
    table = Table(title=f"{args.runs} runs a side, {args.trials} compares per row")
    for col in ("phase shifted", "median s", "spread", "detected"):
        table.add_column(col, justify="left" if col == "phase shifted" else "right")
    for name, rate in rates.detection.items():
        median, cv = phases[name]
        table.add_row(name, fmt_s(median), f"{cv:.1%}", f"{rate:.1%}")
    console = Console()
    console.print(table)
    console.print(f"false alarms (same vs same, any metric): {rates.false_alarm:.1%}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    result = history.merge(args.histories, args.output)
    print(
        f"{args.output}: {result.written} records ({result.duplicates} duplicates dropped"
        f", {result.conflicts} of them with different content)"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reports.html import render  # numpy-heavy picture code only when asked

    records = _selected(args.histories, args.where)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(records, ", ".join(map(str, args.histories))), "utf-8")
    print(f"{args.output}: {len(records)} boot records")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1, not {args.alpha}")
    candidate_path = args.candidate or args.baseline
    if candidate_path == args.baseline and args.baseline_where == args.candidate_where:
        raise ConfigError(
            "baseline and candidate select the same records: "
            "give --candidate or different --baseline-where/--candidate-where"
        )
    baseline = _selected([args.baseline], args.where + args.baseline_where)
    candidate = _selected([candidate_path], args.where + args.candidate_where)
    for name, records in (("baseline", baseline), ("candidate", candidate)):
        if not failure_counts(records)[0]:
            raise ConfigError(f"the {name} selection has no completed boot")
    console = Console()
    _warn_mixed(console, baseline, candidate)
    criteria = Criteria(args.alpha, args.min_effect, args.min_effect_pct / 100)
    verdicts = compare(baseline, candidate, criteria)
    console.print(verdict_table(verdicts, criteria))
    slower = [v for v in verdicts if v.regression]
    for name, records in (("baseline", baseline), ("candidate", candidate)):
        ok, failed = failure_counts(records)
        console.print(f"{name}: {ok} completed boots, {failed} failed")
    if slower:
        console.print(
            f"[red]REGRESSION[/] in {len(slower)} of {len(verdicts)} metrics: "
            + ", ".join(f"{v.kind} {v.metric}" for v in slower)
        )
        return 1
    console.print("[green]no regression[/]")
    return 0


def _warn_mixed(console: Console, *selections: list[history.Record]) -> None:
    # Boot times from KVM and TCG, or QEMU and a cloud, are different quantities.
    for key in ("platform", "arch", "board", "accel"):
        values = sorted({v for records in selections for v in describe(records)[key]})
        if len(values) > 1:
            console.print(
                f"[yellow]warning:[/] comparing across {key}s {values}; "
                f"narrow with --where {key}=..."
            )


def verdict_table(verdicts: list[Verdict], criteria: Criteria) -> Table:
    table = Table(
        title=f"candidate vs baseline: one-sided Mann-Whitney U, alpha "
        f"{criteria.alpha}, min effect max({criteria.min_effect}s, "
        f"{criteria.min_effect_rel:.0%})"
    )
    for col in (
        "kind",
        "metric",
        "base n",
        "base median",
        "cand n",
        "cand median",
        "shift",
        "needed",
        "p",
        "verdict",
    ):
        table.add_column(col, justify="left" if col in ("kind", "metric", "verdict") else "right")
    colour = {"slower": "red", "missing": "red", "ok": "green", "insufficient": "yellow"}
    for v in verdicts:
        table.add_row(
            v.kind,
            v.metric,
            str(v.baseline.n) if v.baseline else "0",
            fmt_s(v.baseline.median) if v.baseline else "-",
            str(v.candidate.n) if v.candidate else "0",
            fmt_s(v.candidate.median) if v.candidate else "-",
            f"{v.shift:+.3f}" if v.shift is not None else "-",
            fmt_s(v.threshold) if v.threshold is not None else "-",
            f"{v.p_value:.4f}" if v.p_value is not None else "-",
            f"[{colour[v.status]}]{v.status}[/]",
        )
    return table
