"""`roslab dashboard`: a static site from the results database, for a CI artifact or
GitHub Pages. No script, no network: inline SVG (reports/svg.py) and plain links, so it
opens offline in any browser.

    index.html        cells by night (each night's outcomes, linked to its runs), trend
                      plots of the boot milestones per cell, flaky tests, recent failures
    runs/<id>.html    one run: its context, tests (failure cause, evidence) and boots
    evidence/<id>/    the failed tests' console logs, copied so the links work anywhere
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from reports import results_history as rh
from reports.html import CSS
from reports.results_db import Run, TestResult
from reports.svg import Bar, Point, trend, waterfall

PAGE_CSS = CSS + """
td, th { text-align: left; vertical-align: top; }
.ok { background: #e3f4e1; } .bad { background: #fbd9dc; font-weight: 600; }
.none { color: #aaa; } .grid td { min-width: 120px; }
.trends { display: flex; flex-wrap: wrap; gap: 16px; }
a { color: #1f5fa8; }
"""
FAILURES_SHOWN = 50


def _page(title: str, body: str, root: str = "") -> str:
    # an empty icon: the browser asks for no favicon (no 404 on a static host)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<link rel='icon' href='data:,'>"
            f"<title>{escape(title)}</title><style>{PAGE_CSS}</style></head><body>"
            f"<p><a href='{root}index.html'>roslab dashboard</a></p>"
            f"<h1>{escape(title)}</h1>{body}</body></html>")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Site:
    def __init__(self, runs: Sequence[Run], out: Path, source: str) -> None:
        self.runs, self.out, self.source = list(runs), out, source
        self.evidence: dict[int, str] = {}  # test result id -> link from the site's root

    def write(self) -> Path:
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        for run in self.runs:
            for test in run.tests:
                self._copy_evidence(run, test)
        for run in self.runs:
            (self.out / "runs" / f"{run.id}.html").write_text(self.run_page(run), "utf-8")
        index = self.out / "index.html"
        index.write_text(self.index(), "utf-8")
        return index

    def _copy_evidence(self, run: Run, test: TestResult) -> None:
        if not test.evidence:
            return
        src = Path(test.evidence)
        if src.is_file():
            dest = self.out / "evidence" / str(run.id) / f"{test.id}-{src.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            self.evidence[test.id] = dest.relative_to(self.out).as_posix()

    def _evidence_cell(self, test: TestResult, root: str) -> str:
        if test.id in self.evidence:
            return (f"<a class='evidence' href='{root}{escape(self.evidence[test.id])}'>"
                    "console log</a>")
        if test.evidence:
            return f"{escape(test.evidence)} <span class='none'>(not on this machine)</span>"
        return ""

    # -- index -----------------------------------------------------------------------------

    def index(self) -> str:
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        body = [f"<p class='meta'>{len(self.runs)} runs from {escape(self.source)}, "
                f"generated {generated}</p>",
                "<h2>Cells by night</h2>", self.grid(),
                "<h2>Boot milestones per cell</h2>", self.trends(),
                "<h2>Flaky tests</h2>", self.flakes(),
                "<h2>Recent failures</h2>", self.failures()]
        return _page("roslab results", "".join(body))

    def grid(self) -> str:
        nights = sorted({rh.night_of(r) for r in self.runs})
        cells = sorted({rh.cell_of(r) for r in self.runs})
        by: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for run in self.runs:
            by[rh.cell_of(run), rh.night_of(run)].append(run)
        rows = []
        for cell in cells:
            row = [f"<b>{escape(cell)}</b>"]
            for night in nights:
                runs = by.get((cell, night), [])
                row.append(self._grid_cell(cell, night, runs))
            rows.append(row)
        head = "".join(f"<th>{escape(h)}</th>" for h in ["cell", *nights])
        body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>"
                                         for c in row) + "</tr>" for row in rows)
        return (f"<table class='grid' id='grid'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>" if rows else "<p>No runs stored.</p>")

    @staticmethod
    def _grid_cell(cell: str, night: str, runs: list[Run]) -> str:
        if not runs:
            return "<td class='none'>-</td>"
        tally: dict[str, int] = defaultdict(int)
        failed_boots = boots = 0
        for run in runs:
            for outcome, n in rh.counts(run).items():
                tally[outcome] += n
            boots += len(run.boots)
            failed_boots += sum(not b.ok for b in run.boots)
        bad = tally.get("failed", 0) or failed_boots
        text = ", ".join(f"{n} {k}" for k, n in sorted(tally.items()))
        if not text:
            text = f"{boots} boots" + (f" ({failed_boots} failed)" if failed_boots else "")
        links = " ".join(f"<a class='run' href='runs/{r.id}.html'>#{r.id} {escape(r.kind)}</a>"
                         for r in runs)
        ids = ",".join(str(r.id) for r in runs)
        return (f"<td class='{'bad' if bad else 'ok'}' data-cell='{escape(cell)}' "
                f"data-night='{night}' data-runs='{ids}'>{escape(text)}<br>{links}</td>")

    def trends(self) -> str:
        by_cell: dict[str, list[Run]] = defaultdict(list)
        for run in self.runs:
            by_cell[rh.cell_of(run)].append(run)
        parts = []
        for cell, runs in sorted(by_cell.items()):
            figures = []
            for name in rh.milestone_names(runs):
                if name not in rh.TREND_MILESTONES:
                    continue
                figs = rh.milestone_figures(runs, name)
                if not figs:
                    continue
                points = [Point(f"#{f.run.id} {f.run.started:%m-%d %H:%M}", f.median, f.low,
                                f.high) for f in figs]
                figures.append(f"<figure class='trend' data-cell='{escape(cell)}' "
                               f"data-milestone='{escape(name)}'>"
                               + trend(points, f"{name} (s since power-on)") + "</figure>")
            if figures:
                parts.append(f"<h3>{escape(cell)}</h3><div class='trends'>{''.join(figures)}"
                             "</div>")
        return "".join(parts) or "<p>No completed boot stored.</p>"

    def flakes(self) -> str:
        scenario_runs = [r for r in self.runs if r.kind in rh.SCENARIO_KINDS]
        rows = [[escape(f.nodeid), str(f.runs), str(f.failed), str(f.passed_on_rerun),
                 str(f.flips), f"{f.rate:.0%}", f"{f.fail_rate:.0%}"]
                for f in rh.flakiness(scenario_runs) if f.flakes or f.failed]
        if not rows:
            return "<p>No test failed or flaked in the stored runs.</p>"
        return ("<p class='meta'>A flake: failed and passed on its rerun, or flipped between "
                "two runs of a cell with the same commit, image and options.</p>"
                + _table(["test", "runs", "failed", "passed on rerun", "flips", "flake rate",
                          "fail rate"], rows, "flakes"))

    def failures(self) -> str:
        rows = []
        for run in reversed(self.runs):
            for test in run.tests:
                if test.outcome in rh.FAILING and len(rows) < FAILURES_SHOWN:
                    rows.append([f"<a href='runs/{run.id}.html'>#{run.id}</a>",
                                 escape(f"{run.started:%Y-%m-%d %H:%M}"),
                                 escape(rh.cell_of(run)), escape(test.nodeid),
                                 escape(test.cause or ""), escape(test.last_milestone or ""),
                                 self._evidence_cell(test, "")])
        if not rows:
            return "<p>No failures stored.</p>"
        return _table(["run", "when (UTC)", "cell", "test", "cause", "last milestone",
                       "evidence"], rows, "failures")

    # -- one run ---------------------------------------------------------------------------

    def run_page(self, run: Run) -> str:
        meta = rh.run_summary(run) | {"platform": run.platform, "arch": run.arch,
                                      "board": run.board, "hw": run.hw, "image": run.image,
                                      "options": run.options, "interrupted": run.interrupted}
        body = [_table(["", ""], [[escape(k), escape(str(v))] for k, v in meta.items()
                                  if v not in (None, "")], "meta")]
        if run.tests:
            rows = [[escape(t.nodeid), "rerun" if t.attempt else "",
                     f"<span class='{'bad' if t.outcome in rh.FAILING else ''}'>"
                     f"{escape(t.outcome)}</span>", f"{t.duration:.1f}", escape(t.cause or ""),
                     escape(t.last_milestone or ""), self._evidence_cell(t, "../")]
                    for t in run.tests]
            body += ["<h2>Tests</h2>", _table(["test", "attempt", "outcome", "s", "cause",
                                               "last milestone", "evidence"], rows, "tests")]
        if run.boots:
            rows = [[str(b.seq), escape(b.machine or ""), "ok" if b.ok else "failed",
                     escape(b.error or ""), escape(", ".join(
                         f"{m.name} {m.seconds:.1f}" for m in b.milestones))]
                    for b in run.boots]
            body += ["<h2>Boots</h2>", _table(["boot", "machine", "", "error", "milestones (s)"],
                                              rows, "boots")]
            first = next((b for b in run.boots if b.ok), None)
            if first is not None:
                bars, start = [], 0.0
                for m in first.milestones:
                    bars.append(Bar(m.name, start, m.seconds))
                    start = m.seconds
                body.append(waterfall(bars, f"boot {first.seq} timeline"))
        return _page(f"run #{run.id}: {run.kind}, {rh.cell_of(run)}", "".join(body), "../")


def write_site(runs: Sequence[Run], out: Path, source: str) -> Path:
    return Site(runs, out, source).write()
