"""What goes into the results database, from each kind of run: a pytest session of
scenarios (a pytest plugin object), a bench/soak/restore bench's boot records, a matrix
cell's results folder, and what earlier runs left on disk (bench history JSONL, JUnit XML,
matrix results folders), so nothing measured before the database existed is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from lab.errors import ConfigError
from lab.gc import run_id
from lab.timeline import RESTORED, USER_DOCKER
from reports import history
from reports.history import Record
from reports.results_db import BootData, RunData, TestData, record, resolve_url, utc

FAILING = ("failed", "error")
EVIDENCE = re.compile(r"console log of \S+: (.+)")  # fixtures/evidence.py's report section
CAUSE_CHARS = 500
_LAB_ROOT = Path(__file__).resolve().parent.parent


# -- a run's context -----------------------------------------------------------------------


@cache
def git_commit(where: Path = _LAB_ROOT) -> str | None:
    """The lab's commit (CI's own variable first), with +dirty for local changes."""
    for name in ("GITHUB_SHA", "CI_COMMIT_SHA"):
        if os.environ.get(name):
            return os.environ[name][:12]

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return commit


@cache
def _hash_files(files: tuple[tuple[str, int, float], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        with open(name, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def image_checksum(image: str | Path | None) -> str | None:
    """sha256 of the image file, or of a folder image's kernel and initrd: two runs of one
    version string from two different builds are told apart."""
    if not image:
        return None
    path = Path(image)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.name.startswith(("vmlinuz", "initrd")))
    else:
        return None  # a cloud's image id
    if not files:
        return None
    try:  # cached by name, size and mtime: a pytest run and its bench hash once
        return _hash_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime) for p in files))
    except OSError:
        return None


def context_fields(context: dict[str, Any]) -> dict[str, Any]:
    """RunData fields from a bench record's or `history.machine_context`'s context."""
    image = context.get("image")
    unknown = {"unknown", ""}
    return {
        "platform": context.get("platform") if context.get("platform") not in unknown
        else None,
        "arch": context.get("arch") if context.get("arch") not in unknown else None,
        "board": context.get("board") or None,
        "accel": context.get("accel") if context.get("accel") not in unknown else None,
        "image": image,
        "image_version": context.get("image_version")
        if context.get("image_version") not in unknown else None,
    }


def _date(text: str | None) -> datetime:
    if not text:
        return utc()
    return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


# -- boots ---------------------------------------------------------------------------------


def boot_of(machine: Any, seq: int) -> BootData:
    """A machine's boot as the pytest plugin saw it (its timeline and service times)."""
    timeline = getattr(machine, "timeline", None)
    marks = timeline.to_dict() if timeline is not None else {}
    spans = getattr(machine, "service_spans", None) or {}
    return BootData(seq=seq, ok=USER_DOCKER in marks or RESTORED in marks, milestones=marks,
                    services={n: {k: round(v, 3) for k, v in s.items()} for n, s in
                              spans.items()},
                    machine=str(getattr(machine, "name", "") or f"machine{seq}"))


def boot_from_record(record: Record, seq: int | None = None) -> BootData:
    return BootData(seq=int(seq if seq is not None else record.get("boot") or 0),
                    ok=bool(record.get("ok")), milestones=dict(record.get("milestones") or {}),
                    services=dict(record.get("services") or {}), error=record.get("error"),
                    blame=record.get("blame"), console_log=record.get("console_log"))


def run_from_records(records: Sequence[Record], *, uid: str, kind: str, source: str,
                     **fields: Any) -> RunData:
    """A bench, soak or restore bench (or an imported group of history records)."""
    first = records[0]
    run = RunData(uid=uid, lab_run_id=str(first.get("run_id") or uid), kind=kind,
                  source=source, started=min(_date(r.get("date")) for r in records),
                  finished=max(_date(r.get("date")) for r in records),
                  host=first.get("host"), cell=first.get("matrix_cell"),
                  **context_fields(first))
    run.boots = [boot_from_record(r) for r in records]
    for key, value in fields.items():
        setattr(run, key, value)
    if run.image_checksum is None:
        run.image_checksum = image_checksum(run.image)
    return run


def record_bench(url: str | None, records: Sequence[Record], *, kind: str, lab_run_id: str,
                 started: datetime, interrupted: bool, hw: str | None,
                 say: Callable[[str], None]) -> int | None:
    """`roslab bench`, `soak` and `bench restore`: the run and every boot it finished."""
    if url is None or not records:
        return None
    run = run_from_records(records, uid=f"{kind}:{lab_run_id}", kind=kind, source="live",
                           started=started, finished=utc(), git_commit=git_commit(),
                           interrupted=interrupted, hw=hw, host=socket.gethostname())
    return record(url, run, say)


# -- a pytest session ----------------------------------------------------------------------


def _cause(report: pytest.TestReport) -> str | None:
    longrepr = report.longrepr
    if longrepr is None:
        return None
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:CAUSE_CHARS] if lines else None


