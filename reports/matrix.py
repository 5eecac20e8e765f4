"""`roslab matrix report`: the results folders of many cells -> one verdict.

Reads what `roslab matrix run` (a CI job) leaves per cell (cell.json, JUnit of the run
and of the rerun, allure results, bench records, console logs of failures) and writes

    report.html      one self-contained page: cells x scenario families, failures with
                     console excerpt and last milestone, reruns, boot-time medians
    junit.xml        one testcase per cell and scenario, with the verdict of the policy
    allure-results/  every cell's results, labelled by cell (a rerun stays a retry)
    bench.jsonl      the cells' boot records, each with its cell (next night's --previous)

and prints one summary line; the exit code is 0 only when every cell is green.

Policy: a scenario that failed and passed on its rerun counts as passed only when the
matrix allows it to flake; a scenario that failed on both attempts and is a known failure
of the cell (unexpired, with a tracker link) is a known failure, not red. A cell that was
not configured (its secrets unset) is neutral: shown with the variables it needs, neither
red nor green. A rehearsed cell (a cloud's stand-in on one host) is labelled rehearsed,
and is red when the stand-in still held anything after the cell's gc.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from lab.errors import ConfigError
from reports import history
from reports.html import CSS, html_table

PASSED, FAILED, NOT_APPLICABLE, KNOWN = "passed", "failed", "not applicable", "known failure"
STATUSES = (PASSED, FAILED, KNOWN, NOT_APPLICABLE)
MEDIAN_MILESTONES = ("kernel", "login-prompt", "ssh", "user-docker")
EXCERPT_LINES = 15
BLOCKED = re.compile(r"machine did not boot")  # fixtures.plugin's skip after a failed boot
GOOD_EXIT_CODES = (0, 1)  # pytest: all passed / some failed; anything else: the run broke


# -- JUnit of one attempt ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    nodeid: str
    outcome: str  # passed, failed (a failure or an error) or skipped
    message: str = ""
    text: str = ""
    seconds: float = 0.0
    properties: tuple[tuple[str, str], ...] = ()

    def prop(self, name: str) -> str | None:
        return next((v for k, v in self.properties if k.endswith(name)), None)


def nodeid(classname: str, name: str) -> str:
    """pytest's JUnit classname+name back to its node id (scenarios.test_x.TestY -> path::)."""
    parts = classname.split(".")
    classes = 0
    while classes < len(parts) - 1 and parts[-1 - classes][:1].isupper():
        classes += 1
    module = parts[: len(parts) - classes]
    return "::".join(["/".join(module) + ".py", *parts[len(module):], name])


def read_junit(path: Path) -> list[Case]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(f"cannot read JUnit {path}: {exc}") from None
    cases = []
    for tc in root.iter("testcase"):
        problems = [e for e in tc if e.tag in ("failure", "error")]
        skipped = tc.find("skipped")
        node = problems[0] if problems else skipped
        outcome = "failed" if problems else "skipped" if skipped is not None else "passed"
        props = tuple((p.get("name", ""), p.get("value", "")) for p in tc.iter("property"))
        cases.append(Case(
            nodeid=nodeid(tc.get("classname", ""), tc.get("name", "")), outcome=outcome,
            message=(node.get("message", "") if node is not None else ""),
            text="\n".join((e.text or "") for e in problems),
            seconds=float(tc.get("time") or 0), properties=props))
    return cases


def family(scenario: str) -> str:
    """A scenario's family: its module (scenarios/test_cloud_config.py -> cloud_config)."""
    stem = Path(scenario.split("::")[0]).stem
    return stem.removeprefix("test_")


# -- one cell ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """A scenario's verdict in one cell, with both attempts when it was rerun."""

    nodeid: str
    status: str
    first: Case
    rerun: Case | None = None
    note: str = ""
    tracker: str = ""
    evidence: Path | None = None  # console log of the last failed attempt

    @property
    def flaky(self) -> bool:
        return self.rerun is not None and self.rerun.outcome == "passed"

    @property
    def failed_attempt(self) -> Case:
        """The attempt whose failure to show: the rerun's when it failed too."""
        return self.rerun if self.rerun is not None and self.rerun.outcome == "failed" \
            else self.first


def _matches(entry: dict[str, Any], scenario: str) -> bool:
    wanted = str(entry.get("scenario"))
    return scenario == wanted or scenario.startswith(wanted + "[")


