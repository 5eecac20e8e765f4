"""The reports pytest plugin, run in a child pytest on a tiny scenario file with a
Machine-shaped fake: allure labels and attachments, and JUnit properties, land."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

CONFTEST = """
import pytest

import reports.plugin
from reports.fake import FakeMachine

@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    m = FakeMachine("qemu", "/images/ref", "x86_64", workdir=tmp_path_factory.mktemp("m1"))
    with m:
        m.boot(timeout=10)
        yield m

# Stand-in for fixtures.options.machines_of: the machines a test requested.
reports.plugin.machines_of = lambda item: [
    v for v in getattr(item, "funcargs", {}).values() if isinstance(v, FakeMachine)
]
"""

SCENARIO = """
def test_boots(machine):
    assert machine.timeline.marks

def test_breaks(machine):
    assert machine.info["arch"] == "aarch64"

def test_without_machine():
    pass
"""


def run_child(tmp_path: Path, allure: bool = True) -> tuple[Path, Path]:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_scenario.py").write_text(textwrap.dedent(SCENARIO))
    results, junit = tmp_path / "allure-results", tmp_path / "junit.xml"
    # Only the plugins under test: an installed lab-core plugin must not change the run.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "allure_pytest.plugin",
            "-p",
            "reports.plugin",
            *([f"--alluredir={results}"] if allure else []),
            f"--junitxml={junit}",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_scenario.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # test_breaks fails on purpose
    assert "1 failed, 2 passed" in proc.stdout, proc.stdout
    return results, junit


def allure_results(results: Path) -> dict[str, dict]:
    out = {}
    for path in results.glob("*-result.json"):
        data = json.loads(path.read_text())
        out[data["name"]] = data
    return out


def labels(result: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label in result["labels"]:
        out.setdefault(label["name"], []).append(label["value"])
    return out


def attachments(result: dict) -> dict[str, dict]:
    return {a["name"]: a for a in result.get("attachments", [])}


def test_allure_labels_attachments_and_junit_properties(tmp_path: Path) -> None:
    results, junit = run_child(tmp_path)
    tests = allure_results(results)
    assert set(tests) == {"test_boots", "test_breaks", "test_without_machine"}

    for name in ("test_boots", "test_breaks"):
        got = labels(tests[name])
        assert got["platform"] == ["qemu"] and got["arch"] == ["x86_64"]
        assert got["image_version"] == ["v1.4.1-lab"]
        assert got["parentSuite"] == ["qemu x86_64"]
        assert got["suite"] == ["test_scenario"]
    assert "platform" not in labels(tests["test_without_machine"])

    # The first test that used the machine carries its boot evidence.
    boots = attachments(tests["test_boots"])
    assert set(boots) == {"m1 console log", "m1 boot timeline", "m1 boot timeline data"}
    assert boots["m1 boot timeline"]["type"] == "image/svg+xml"
    svg = (results / boots["m1 boot timeline"]["source"]).read_text()
    assert svg.startswith("<svg") and "user-docker" in svg
    data = json.loads((results / boots["m1 boot timeline data"]["source"]).read_text())
    assert data["milestones"]["ssh"] == 4.3 and data["phases"][0]["phase"] == "kernel"
    log = (results / boots["m1 console log"]["source"]).read_text()
    assert log.count("\n") == 60

    # The failing test gets the evidence again, plus the last 40 console lines.
    broke = attachments(tests["test_breaks"])
    assert tests["test_breaks"]["status"] == "failed"
    assert "m1 console log" in broke and "m1 boot timeline" in broke
    tail = (results / broke["m1 last 40 console lines"]["source"]).read_text().splitlines()
    assert tail[0] == "console line 21" and tail[-1] == "console line 60" and len(tail) == 40
    assert not attachments(tests["test_without_machine"])

    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    context = {"platform": "qemu", "arch": "x86_64", "image_version": "v1.4.1-lab"}
    for name, extra in (("test_boots", {}), ("test_breaks", {"last_milestone": "user-docker"})):
        props = {p.get("name"): p.get("value") for p in cases[name].iter("property")}
        assert float(props.pop("lab_cpu_s")) >= 0  # the harness's own time (see below)
        assert props == {**context, **extra}  # a failure says where the boot got to
    assert not list(cases["test_without_machine"].iter("property"))


def test_without_alluredir_only_junit_properties(tmp_path: Path) -> None:
    results, junit = run_child(tmp_path, allure=False)
    assert not results.exists()
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_breaks"].iter("property")}
    assert props["platform"] == "qemu"


OVERHEAD_SCENARIO = """
import time

def test_busy_lab(machine):
    end = time.process_time() + 0.4
    while time.process_time() < end:  # the harness working: counted
        pass

def test_waits_for_guest(machine):
    time.sleep(1.0)  # blocked on the guest: not counted

def test_without_machine():
    time.sleep(0.1)
"""


def test_lab_overhead_counts_harness_cpu_not_waiting(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_scenario.py").write_text(textwrap.dedent(OVERHEAD_SCENARIO))
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "reports.plugin", f"--junitxml={junit}", "-q",
         "-p", "no:cacheprovider", "test_scenario.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cpu = {
        case.get("name"): float(prop.get("value"))
        for case in ET.parse(junit).iter("testcase")
        for prop in case.iter("property") if prop.get("name") == "lab_cpu_s"
    }
    assert set(cpu) == {"test_busy_lab", "test_waits_for_guest"}  # scenarios with a machine
    assert 0.4 <= cpu["test_busy_lab"] < 1.0
    assert cpu["test_waits_for_guest"] < 0.1
    assert "roslab: lab overhead per scenario (harness CPU, setup to teardown): median" in \
        proc.stdout
    assert "over 2 scenarios" in proc.stdout
