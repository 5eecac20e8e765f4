"""pytest plugin: allure labels and attachments, JUnit properties, from the machines a
test used.

Per test, for each machine (`fixtures.options.machines_of(item)`):
- JUnit properties platform/arch/board/image_version (item.user_properties), always;
- allure labels platform/arch/board/image_version, parent suite "<platform> <arch>
  <board>", suite
  = the scenario module, when allure is active (allure-pytest and --alluredir);
- allure attachments: console log and boot timeline (SVG picture + JSON data) on the
  first test that uses a machine (the one that saw it boot) and on every failing test;
  the last console lines on failure. Passing tests sharing a module-scoped machine do
  not re-attach the same growing log (kola/labgrid attach evidence to failures).
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from _pytest._code.code import Traceback

from lab.gc import run_id
from lab.timeline import USER_DOCKER
from reports import history
from reports.history import machine_context
from reports.svg import Bar, waterfall

TAIL_LINES = 40
# Machines whose boot evidence is attached, by id(); the value keeps the machine alive
# so its id cannot be reused by a later machine.
_SEEN = pytest.StashKey[dict[int, Any]]()
_DONE = pytest.StashKey[bool]()  # this test's failure evidence is attached
_BOOTED = pytest.StashKey[dict[int, Any]]()  # every machine a test used, for bench records
_CPU_AT_START = pytest.StashKey[float]()
OVERHEAD_PROPERTY = "lab_cpu_s"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("roslab").addoption(
        "--roslab-bench-history", default=None, type=Path, metavar="FILE",
        help="append a bench record (its boot timeline) for every machine the run booted "
             "(roslab matrix run keeps one per cell)")
    parser.getgroup("roslab").addoption(
        "--results-db", default=None, metavar="URL",
        help="record the run in this results database: sqlite:///FILE or "
             "postgresql://... (default: $ROSLAB_RESULTS_DB, else results/roslab.db when "
             "--platform is given); 'off' records nothing")


def pytest_configure(config: pytest.Config) -> None:
    from reports.results_record import SessionRecorder, session_url

    url = session_url(config)
    if url is not None:
        config.pluginmanager.register(
            SessionRecorder(config, url, lambda: booted_machines(config)), "roslab-results")


def booted_machines(config: pytest.Config) -> list[Any]:
    """The machines the run booted; a restored machine's timeline is a restore, not a
    boot (roslab bench restore times it)."""
    return [m for m in config.stash.get(_BOOTED, {}).values()
            if (getattr(m, "info", None) or {}).get("started") != "restored"]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """One bench record per machine, so a scenario run's boots feed the boot-time history."""
    path = session.config.getoption("--roslab-bench-history", None)
    booted = booted_machines(session.config)
    if path is None or not booted:
        return
    run = run_id()
    for boot, machine in enumerate(booted, 1):
        timeline = getattr(machine, "timeline", None)
        marks = timeline.to_dict() if timeline is not None else {}
        record = history.new_record(context=_context(machine), milestones=marks,
                                    ok=USER_DOCKER in marks, run_id=run, boot=boot)
        record["kind"] = "scenario"
        history.append(path, record)


def machines_of(item: pytest.Item) -> list[Any]:
    """The machines `item` used, as the lab-core fixtures know them ([] outside the lab)."""
    try:
        from fixtures.options import machines_of as lab_machines_of
    except ImportError:  # a checkout or venv without the lab-core plugin
        return []
    return list(lab_machines_of(item) or [])


def allure_active(config: pytest.Config) -> bool:
    return bool(
        getattr(config.option, "allure_report_dir", None)
    ) and config.pluginmanager.has_plugin("allure_listener")


def _name(machine: Any, index: int) -> str:
    return str(getattr(machine, "name", None) or f"machine{index}")


def _context(machine: Any) -> dict[str, Any]:
    return machine_context(dict(getattr(machine, "info", None) or {}))


def tail(path: Path | None, lines: int = TAIL_LINES) -> str:
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def timeline_svg(timeline: Any, title: str) -> str:
    return waterfall([Bar(name, start, end) for name, start, end in timeline.phases()], title)


def timeline_json(machine: Any) -> str:
    timeline = machine.timeline
    return json.dumps(
        {
            "machine": _context(machine),
            "milestones": timeline.to_dict(),
            "phases": [
                {"phase": name, "start": round(start, 3), "end": round(end, 3)}
                for name, start, end in timeline.phases()
            ],
        },
        indent=2,
    )


def add_junit_properties(item: pytest.Item, machines: list[Any]) -> None:
    """Before the report exists, so every phase's report (and the JUnit XML) carries them."""
    have = {name for name, _ in item.user_properties}
    for i, machine in enumerate(machines):
        ctx = _context(machine)
        # One machine: plain names; more: prefixed, so values are not ambiguous.
        prefix = "" if len(machines) == 1 else f"{_name(machine, i)}."
        for key in ("platform", "arch", "board", "image_version"):
            if prefix + key not in have and ctx[key]:
                item.user_properties.append((prefix + key, ctx[key]))


def add_allure_labels(item: pytest.Item, machines: list[Any]) -> None:
    import allure

    contexts = [_context(m) for m in machines]
    for key in ("platform", "arch", "board", "image_version"):
        for value in sorted({c[key] for c in contexts if c[key]}):
            allure.dynamic.label(key, value)
    first = contexts[0]
    allure.dynamic.parent_suite(" ".join(first[k] for k in ("platform", "arch", "board")
                                         if first[k]))
    allure.dynamic.suite(item.module.__name__ if getattr(item, "module", None) else item.nodeid)