@dataclass
class CellVerdict:
    cell: str
    folder: Path
    meta: dict[str, Any]
    outcomes: list[Outcome] = field(default_factory=list)
    broken: str = ""  # why the cell produced no verdict of its scenarios

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def reruns(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.rerun is not None]

    @property
    def not_configured(self) -> str:
        """Why the cell did not run here ("" when it ran): neutral, never red or green."""
        found = self.meta.get("not_configured")
        return str(found.get("why", "not configured")) if isinstance(found, dict) else ""

    @property
    def rehearsed(self) -> dict[str, Any] | None:
        """What the cell was rehearsed against (None: it ran on its platform itself)."""
        return self.meta.get("rehearsed") or None

    @property
    def green(self) -> bool:
        return not self.not_configured and not self.broken and not self.counts[FAILED]

    def summary(self) -> str:
        if self.not_configured:
            return f"NOT CONFIGURED: {self.not_configured}"
        if self.broken:
            return f"BROKEN: {self.broken}"
        c = self.counts
        parts = [f"{c[s]} {s}" for s in STATUSES if c[s]]
        flaky = sum(o.flaky for o in self.outcomes)
        if self.reruns:
            parts.append(f"{len(self.reruns)} rerun ({flaky} passed on rerun)")
        return ", ".join(parts or ["no scenarios"])


def _evidence(folder: Path, prefix: str, scenario: str) -> Path | None:
    from fixtures.evidence import evidence_name

    logs = sorted((folder / f"{prefix}artifacts" / evidence_name(scenario)).glob("*/console.log"))
    return logs[0] if logs else None


def cell_verdict(folder: Path) -> CellVerdict:
    """Judge one cell's results folder by the policy recorded in its cell.json."""
    meta_path = folder / "cell.json"
    if not meta_path.is_file():
        raise ConfigError(f"{folder} is no cell results folder (no cell.json)")
    meta = json.loads(meta_path.read_text("utf-8"))
    verdict = CellVerdict(cell=meta["cell"]["id"], folder=folder, meta=meta)
    if verdict.not_configured:
        return verdict
    attempts = meta.get("attempts") or []
    if not attempts or not (folder / "junit.xml").is_file():
        log = folder / "pytest.log"
        why = "interrupted" if meta.get("interrupted") else (
            f"pytest exit code {attempts[0].get('exit_code')}" if attempts else "")
        verdict.broken = "the cell did not run its scenarios" + (f" ({why})" if why else "")
        verdict.meta["log_tail"] = _tail(log) if log.is_file() else "(no pytest output)"
        return verdict
    if meta.get("interrupted"):
        verdict.broken = ("interrupted (Ctrl-C, SIGTERM or the CI's timeout) before the cell "
                          "finished: what ran is judged below")
        verdict.meta["log_tail"] = _tail(folder / "rerun-pytest.log") or \
            _tail(folder / "pytest.log")
    elif attempts[0].get("exit_code") not in GOOD_EXIT_CODES:
        verdict.broken = (f"pytest exit code {attempts[0].get('exit_code')}: the run was "
                          "interrupted or refused its input")
        verdict.meta["log_tail"] = _tail(folder / "pytest.log")
    left = (verdict.rehearsed or {}).get("leftovers")
    if left and not verdict.broken:
        verdict.broken = ("the rehearsal left behind (after the cell's gc): "
                          + "; ".join(map(str, left)))
    rerun_path = folder / "rerun-junit.xml"
    reruns = {c.nodeid: c for c in read_junit(rerun_path)} if rerun_path.is_file() else {}
    policy = meta.get("policy") or {}
    for case in read_junit(folder / "junit.xml"):
        verdict.outcomes.append(_judge(case, reruns.get(case.nodeid), policy, folder))
    return verdict


