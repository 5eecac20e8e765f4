"""`roslab matrix report` on synthetic cell results folders (no boots): the flake policy,
known failures, a broken and a missing cell, the merged JUnit and allure results, boot
medians beside the previous nightly's, the summary line and exit code, and the page in
headless Chromium."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
from test_reports_html import CHROMIUM, chromium  # tests/ is on sys.path

from commands.cli import main
from reports import history
from reports.matrix import (
    FAILED,
    KNOWN,
    PASSED,
    cell_verdict,
    merge,
    nodeid,
    read_junit,
)

TRACKER = "https://tracker.example/roslab/issues/41"
BOOT = "scenarios/test_boot.py::test_reaches_every_boot_milestone"


def case_xml(node: str, outcome: str = "passed", message: str = "",
             props: dict[str, str] | None = None) -> str:
    path, _, name = node.partition("::")
    classname = path.removesuffix(".py").replace("/", ".")
    body = "".join(f"<property name='{k}' value={quoteattr(v)}/>"
                   for k, v in (props or {}).items())
    body = f"<properties>{body}</properties>" if body else ""
    attr, text = quoteattr(message), escape(message)
    if outcome == "failed":
        body += f"<failure message={attr}>Traceback...\n{text}</failure>"
    elif outcome == "error":
        body += f"<error message={attr}>{text}</error>"
    elif outcome == "skipped":
        body += f"<skipped type='pytest.skip' message={attr}/>"
    return f"<testcase classname='{classname}' name='{name}' time='1.5'>{body}</testcase>"


def junit(cases: list[str]) -> str:
    return ("<?xml version='1.0' encoding='utf-8'?><testsuites><testsuite name='pytest'>"
            + "".join(cases) + "</testsuite></testsuites>")


def make_cell(root: Path, cell: str, first: list[str], rerun: list[str] | None = None,
              policy: dict[str, Any] | None = None, exit_code: int = 1,
              boots: list[float] = (30.0, 32.0, 34.0), console: dict[str, str] | None = None,
              ) -> Path:
    folder = root / cell
    (folder / "allure-results").mkdir(parents=True)
    attempts = [{"command": ["pytest"], "exit_code": exit_code}]
    (folder / "junit.xml").write_text(junit(first))
    if rerun is not None:
        (folder / "rerun-junit.xml").write_text(junit(rerun))
        attempts.append({"command": ["pytest"], "exit_code": 1, "rerun": []})
    meta = {"cell": {"id": cell, "platform": "qemu", "arch": "x86_64", "image": "reference"},
            "policy": policy or {"known_failures": [], "allowed_flakes": []},
            "attempts": attempts}
    (folder / "cell.json").write_text(json.dumps(meta))
    for i, user_docker in enumerate(boots):
        history.append(folder / "bench.jsonl", history.new_record(
            context={"platform": "qemu", "arch": "x86_64"}, ok=True, run_id=cell, boot=i,
            milestones={"kernel": 0.5, "login-prompt": user_docker - 8,
                        "user-docker": user_docker}))
    for result_id in ("a1", "a2"):
        (folder / "allure-results" / f"{cell}-{result_id}-result.json").write_text(json.dumps(
            {"uuid": f"{cell}-{result_id}", "historyId": "same-test", "testCaseId": "tc",
             "fullName": "scenarios.test_boot#test_reaches_every_boot_milestone",
             "name": "test_reaches_every_boot_milestone", "status": "passed", "labels": []}))
    (folder / "allure-results" / f"{cell}-att-attachment.txt").write_text("console")
    for node, text in (console or {}).items():
        from fixtures.evidence import evidence_name

        log = folder / "artifacts" / evidence_name(node) / "qemu-x86_64-abc" / "console.log"
        log.parent.mkdir(parents=True)
        log.write_text(text)
    return folder


def policy(known: list[str] = (), flakes: list[str] = ()) -> dict[str, Any]:
    return {"known_failures": [{"scenario": s, "tracker": TRACKER, "cells": [],
                                "expires": "2099-01-01"} for s in known],
            "allowed_flakes": [{"scenario": s, "tracker": TRACKER, "cells": []} for s in flakes]}


def nightly_folders(root: Path) -> list[Path]:
    docker = "scenarios/test_docker.py::test_sockets_are_separate"
    return [
        make_cell(root, "qemu-x86_64-pc", [
            case_xml(BOOT),
            case_xml("scenarios/test_services.py::test_killed_service_comes_back", "failed",
                     "assert 'running' in 'exited'", {"last_milestone": "user-docker"}),
            case_xml("scenarios/test_services.py::test_one_shot_service_completed[udev-cold]",
                     "failed", "timeout"),
            case_xml(docker, "failed", "flaky socket"),
            case_xml("scenarios/test_cloud_config.py::test_hostname_is_set", "error",
                     "BootTimeout: no login prompt; last milestone reached: kernel"),
        ], rerun=[
            case_xml("scenarios/test_services.py::test_killed_service_comes_back", "failed",
                     "assert 'running' in 'exited'", {"last_milestone": "services"}),
            case_xml("scenarios/test_services.py::test_one_shot_service_completed[udev-cold]"),
            case_xml(docker),
            case_xml("scenarios/test_cloud_config.py::test_hostname_is_set", "error",
                     "BootTimeout: no login prompt; last milestone reached: kernel"),
        ], policy=policy(known=["scenarios/test_cloud_config.py::test_hostname_is_set"],
                         flakes=[docker]),
            console={"scenarios/test_services.py::test_killed_service_comes_back":
                     "".join(f"line {i}\n" for i in range(100)) + "<b>service died</b>\n"}),
        make_cell(root, "qemu-aarch64-raspi3b", [
            case_xml(BOOT),
            case_xml("scenarios/test_cloud_config.py::test_ssh_with_the_authorized_key_works",
                     "skipped", "not applicable on qemu raspi3b: no network"),
        ], exit_code=0, boots=[100.0, 104.0]),
    ]


def test_nodeid_from_junit_names() -> None:
    assert nodeid("scenarios.test_boot", "test_x[a-b]") == "scenarios/test_boot.py::test_x[a-b]"
    assert nodeid("scenarios.sub.test_y.TestZ", "test_q") == \
        "scenarios/sub/test_y.py::TestZ::test_q"


def test_flake_policy_and_known_failures(tmp_path: Path) -> None:
    folder = nightly_folders(tmp_path)[0]
    status = {o.nodeid.split("::")[1]: (o.status, o.note) for o in cell_verdict(folder).outcomes}
    assert status["test_reaches_every_boot_milestone"][0] == PASSED
    assert status["test_killed_service_comes_back"] == (FAILED, "failed on the rerun too")
    # passed on a fresh machine, but not allowed to flake: still red, and said so
    assert status["test_one_shot_service_completed[udev-cold]"] == (
        FAILED, "failed, passed on the rerun: a flake, and it is not allowed to flake")
    assert status["test_sockets_are_separate"] == (
        PASSED, "failed, passed on the rerun: allowed to flake")
    assert status["test_hostname_is_set"] == (KNOWN, "known failure until 2099-01-01")
    verdict = cell_verdict(folder)
    assert not verdict.green and len(verdict.reruns) == 4
    assert verdict.summary() == ("2 passed, 2 failed, 1 known failure, "
                                 "4 rerun (2 passed on rerun)")


def test_a_check_skipped_after_a_failed_boot_is_no_pass(tmp_path: Path) -> None:
    skipped = "scenarios/test_boot.py::test_each_boot_phase_within_budget"
    folder = make_cell(tmp_path, "c", [
        case_xml(BOOT, "error", "GuestPanic: guest kernel panic"),
        case_xml(skipped, "skipped", "this module's machine did not boot (see x): panic")],
        [case_xml(BOOT, "error", "GuestPanic: guest kernel panic")])
    status = {o.nodeid: (o.status, o.note) for o in cell_verdict(folder).outcomes}
    assert status[skipped] == (FAILED, "not run: this module's machine did not boot "
                                       "(see x): panic")


def test_a_known_failure_that_flakes_is_red(tmp_path: Path) -> None:
    node = "scenarios/test_docker.py::test_sockets_are_separate"
    folder = make_cell(tmp_path, "c", [case_xml(node, "failed", "x")], [case_xml(node)],
                       policy(known=[node]))
    (outcome,) = cell_verdict(folder).outcomes
    assert outcome.status == FAILED and outcome.tracker == TRACKER


def test_broken_and_missing_cells_fail_the_nightly(tmp_path: Path) -> None:
    folders = nightly_folders(tmp_path)
    broken = tmp_path / "qemu-aarch64-virt"
    broken.mkdir()
    (broken / "pytest.log").write_text("ERROR: usage: --hw: unrecognized\n")
    (broken / "cell.json").write_text(json.dumps({
        "cell": {"id": "qemu-aarch64-virt"}, "policy": {},
        "attempts": [{"command": ["pytest"], "exit_code": 4}]}))
    nightly = merge([tmp_path], expected=["qemu-x86_64-pc", "qemu-aarch64-virt", "aws-x86_64"])
    by_id = {c.cell: c for c in nightly.cells}
    assert by_id["qemu-aarch64-virt"].broken == "the cell did not run its scenarios (pytest " \
                                                "exit code 4)"
    assert nightly.missing == ["aws-x86_64"]
    assert by_id["qemu-aarch64-raspi3b"].green and not nightly.green
    assert {c.folder for c in nightly.cells} == {*folders, broken}


def test_report_command_writes_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          ) -> None:
    nightly_folders(tmp_path / "results")
    prev = tmp_path / "previous.jsonl"
    history.append(prev, {**history.new_record(
        context={}, ok=True, run_id="p", boot=1, milestones={"user-docker": 30.0}),
        "matrix_cell": "qemu-x86_64-pc"})
    out = tmp_path / "report"
    code = main(["matrix", "report", str(tmp_path / "results"), "-o", str(out),
                 "--previous", str(prev)])
    line = capsys.readouterr().out.strip()
    assert code == 1
    assert line == ("roslab nightly: FAILED (qemu-x86_64-pc): 2 cells; 3 passed, 2 failed, "
                    "1 known failure, 1 not applicable; 4 reruns, 2 passed on rerun")
    assert (out / "summary.txt").read_text().strip() == line

    # merged JUnit: one suite per cell with the policy's verdicts
    suites = {s.get("name"): s for s in ET.parse(out / "junit.xml").getroot()}
    assert set(suites) == {"qemu-x86_64-pc", "qemu-aarch64-raspi3b"}
    assert suites["qemu-x86_64-pc"].get("failures") == "2"
    assert suites["qemu-x86_64-pc"].get("skipped") == "1"  # the known failure
    cases = {c.nodeid: c for c in read_junit(out / "junit.xml")}
    flaky = cases["qemu-x86_64-pc/scenarios/test_docker.py::test_sockets_are_separate"]
    assert flaky.outcome == "passed" and flaky.prop("rerun") == "passed"

    # merged allure: every file, a cell label, and a history id per cell
    results = [json.loads(p.read_text()) for p in (out / "allure-results").glob("*-result.json")]
    assert len(results) == 4 and len(list((out / "allure-results").glob("*-attachment.txt"))) == 2
    history_ids = {r["historyId"] for r in results}
    assert len(history_ids) == 2  # same test: a retry within a cell, distinct across cells
    assert {lb["value"] for r in results for lb in r["labels"] if lb["name"] == "cell"} == \
        {"qemu-x86_64-pc", "qemu-aarch64-raspi3b"}

    # boot records carry their cell; medians beside the previous nightly's
    records = history.read(out / "bench.jsonl")
    assert {r["matrix_cell"] for r in records} == {"qemu-x86_64-pc", "qemu-aarch64-raspi3b"}
    page = (out / "report.html").read_text()
    assert "32.0 (prev 30.0, +2.0)" in page and "102.0" in page
    assert not re.search(r"<script|<link|https?://(?!www\.w3\.org|tracker\.example)", page)
    assert "&lt;b&gt;service died&lt;/b&gt;" in page and "line 99" in page
    assert "line 70" not in page  # an excerpt, not the whole log
    assert "last milestone reached: <b>services</b>" in page  # the rerun's, the last attempt
    assert "last milestone reached: <b>kernel</b>" in page  # from a boot error's message


def test_report_of_a_green_nightly_exits_0(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    make_cell(tmp_path, "only", [case_xml(BOOT)], exit_code=0)
    assert main(["matrix", "report", str(tmp_path / "only"), "-o", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.startswith("roslab nightly: PASSED: 1 cells; 1 passed")
    assert "no previous nightly given" in (tmp_path / "r" / "report.html").read_text()


def test_not_configured_cells_are_neutral_and_named(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A cloud cell whose secrets are unset: in the report, naming the variables; the
    nightly is neither failed by it nor does it count as passed."""
    make_cell(tmp_path, "only", [case_xml(BOOT)], exit_code=0)
    cloud = tmp_path / "aws-x86_64"
    cloud.mkdir()
    (cloud / "cell.json").write_text(json.dumps({
        "cell": {"id": "aws-x86_64", "platform": "aws", "arch": "x86_64", "image": "x"},
        "policy": {}, "attempts": [], "not_configured": {
            "missing": ["AWS_ACCESS_KEY_ID"], "why": "secret(s) not set: AWS_ACCESS_KEY_ID"}}))
    out = tmp_path / "r"
    assert main(["matrix", "report", str(tmp_path), "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("roslab nightly: PASSED: 2 cells (1 not configured: aws-x86_64)")
    verdict = cell_verdict(cloud)
    assert not verdict.green and verdict.not_configured and not verdict.broken
    assert verdict.summary() == "NOT CONFIGURED: secret(s) not set: AWS_ACCESS_KEY_ID"
    page = (out / "report.html").read_text()
    assert "not configured: secret(s) not set: AWS_ACCESS_KEY_ID" in page
    suite = next(s for s in ET.parse(out / "junit.xml").getroot()
                 if s.get("name") == "aws-x86_64")
    assert suite.get("skipped") == "1" and suite.get("failures") == suite.get("errors") == "0"


def test_a_rehearsed_cell_says_so_and_is_red_when_the_stand_in_kept_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_cell(tmp_path, "aws-x86_64", [case_xml(BOOT)], exit_code=0)
    meta = json.loads((folder / "cell.json").read_text())
    meta["rehearsed"] = {"what": "moto's EC2 API, instances booted under QEMU",
                         "accelerator": "tcg (no kernel to probe KVM with)", "leftovers": []}
    (folder / "cell.json").write_text(json.dumps(meta))
    assert main(["matrix", "report", str(tmp_path), "-o", str(tmp_path / "r")]) == 0
    assert "1 rehearsed on stand-ins, not on their clouds: aws-x86_64" in capsys.readouterr().out
    page = (tmp_path / "r" / "report.html").read_text()
    assert "REHEARSED against moto&#x27;s EC2 API" in page and "tcg (no kernel" in page
    meta["rehearsed"]["leftovers"] = ["instance i-1 (running)", "guest 127.0.2.7:22"]
    (folder / "cell.json").write_text(json.dumps(meta))
    verdict = cell_verdict(folder)
    assert not verdict.green
    assert verdict.broken == ("the rehearsal left behind (after the cell's gc): instance i-1 "
                              "(running); guest 127.0.2.7:22")


def test_report_refuses_what_is_no_results(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "report", str(tmp_path / "nope")]) == 2
    assert "results folder" in capsys.readouterr().err
    make_cell(tmp_path / "a", "same", [case_xml(BOOT)])
    make_cell(tmp_path / "b", "same", [case_xml(BOOT)])
    assert main(["matrix", "report", str(tmp_path / "a"), str(tmp_path / "b"),
                 "-o", str(tmp_path / "r")]) == 2
    assert "cell results given twice: same" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: chromium)")
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    nightly_folders(tmp_path / "results")
    out = tmp_path / "report"
    main(["matrix", "report", str(tmp_path / "results"), "-o", str(out)])
    dom = chromium("--dump-dom", (out / "report.html").as_uri())
    # the grid: a row per cell, a column per scenario family, a status in every cell
    grid = re.search(r"<table class=\"grid\">.*?</table>", dom, re.S)
    assert grid, dom[:2000]
    head = re.findall(r"<th>([^<]+)</th>", grid.group(0))
    assert head == ["cell", "boot", "cloud_config", "docker", "services"]
    assert grid.group(0).count("<tr>") == 3
    assert 'class="st-failed">2 failed' in grid.group(0)
    assert 'class="st-known">1 known failure' in grid.group(0)
    assert 'class="st-na">1 not applicable' in grid.group(0)
    assert "not run" in grid.group(0)
    assert "flaky, and it is not allowed" not in dom and "a flake, and it is not allowed" in dom
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1300,1600", (out / "report.html").as_uri())
    assert shot.stat().st_size > 10_000
