"""What the results database says over many runs: a test's outcomes, the run where a
passing test started failing, each test's flake rate, a milestone's figures per run.
Plain functions over stored runs, shared by `roslab history` and the dashboard.

A flake is a change of outcome that no change of input explains: a test that failed and
passed on its rerun in the same run, or a test whose outcome flipped between two
consecutive runs of the same cell with the same lab commit, image checksum and options.
A test's flake rate is its flakes over the runs that ran it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from reports.results_db import Run, TestResult

FAILING = ("failed", "error")
SCENARIO_KINDS = ("scenarios", "cell")
TREND_MILESTONES = ("kernel", "init", "system-docker", "login-prompt", "ssh", "user-docker")


def cell_of(run: Run) -> str:
    """The matrix cell, or what a cell would say: platform arch board [hw]."""
    if run.cell:
        return run.cell
    parts = [run.platform or "?", run.arch or "?", run.board or "", run.hw or ""]
    return " ".join(p for p in parts if p)


def night_of(run: Run) -> str:
    return run.started.strftime("%Y-%m-%d")


def inputs_of(run: Run) -> tuple[str | None, ...]:
    return (cell_of(run), run.git_commit, run.image_checksum or run.image_version, run.options)


@dataclass(frozen=True)
class Outcome:
    """A test in one run: its final outcome (the rerun's, when rerun) and its attempts."""

    run: Run
    final: TestResult
    first: TestResult

    @property
    def failing(self) -> bool:
        return self.final.outcome in FAILING

    @property
    def passed_on_rerun(self) -> bool:
        return self.first.outcome in FAILING and self.final is not self.first \
            and self.final.outcome == "passed"

    @property
    def label(self) -> str:
        if self.passed_on_rerun:
            return "passed on rerun"
        return self.final.outcome

    @property
    def cause(self) -> str:
        failed = self.final if self.failing else self.first
        return failed.cause or "" if failed.outcome in FAILING else ""


def outcomes(runs: Iterable[Run], nodeid: str) -> list[Outcome]:
    out = []
    for run in runs:
        attempts = sorted((t for t in run.tests if t.nodeid == nodeid), key=lambda t: t.attempt)
        if attempts:
            out.append(Outcome(run, attempts[-1], attempts[0]))
    return out


def match_tests(runs: Iterable[Run], wanted: str) -> list[str]:
    """Node ids equal to `wanted`, else containing it."""
    ids = sorted({t.nodeid for run in runs for t in run.tests})
    exact = [n for n in ids if n == wanted]
    return exact or [n for n in ids if wanted in n]


@dataclass(frozen=True)
class Transition:
    last_pass: Outcome
    first_fail: Outcome
    failing_since: int  # runs failing from first_fail on (to the latest run)


def first_failure(series: Sequence[Outcome]) -> Transition | None:
    """The latest pass -> fail: the last passing run and the first failing run after it."""
    for i in range(len(series) - 1, 0, -1):
        if series[i].failing and not series[i - 1].failing and \
                series[i - 1].final.outcome == "passed":
            streak = 0
            for later in series[i:]:
                if not later.failing:
                    break
                streak += 1
            return Transition(series[i - 1], series[i], streak)
    return None


@dataclass(frozen=True)
class Flakiness:
    nodeid: str
    runs: int
    passed: int
    failed: int
    passed_on_rerun: int
    flips: int  # outcome changes between consecutive runs with the same inputs

    @property
    def flakes(self) -> int:
        return self.passed_on_rerun + self.flips

    @property
    def rate(self) -> float:
        return self.flakes / self.runs if self.runs else 0.0

    @property
    def fail_rate(self) -> float:
        return self.failed / self.runs if self.runs else 0.0


def flakiness(runs: Sequence[Run]) -> list[Flakiness]:
    """Every test of `runs`, most flaky first (then most failing, then by name)."""
    ids = sorted({t.nodeid for run in runs for t in run.tests})
    table = []
    for nodeid in ids:
        series = [o for o in outcomes(runs, nodeid) if o.final.outcome != "skipped"]
        if not series:
            continue
        flips = 0
        last: dict[tuple[str | None, ...], Outcome] = {}  # per inputs: its previous run
        for o in series:
            key = inputs_of(o.run)
            before = last.get(key)
            if before is not None and before.failing != o.failing:
                flips += 1
            last[key] = o
        table.append(Flakiness(
            nodeid=nodeid, runs=len(series), passed=sum(not o.failing for o in series),
            failed=sum(o.failing for o in series),
            passed_on_rerun=sum(o.passed_on_rerun for o in series), flips=flips))
    return sorted(table, key=lambda f: (-f.rate, -f.fail_rate, f.nodeid))


@dataclass(frozen=True)
class Figure:
    """A milestone in one run: over its completed boots that reached it."""

    run: Run
    n: int
    median: float
    low: float
    high: float


def milestone_figures(runs: Iterable[Run], name: str) -> list[Figure]:
    out = []
    for run in runs:
        values = [m.seconds for b in run.boots if b.ok for m in b.milestones if m.name == name]
        if values:
            out.append(Figure(run, len(values), float(np.median(values)), min(values),
                              max(values)))
    return out


def milestone_names(runs: Iterable[Run]) -> list[str]:
    names = {m.name for run in runs for b in run.boots for m in b.milestones}
    ordered = [n for n in TREND_MILESTONES if n in names]
    return ordered + sorted(names - set(ordered))


def counts(run: Run) -> dict[str, int]:
    """Final outcomes of a run's tests (a rerun's replaces its first attempt)."""
    final: dict[str, TestResult] = {}
    for t in sorted(run.tests, key=lambda t: t.attempt):
        final[t.nodeid] = t
    tally: dict[str, int] = defaultdict(int)
    for t in final.values():
        tally["failed" if t.outcome in FAILING else t.outcome] += 1
    return dict(tally)


def run_summary(run: Run) -> dict[str, object]:
    """What a run is, for tables and --json."""
    return {"run": run.id, "kind": run.kind, "started": run.started.isoformat() + "Z",
            "cell": cell_of(run), "commit": run.git_commit, "image_version": run.image_version,
            "image_checksum": run.image_checksum, "host": run.host, "accel": run.accel,
            "source": run.source}