def _judge(case: Case, rerun: Case | None, policy: dict[str, Any], folder: Path) -> Outcome:
    out = Outcome(case.nodeid, PASSED, case, rerun)
    if case.outcome == "passed":
        out.status = PASSED
    elif case.outcome == "skipped" and BLOCKED.search(case.message):
        # a boot that failed earlier in the module: the check never ran, which is no pass
        # and no "not applicable" (the failed boot itself is reported as an error)
        out.status, out.note = FAILED, f"not run: {case.message}"
    elif case.outcome == "skipped":
        out.status, out.note = NOT_APPLICABLE, case.message
    elif rerun is None:
        out.status, out.note = FAILED, "not rerun"
    elif rerun.outcome == "passed":
        allowed = next((e for e in policy.get("allowed_flakes", [])
                        if _matches(e, case.nodeid)), None)
        if allowed:
            out.status, out.tracker = PASSED, allowed["tracker"]
            out.note = "failed, passed on the rerun: allowed to flake"
        else:
            out.status = FAILED
            out.note = "failed, passed on the rerun: a flake, and it is not allowed to flake"
    else:
        out.status, out.note = FAILED, "failed on the rerun too"
    known = next((e for e in policy.get("known_failures", []) if _matches(e, case.nodeid)), None)
    if known is not None:
        out.tracker = known["tracker"]
        if out.status == FAILED and not out.flaky:
            out.status = KNOWN
            out.note = f"known failure until {known['expires']}"
        elif out.status == PASSED:
            out.note = "listed as a known failure but passed: remove the entry?"
    if out.status in (FAILED, KNOWN):
        # the last failed attempt's console log; the first's when the rerun kept none
        rerun_failed = out.failed_attempt is not out.first
        out.evidence = (rerun_failed and _evidence(folder, "rerun-", case.nodeid)) or \
            _evidence(folder, "", case.nodeid)
    return out


def _tail(path: Path | None, lines: int = EXCERPT_LINES) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text("utf-8", errors="replace").splitlines()[-lines:])


def last_milestone(case: Case) -> str:
    found = case.prop("last_milestone")
    if found:
        return found
    m = re.search(r"last milestone reached: (\S+)", case.message + "\n" + case.text)
    return m.group(1) if m else "-"


# -- many cells ----------------------------------------------------------------------------