def attach_evidence(machines: list[Any], failed: bool, seen: dict[int, Any]) -> None:
    import allure

    for i, machine in enumerate(machines):
        name = _name(machine, i)
        log = getattr(machine, "console_log", None)
        timeline = getattr(machine, "timeline", None)
        if failed or id(machine) not in seen:
            seen[id(machine)] = machine
            if log and Path(log).is_file():
                allure.attach.file(
                    str(log),
                    name=f"{name} console log",
                    attachment_type=allure.attachment_type.TEXT,
                )
            if timeline is not None and timeline.marks:
                allure.attach(
                    timeline_svg(timeline, f"{name} boot timeline"),
                    name=f"{name} boot timeline",
                    attachment_type=allure.attachment_type.SVG,
                )
                allure.attach(
                    timeline_json(machine),
                    name=f"{name} boot timeline data",
                    attachment_type=allure.attachment_type.JSON,
                )
        if failed:
            allure.attach(
                tail(log) or "(no console output)",
                name=f"{name} last {TAIL_LINES} console lines",
                attachment_type=allure.attachment_type.TEXT,
            )


def lab_source_dirs() -> tuple[Path, ...]:
    import drivers
    import fixtures
    import lab

    return tuple(Path(m.__file__).resolve().parent for m in (lab, drivers, fixtures))


def hide_lab_frames(item: pytest.Item, call: pytest.CallInfo[Any],
                    report: pytest.TestReport) -> None:
    """A lab error (boot failure, panic, timeout, refused input) is reported as the test's
    own frames and the error's message, which says everything a user can act on; the
    lab's internals are noise there (`--tb=long` or `--fulltrace` still show them)."""
    from lab.errors import LabError

    excinfo = call.excinfo
    if excinfo is None or not report.failed or not excinfo.errisinstance(LabError):
        return
    option = item.config.option
    if getattr(option, "tbstyle", "auto") in ("long", "native", "no") or getattr(
            option, "fulltrace", False):
        return
    internal = lab_source_dirs()
    test_file = Path(str(item.path)).resolve()
    entries = list(excinfo.traceback)
    # from the test's own frame on (pytest's and pluggy's frames come before it)
    first = next((i for i, e in enumerate(entries) if Path(e.path).resolve() == test_file), None)
    frames = [e for e in entries[first or 0:] if first is not None
              and not any(Path(e.path).resolve().is_relative_to(d) for d in internal)]
    if not frames:
        # a fixture's failure (the machine did not boot) has no frame of the test in it
        report.longrepr = f"{excinfo.typename}: {excinfo.value}"
        return
    report.longrepr = excinfo.getrepr(
        funcargs=True, style="short" if option.tbstyle == "short" else "long",
        tbfilter=lambda _: Traceback(frames), truncate_locals=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_CPU_AT_START] = time.process_time()


def add_lab_overhead(item: pytest.Item, report: pytest.TestReport) -> None:
    """The harness's own time for a scenario: CPU seconds of this process (all its threads)
    from setup to the end of teardown. The guest runs in another process, and waiting for
    it (console reads, SSH, polling sleeps) costs no CPU here, so what is left is the lab's
    work: console parsing, SSH crypto, fixtures, reports. Child processes (QEMU, qemu-img)
    are not counted."""
    start = item.stash.get(_CPU_AT_START, None)
    if start is not None and report.when == "teardown" and machines_of(item):
        report.user_properties.append((OVERHEAD_PROPERTY, round(time.process_time() - start, 4)))


def lab_overheads(reports: list[Any]) -> list[float]:
    """Per scenario, the harness CPU seconds the workers reported (xdist sends properties)."""
    return [float(value) for r in reports if getattr(r, "when", "") == "teardown"
            for name, value in getattr(r, "user_properties", ()) if name == OVERHEAD_PROPERTY]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    import numpy as np

    samples = lab_overheads([r for reps in terminalreporter.stats.values() for r in reps])
    if samples:
        terminalreporter.write_line(
            f"roslab: lab overhead per scenario (harness CPU, setup to teardown): median "
            f"{np.median(samples):.3f} s, p95 {np.percentile(samples, 95):.3f} s, "
            f"max {max(samples):.3f} s over {len(samples)} scenarios")


@pytest.hookimpl(hookwrapper=True, trylast=True)  # innermost: allure and JUnit read after it
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None]:
    machines = machines_of(item)
    if machines and call.when == "setup":
        add_junit_properties(item, machines)
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    hide_lab_frames(item, call, report)
    add_lab_overhead(item, report)
    booted = item.config.stash.setdefault(_BOOTED, {})
    for machine in machines:
        booted.setdefault(id(machine), machine)  # the value keeps the id from being reused
    if report.failed and machines:
        # JUnit readers (roslab matrix report) show where each machine's boot got to
        for i, machine in enumerate(machines):
            timeline = getattr(machine, "timeline", None)
            reached = timeline.last_reached() if timeline is not None else None
            prefix = "" if len(machines) == 1 else f"{_name(machine, i)}."
            item.user_properties.append((f"{prefix}last_milestone", reached or "none"))
    if not machines or not allure_active(item.config):
        return
    if call.when == "setup":
        add_allure_labels(item, machines)
    # Attach once per test: at its first failure, or after a passing call.
    if item.stash.get(_DONE, False):
        return
    if report.failed or (call.when == "call" and report.passed):
        item.stash[_DONE] = True
        seen = item.config.stash.setdefault(_SEEN, {})
        attach_evidence(machines, report.failed, seen)