class SessionRecorder:
    """Collects a pytest session's tests (on the controller, from every worker's reports)
    and boots (workers send theirs in workeroutput), and records the run at its end."""

    def __init__(self, config: pytest.Config, url: str, booted: Callable[[], list[Any]]) -> None:
        self.config = config
        self.url = url
        self.booted = booted  # the machines this process used (reports.plugin knows them)
        self.started = utc()
        self.tests: dict[str, TestData] = {}
        self.boots: list[BootData] = []
        self.worker_context: dict[str, Any] = {}  # a worker's first machine's
        self.messages: list[str] = []

    @property
    def worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = self.tests.setdefault(report.nodeid, TestData(report.nodeid, "passed"))
        if report.outcome == "rerun":  # pytest-rerunfailures: the next attempt follows
            test.attempt += 1
            return
        test.duration = round(test.duration + report.duration, 3)
        if report.failed and test.outcome not in FAILING:
            test.outcome = "failed" if report.when == "call" else "error"
            test.cause = _cause(report)
        if test.outcome in FAILING:
            # reports.plugin adds it to the item as the failing phase's report is made:
            # the reports of the phases after it carry it
            for name, value in report.user_properties:
                if str(name).endswith("last_milestone") and test.last_milestone is None:
                    test.last_milestone = str(value)
        if report.failed:
            for _, content in report.sections:
                found = EVIDENCE.search(content)
                if found and test.evidence is None:
                    test.evidence = found.group(1).strip()
        elif report.skipped and test.outcome == "passed":
            test.outcome, test.cause = "skipped", _cause(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        for data in output.get("roslab_boots", []):
            self.boots.append(BootData(**data))
        if not self.worker_context:
            self.worker_context = dict(output.get("roslab_context") or {})

    def _context(self, machines: list[Any]) -> dict[str, Any]:
        if machines:
            return context_fields(history.machine_context(getattr(machines[0], "info", {}) or
                                                          {}))
        try:  # no machine booted (a broken image): what the run was asked for
            from fixtures.options import options

            lab = options(self.config)
            image = lab._image.path if lab._image is not None else lab.image
            return {"platform": lab.platform, "arch": lab.arch,
                    "image": str(image) if image else None}
        except (ImportError, KeyError):
            return {}

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        machines = self.booted()
        own = [boot_of(m, i) for i, m in enumerate(machines, 1)]
        if self.worker:
            output = self.config.workeroutput  # type: ignore[attr-defined]
            output["roslab_boots"] = [vars(b) for b in own]
            output["roslab_context"] = self._context(machines) if machines else {}
            return
        boots = own + self.boots
        for seq, boot in enumerate(boots, 1):
            boot.seq = seq
        lab_run = run_id()
        context = self.worker_context if self.worker_context and not machines \
            else self._context(machines)
        run = RunData(uid=f"scenarios:{lab_run}:{uuid.uuid4().hex[:8]}", lab_run_id=lab_run,
                      kind="scenarios", started=self.started, finished=utc(),
                      git_commit=git_commit(), host=socket.gethostname(),
                      hw=getattr(self.config.option, "hw", None),
                      options=" ".join(self.config.invocation_params.args),
                      interrupted=exitstatus == pytest.ExitCode.INTERRUPTED,
                      tests=list(self.tests.values()), boots=boots, **context)
        run.image_checksum = image_checksum(run.image)
        record(self.url, run, self.messages.append)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for message in self.messages:
            warn = message.startswith("WARNING")
            terminalreporter.write_line(f"roslab: {message}", yellow=warn, bold=warn)


def session_url(config: pytest.Config) -> str | None:
    """Where a pytest session records: --results-db or $ROSLAB_RESULTS_DB when given; else
    SQLite in results/ for a lab run (--platform given or a machine booted); else none, so
    the project's own tests do not fill the lab's history."""
    given = config.getoption("results_db", None) or os.environ.get("ROSLAB_RESULTS_DB")
    if given:
        return resolve_url(given)
    if getattr(config.option, "platform", None):
        return resolve_url(None, config.invocation_params.dir)
    return None


# -- what earlier runs left ----------------------------------------------------------------


def runs_from_bench_history(path: Path, seen: Callable[[str], bool]) -> list[RunData]:
    """History records grouped into runs by (run id, kind, matrix cell). The boot records a
    scenario run (or matrix cell) kept are skipped when that run is already stored."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in history.iter_records(path):
        key = (str(r.get("run_id") or r["id"]), str(r.get("kind") or "bench"),
               str(r.get("matrix_cell") or ""))
        groups.setdefault(key, []).append(r)
    runs = []
    for (rid, kind, cell), records in groups.items():
        if kind == "scenario":
            if seen(rid):
                continue
            kind, uid = "scenarios", f"boots:{rid}:{cell}"
        else:
            uid = f"{kind}:{rid}"
        runs.append(run_from_records(records, uid=uid, kind=kind, source="import:bench"))
    return runs


def tests_from_junit(path: Path, attempt: int = 0,
                     evidence: Callable[[str], Path | None] | None = None) -> list[TestData]:
    from reports.matrix import last_milestone, read_junit

    tests = []
    for case in read_junit(path):
        cause = (case.message or case.text).strip().splitlines()
        failed = case.outcome == "failed"
        found = evidence(case.nodeid) if evidence is not None and failed else None
        tests.append(TestData(
            nodeid=case.nodeid, outcome=case.outcome, duration=round(case.seconds, 3),
            attempt=attempt, cause=cause[0][:CAUSE_CHARS] if cause and case.outcome != "passed"
            else None, last_milestone=last_milestone(case) if failed else None,
            evidence=str(found) if found else None))
    return tests


def junit_properties(path: Path) -> dict[str, str]:
    """The machine properties of a JUnit's test cases (one machine: plain names; more:
    "<machine>.<name>", of which the first machine's are kept)."""
    from reports.matrix import read_junit

    props: dict[str, str] = {}
    for case in read_junit(path):
        for name, value in case.properties:
            props.setdefault(name.rsplit(".", 1)[-1], value)
    return props


def run_from_junit(path: Path, **fields: Any) -> RunData:
    """A pytest JUnit XML: its suite's time and host, and the machine properties the
    reports plugin put on each test case (platform, arch, board, image_version)."""
    data = path.read_bytes()
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ConfigError(f"cannot read JUnit {path}: {exc}") from None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    attrs = suite.attrib if suite is not None else {}
    props = junit_properties(path)
    digest = hashlib.sha256(data).hexdigest()[:16]
    run = RunData(uid=f"junit:{digest}", lab_run_id=f"junit-{digest}", kind="scenarios",
                  source="import:junit", started=_date(attrs.get("timestamp")),
                  host=attrs.get("hostname"), tests=tests_from_junit(path),
                  **context_fields(props))
    for key, value in fields.items():
        if value is not None:
            setattr(run, key, value)
    return run


def run_from_cell(folder: Path, source: str = "live") -> RunData:
    """A matrix cell's results folder (commands/matrix/run.py): both attempts, its boots."""
    from reports.matrix import _evidence

    meta_path = folder / "cell.json"
    if not meta_path.is_file():
        raise ConfigError(f"{folder} is no cell results folder (no cell.json)")
    meta = json.loads(meta_path.read_text("utf-8"))
    cell = meta.get("cell") or {}
    rid = str(meta.get("run_id") or f"{cell.get('id')}-{meta.get('started')}")
    tests: list[TestData] = []
    for attempt, prefix in enumerate(("", "rerun-")):  # the run, then its rerun's files
        junit = folder / f"{prefix}junit.xml"
        if junit.is_file():
            tests += tests_from_junit(junit, attempt,
                                      lambda n, p=prefix: _evidence(folder, p, n))
    bench = folder / "bench.jsonl"
    records = list(history.iter_records(bench)) if bench.is_file() else []
    context = context_fields(records[0]) if records else {}
    props = context_fields(junit_properties(folder / "junit.xml")) \
        if (folder / "junit.xml").is_file() else {}
    image = cell.get("image")
    run = RunData(
        uid=f"cell:{rid}", lab_run_id=rid, kind="cell", source=source,
        started=_date(meta.get("started")), finished=_date(meta.get("finished"))
        if meta.get("finished") else None, git_commit=git_commit() if source == "live" else None,
        image=context.get("image") or image, platform=cell.get("platform"),
        arch=cell.get("arch"), board=context.get("board") or props.get("board"),
        accel=context.get("accel"), hw=cell.get("hw"), cell=cell.get("id"),
        host=meta.get("host"), interrupted=bool(meta.get("interrupted")),
        image_version=context.get("image_version") or props.get("image_version"),
        options=" ".join(str(a) for a in (meta.get("attempts") or [{}])[0].get("command", [])),
        tests=tests, boots=[boot_from_record(r, i) for i, r in enumerate(records, 1)])
    run.image_checksum = image_checksum(run.image)
    return run


def cell_folders(paths: Iterable[Path]) -> list[Path]:
    from reports.matrix import find_cells

    return find_cells(paths)


def previous_nightly(db: Any, results: Sequence[Path]) -> list[Record]:
    """The boots of the latest nightly in the database before the cells in `results` (which
    `roslab matrix run` may have recorded already), as the matrix report's records."""
    current = set()
    for folder in cell_folders(results):
        meta = json.loads((folder / "cell.json").read_text("utf-8"))
        current.add(str(meta.get("run_id") or ""))
    runs = [r for r in db.runs(kinds=("cell",), with_tests=False)
            if r.lab_run_id not in current]
    if not runs:
        return []
    night = max(r.started for r in runs).strftime("%Y-%m-%d")
    return [{"matrix_cell": r.cell, "ok": b.ok,
             "milestones": {m.name: m.seconds for m in b.milestones}}
            for r in runs if r.started.strftime("%Y-%m-%d") == night for b in r.boots]