def find_cells(paths: Iterable[Path]) -> list[Path]:
    """Cell folders: each path is one (it has cell.json) or holds some (CI downloads)."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"results folder {path} does not exist")
        found += [path] if (path / "cell.json").is_file() else \
            sorted(p.parent for p in path.glob("*/cell.json"))
    if not found:
        raise ConfigError("no cell results (cell.json) under " + ", ".join(map(str, paths)))
    ids = Counter(json.loads((p / "cell.json").read_text())["cell"]["id"] for p in found)
    twice = [cid for cid, n in ids.items() if n > 1]
    if twice:
        raise ConfigError(f"cell results given twice: {', '.join(twice)}")
    return found


@dataclass
class Nightly:
    cells: list[CellVerdict]
    missing: list[str] = field(default_factory=list)  # matrix cells without results

    @property
    def green(self) -> bool:
        return not self.missing and all(c.green or c.not_configured for c in self.cells)

    def summary(self) -> str:
        total: Counter[str] = Counter()
        for c in self.cells:
            total.update(c.counts)
        reruns = sum(len(c.reruns) for c in self.cells)
        flaky = sum(o.flaky for c in self.cells for o in c.outcomes)
        red = [c.cell for c in self.cells if not c.green and not c.not_configured] \
            + self.missing
        counts = ", ".join(f"{total[s]} {s}" for s in STATUSES)
        neutral = [c.cell for c in self.cells if c.not_configured]
        verdict = f"FAILED ({', '.join(red)})" if not self.green else \
            "NOTHING RAN" if len(neutral) == len(self.cells) else "PASSED"
        rehearsed = [c.cell for c in self.cells if c.rehearsed]
        return (f"roslab nightly: {verdict}: {len(self.cells)} cells"
                + (f" ({len(neutral)} not configured: {', '.join(neutral)})" if neutral else "")
                + (f" ({len(rehearsed)} rehearsed on stand-ins, not on their clouds: "
                   f"{', '.join(rehearsed)})" if rehearsed else "")
                + f"; {counts}; {reruns} reruns, {flaky} passed on rerun")


def merge(paths: Sequence[Path], expected: Sequence[str] = ()) -> Nightly:
    cells = [cell_verdict(p) for p in find_cells(paths)]
    have = {c.cell for c in cells}
    return Nightly(cells=sorted(cells, key=lambda c: c.cell),
                   missing=[cid for cid in expected if cid not in have])


def write_junit(nightly: Nightly, path: Path) -> None:
    """One testsuite per cell, one testcase per scenario, with the policy's verdict."""
    root = ET.Element("testsuites", name="roslab nightly")
    for cell in nightly.cells:
        suite = ET.SubElement(root, "testsuite", name=cell.cell)
        counts = Counter[str]()
        if cell.rehearsed:
            suite.set("rehearsed", str(cell.rehearsed.get("what", "yes")))
        if cell.not_configured:  # neutral: a skip, never a failure or a pass
            tc = ET.SubElement(suite, "testcase", classname=cell.cell, name="cell")
            ET.SubElement(tc, "skipped", message=f"not configured: {cell.not_configured}")
            counts["skipped"] += 1
        if cell.broken:
            tc = ET.SubElement(suite, "testcase", classname=cell.cell, name="cell")
            ET.SubElement(tc, "error", message=cell.broken).text = cell.meta.get("log_tail", "")
            counts["errors"] += 1
        for o in cell.outcomes:
            module, _, name = o.nodeid.partition("::")
            classname = f"{cell.cell}." + module.removesuffix(".py").replace("/", ".")
            tc = ET.SubElement(suite, "testcase", classname=classname, name=name,
                               time=f"{o.first.seconds + (o.rerun.seconds if o.rerun else 0):.3f}")
            props = ET.SubElement(tc, "properties")
            for key, value in (("cell", cell.cell), ("matrix_status", o.status),
                               ("rerun", o.rerun.outcome if o.rerun else ""),
                               ("tracker", o.tracker), *o.first.properties):
                if value:
                    ET.SubElement(props, "property", name=key, value=value)
            if o.status == FAILED:
                failed = o.failed_attempt
                failure = ET.SubElement(tc, "failure", message=(o.note + ": "
                                        + failed.message).strip(": ")[:2000])
                failure.text = failed.text
                counts["failures"] += 1
            elif o.status in (NOT_APPLICABLE, KNOWN):
                msg = o.note if o.status == NOT_APPLICABLE else f"{o.note} ({o.tracker})"
                ET.SubElement(tc, "skipped", message=msg)
                counts["skipped"] += 1
        suite.set("tests", str(len(suite)))
        for key in ("failures", "errors", "skipped"):
            suite.set(key, str(counts[key]))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def merge_allure(nightly: Nightly, out: Path) -> int:
    """Every cell's allure results in one folder. Each result gets a `cell` label and a
    history id of its own per cell: allure groups results with one history id as retries
    of one test, which a rerun is and the same scenario in another cell is not."""
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for cell in nightly.cells:
        trackers = {o.nodeid: o.tracker for o in cell.outcomes if o.tracker}
        for src in sorted((cell.folder / "allure-results").glob("*")):
            if not src.is_file():
                continue
            if not src.name.endswith("-result.json"):
                shutil.copy2(src, out / src.name)
                continue
            data = json.loads(src.read_text("utf-8"))
            data.setdefault("labels", []).append({"name": "cell", "value": cell.cell})
            for key in ("historyId", "testCaseId"):
                if data.get(key):
                    data[key] = hashlib.md5(f"{cell.cell}\0{data[key]}".encode()).hexdigest()
            tracker = next((t for n, t in trackers.items()
                            if str(data.get("fullName", "")).endswith(n.split("::")[-1])), None)
            if tracker:
                data.setdefault("links", []).append({"type": "issue", "url": tracker,
                                                     "name": tracker})
            (out / src.name).write_text(json.dumps(data), "utf-8")
            written += 1
    return written


def merge_bench(nightly: Nightly, out: Path) -> list[history.Record]:
    records = []
    for cell in nightly.cells:
        path = cell.folder / "bench.jsonl"
        if path.is_file():
            for record in history.iter_records(path):
                record.setdefault("matrix_cell", cell.cell)
                records.append(record)
    history.write(out, records)
    return records


def boot_medians(records: Iterable[history.Record]) -> dict[str, dict[str, float]]:
    """Cell -> milestone -> median seconds since power-on, over completed boots."""
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("ok") and r.get("matrix_cell"):
            for name in MEDIAN_MILESTONES:
                if name in (r.get("milestones") or {}):
                    samples[r["matrix_cell"]][name].append(float(r["milestones"][name]))
    return {cell: {k: float(np.median(v)) for k, v in ms.items()} for cell, ms in samples.items()}


def read_previous(path: Path | Sequence[history.Record] | None) -> list[history.Record]:
    """The previous nightly's boots: its report folder or its bench.jsonl (or its records,
    read from the results database)."""
    if path is None:
        return []
    if not isinstance(path, Path):
        return list(path)
    file = path / "bench.jsonl" if path.is_dir() else path
    return history.read(file)


# -- the page ------------------------------------------------------------------------------

PAGE_CSS = CSS + """
.grid td, .grid th, .text td, .text th { text-align: left; vertical-align: top; }
.grid td { min-width: 110px; }
.st-passed { background: #e3f4e1; } .st-failed { background: #fbd9dc; font-weight: 600; }
.st-known { background: #fff0c2; } .st-na { background: #eeeeee; color: #666; }
.st-none { color: #aaa; } .broken { background: #fbd9dc; font-weight: 600; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 6px; font-size: 11px;
      white-space: pre-wrap; max-width: 1200px; }
.summary { font-size: 15px; padding: 8px; border-radius: 4px; }
.summary.ok { background: #e3f4e1; } .summary.bad { background: #fbd9dc; }
details { margin: 6px 0 14px; } summary { cursor: pointer; }
"""

_CSS_CLASS = {PASSED: "st-passed", FAILED: "st-failed", KNOWN: "st-known",
              NOT_APPLICABLE: "st-na"}


def _grid(nightly: Nightly) -> str:
    families = sorted({family(o.nodeid) for c in nightly.cells for o in c.outcomes})
    head = "".join(f"<th>{escape(f)}</th>" for f in ["cell", *families])
    rows = []
    for cell in nightly.cells:
        flag = f"<br><span class='bad'>{escape(cell.broken)}</span>" if cell.broken else ""
        cells = [f"<td><b>{escape(cell.cell)}</b><br><span class='meta'>"
                 f"{escape(_describe(cell.meta))}</span>{flag}</td>"]
        if cell.not_configured:
            cells.append(f"<td class='st-na' colspan='{max(len(families), 1)}'>not "
                         f"configured: {escape(cell.not_configured)}</td>")
        elif cell.broken and not cell.outcomes:
            cells.append(f"<td class='broken' colspan='{max(len(families), 1)}'>"
                         f"{escape(cell.broken)}</td>")
        else:
            by_family: dict[str, Counter[str]] = defaultdict(Counter)
            for o in cell.outcomes:
                by_family[family(o.nodeid)][o.status] += 1
            for fam in families:
                counts = by_family.get(fam)
                if not counts:
                    cells.append("<td class='st-none'>not run</td>")
                    continue
                worst = next(s for s in STATUSES if counts[s])
                text = "<br>".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
                cells.append(f"<td class='{_CSS_CLASS[worst]}'>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    for missing in nightly.missing:
        rows.append(f"<tr><td><b>{escape(missing)}</b></td><td class='broken' "
                    f"colspan='{max(len(families), 1)}'>no results: the job did not upload "
                    "any (it was cancelled, timed out or never started)</td></tr>")
    return (f"<table class='grid'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _describe(meta: dict[str, Any]) -> str:
    c = meta.get("cell", {})
    hw = f" hw {c['hw']}" if c.get("hw") else ""
    text = f"{c.get('platform')} {c.get('arch')} {c.get('image')}{hw}"
    rehearsed = meta.get("rehearsed")
    if rehearsed:  # never to be read as a run on the cloud
        text += f"; REHEARSED against {rehearsed.get('what')}"
        if rehearsed.get("accelerator"):
            text += f"; its guests' accel: {rehearsed['accelerator']}"
    accel = meta.get("accelerator") or {}
    if accel.get("accel"):
        text += f"; accel {accel['accel']} ({accel.get('why', '')})"
    return text


def _failures(nightly: Nightly) -> str:
    parts = []
    for cell in nightly.cells:
        if cell.broken:
            parts.append(f"<h3>{escape(cell.cell)}: the cell broke</h3><p>{escape(cell.broken)}"
                         f"</p><pre>{escape(cell.meta.get('log_tail', ''))}</pre>")
        blocked = [o.nodeid for o in cell.outcomes if o.status == FAILED and o.note.startswith(
            "not run:")]
        if blocked:  # one line, not a block each: their cause is the boot failure shown
            parts.append(f"<p class='st-failed'>{escape(cell.cell)}: not run because their "
                         f"machine did not boot: {escape(', '.join(blocked))}</p>")
        for o in cell.outcomes:
            if o.status not in (FAILED, KNOWN) or o.nodeid in blocked:
                continue
            last = o.failed_attempt
            first_line = (last.message or last.text).strip().splitlines()[:1]
            tracker = (f" <a href='{escape(o.tracker)}'>{escape(o.tracker)}</a>"
                       if o.tracker else "")
            excerpt = _tail(o.evidence) or "(no console log kept: see the message)"
            parts.append(
                f"<h3 class='{_CSS_CLASS[o.status]}'>{escape(cell.cell)}: "
                f"{escape(o.nodeid)}</h3>"
                f"<p>{escape(o.status)}: {escape(o.note)}{tracker}<br>"
                f"last milestone reached: <b>{escape(last_milestone(last))}</b>"
                + (f"; full console log: {escape(str(o.evidence))}" if o.evidence else "")
                + f"</p><pre>{escape(first_line[0] if first_line else '')}</pre>"
                f"<details open><summary>last {EXCERPT_LINES} console lines</summary>"
                f"<pre>{escape(excerpt)}</pre></details>"
                f"<details><summary>failure text</summary><pre>"
                f"{escape((last.text or last.message)[-6000:])}</pre></details>")
    return "".join(parts) or "<p>No failures.</p>"


def _reruns(nightly: Nightly) -> str:
    rows = [(c.cell, o.nodeid, o.first.outcome, o.rerun.outcome if o.rerun else "-",
             o.status, o.note) for c in nightly.cells for o in c.reruns]
    if not rows:
        return "<p>No scenario needed a rerun.</p>"
    return "<div class='text'>" + html_table(
        ["cell", "scenario", "first run", "rerun (fresh machine)", "counted as", "why"],
        rows) + "</div>"


def _medians(current: dict[str, dict[str, float]], previous: dict[str, dict[str, float]],
             cells: Sequence[str], have_previous: bool) -> str:
    header = ["cell"] + [f"{m} (s)" for m in MEDIAN_MILESTONES]
    rows = []
    for cell in cells:
        now, before = current.get(cell, {}), previous.get(cell, {})
        row: list[object] = [cell]
        for m in MEDIAN_MILESTONES:
            if m not in now:
                row.append("-")
            elif have_previous and m in before:
                delta = now[m] - before[m]
                row.append(f"{now[m]:.1f} (prev {before[m]:.1f}, {delta:+.1f})")
            else:
                row.append(f"{now[m]:.1f}")
        rows.append(row)
    caption = ("medians over the cell's completed boots, seconds since power-on"
               + ("; beside the previous nightly's" if have_previous
                  else "; no previous nightly given (--previous)"))
    return html_table(header, rows, caption)


def render(nightly: Nightly, records: Sequence[history.Record],
           previous: Sequence[history.Record], sources: str) -> str:
    cells = [c.cell for c in nightly.cells]
    known = [(c.cell, o.nodeid, o.status, o.tracker, o.note) for c in nightly.cells
             for o in c.outcomes if o.tracker]
    body = [
        f"<p class='summary {'ok' if nightly.green else 'bad'}'>{escape(nightly.summary())}</p>",
        f"<p class='meta'>{escape(sources)}</p>",
        "<h2>Cells x scenario families</h2>", _grid(nightly),
        "<h2>Failures</h2>", _failures(nightly),
        "<h2>Reruns</h2>", _reruns(nightly),
        "<h2>Boot-time medians</h2>",
        _medians(boot_medians(records), boot_medians(previous), cells, bool(previous)),
    ]
    if known:
        body += ["<h2>Known failures and allowed flakes</h2>",
                 "<div class='text'>"
                 + html_table(["cell", "scenario", "status", "tracker", "note"], known)
                 + "</div>"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>roslab nightly matrix</title><style>{PAGE_CSS}</style></head><body>"
            "<h1>roslab nightly matrix</h1>" + "".join(body) + "</body></html>")


def report(paths: Sequence[Path], out: Path,
           previous: Path | Sequence[history.Record] | None = None,
           expected: Sequence[str] = ()) -> Nightly:
    nightly = merge(paths, expected)
    out.mkdir(parents=True, exist_ok=True)
    write_junit(nightly, out / "junit.xml")
    merge_allure(nightly, out / "allure-results")
    records = merge_bench(nightly, out / "bench.jsonl")
    page = render(nightly, records, read_previous(previous), ", ".join(map(str, paths)))
    (out / "report.html").write_text(page, "utf-8")
    (out / "summary.txt").write_text(nightly.summary() + "\n", "utf-8")
    return nightly
