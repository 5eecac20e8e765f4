"""`roslab matrix run`: a cell runs pytest into its own results folder, reruns its failures
once in a new session, and the policy judges; then a real small cell (one scenario on
QEMU x86_64, one boot of the reference image) end to end through `matrix report`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reports import history
from reports.matrix import FAILED, KNOWN, NOT_APPLICABLE, PASSED, cell_verdict, read_junit

ROOT = Path(__file__).resolve().parent.parent
ROSLAB = [sys.executable, "-m", "commands.cli"]

CONFTEST = """
import pytest

import reports.plugin
from reports.fake import FakeMachine

@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    m = FakeMachine("qemu", "/images/ref", "x86_64", workdir=tmp_path_factory.mktemp("m"))
    with m:
        m.boot(timeout=10)
        m.wait_for_user_docker(10)
        yield m

# the machines a test used, as fixtures.plugin would say for real ones
reports.plugin.machines_of = lambda item: [
    v for v in getattr(item, "funcargs", {}).values() if isinstance(v, FakeMachine)]
"""

SCENARIOS = """
from pathlib import Path

import pytest

SEEN = Path(__file__).parent / "flaky-ran-once"

def test_passes(fake):
    pass

def test_flaky(fake):
    first = not SEEN.exists()
    SEEN.touch()
    assert not first, "fails on the first machine only"

def test_broken(fake):
    assert fake.info["arch"] == "aarch64"

def test_known(fake):
    assert False, "a known bug"

def test_not_here():
    pytest.skip("not applicable on qemu: no such board")
"""

MATRIX = """
cells:
  - {id: fake-cell, platform: qemu, arch: x86_64, scenarios: [test_fake.py],
     image: IMAGE, options: [--accel, tcg]}
  - {id: needs-key, platform: qemu, arch: x86_64, scenarios: [test_fake.py],
     secrets: [ROSLAB_TEST_NEVER_SET]}
known_failures:
  - {scenario: test_fake.py::test_known, tracker: https://t.example/1, expires: 2099-12-31}
allowed_flakes:
  - {scenario: test_fake.py::test_flaky, tracker: https://t.example/2}
"""


def roslab(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ROSLAB_RUN_ID"}
    return subprocess.run([*ROSLAB, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_run_reruns_failures_once_and_judges_by_the_policy(
        tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_fake.py").write_text(textwrap.dedent(SCENARIOS))
    # a tiny guest's image: the scenarios boot nothing, and the run needs no reference image
    image = next(iter(tiny_guests.values()))
    (tmp_path / "matrix.yml").write_text(MATRIX.replace("IMAGE", str(image)))
    proc = roslab("matrix", "run", "--cell", "fake-cell", "--results", "out", cwd=tmp_path)
    out = tmp_path / "out" / "fake-cell"
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("cell fake-cell: 2 passed, 1 failed, 1 known failure, 1 not applicable, "
            "3 rerun (1 passed on rerun)") in proc.stdout

    meta = json.loads((out / "cell.json").read_text())
    first, rerun = meta["attempts"]
    assert first["exit_code"] == 1 and "--platform" in first["command"]
    assert rerun["rerun"] == ["test_fake.py::test_flaky", "test_fake.py::test_broken",
                              "test_fake.py::test_known"]
    assert meta["policy"]["known_failures"][0]["tracker"] == "https://t.example/1"
    # each attempt's JUnit and log; both attempts' allure results in one folder
    assert [c.outcome for c in read_junit(out / "rerun-junit.xml")] == \
        ["passed", "failed", "failed"]
    assert "fails on the first machine only" in (out / "pytest.log").read_text()
    assert len(list((out / "allure-results").glob("*-result.json"))) == 5 + 3
    status = {o.nodeid: o.status for o in cell_verdict(out).outcomes}
    assert status == {"test_fake.py::test_passes": PASSED, "test_fake.py::test_flaky": PASSED,
                      "test_fake.py::test_broken": FAILED, "test_fake.py::test_known": KNOWN,
                      "test_fake.py::test_not_here": NOT_APPLICABLE}
    broken = next(c for c in read_junit(out / "junit.xml") if c.nodeid.endswith("broken"))
    assert broken.prop("last_milestone") == "user-docker"
    # a boot record per machine of each session, under the cell's run id
    records = history.read(out / "bench.jsonl")
    assert len(records) == 2 and {r["kind"] for r in records} == {"scenario"}
    assert records[0]["run_id"] == meta["run_id"] and records[0]["ok"] is True

    again = roslab("matrix", "run", "--cell", "fake-cell", "--results", "out", cwd=tmp_path)
    assert again.returncode == 2 and "is not empty" in again.stderr
    # a cell whose secret is unset is not configured: named, neutral, nothing run
    keyless = roslab("matrix", "run", "--cell", "needs-key", "--results", "out", cwd=tmp_path)
    assert keyless.returncode == 0, keyless.stdout + keyless.stderr
    assert ("cell needs-key: NOT CONFIGURED: secret(s) not set: ROSLAB_TEST_NEVER_SET"
            in keyless.stdout)
    assert "1 not configured (needs-key)" in keyless.stdout
    keyless_meta = json.loads((tmp_path / "out" / "needs-key" / "cell.json").read_text())
    assert keyless_meta["not_configured"]["missing"] == ["ROSLAB_TEST_NEVER_SET"]
    assert keyless_meta["attempts"] == []
    assert meta["accelerator"]["accel"] == "tcg"  # from pytest's header, with its reason
    report = roslab("matrix", "report", "out", "-o", "report", cwd=tmp_path)
    assert "(1 not configured: needs-key)" in report.stdout
    assert "FAILED (fake-cell)" in report.stdout  # red only because of fake-cell


@pytest.mark.refimage
def test_a_real_cell_runs_and_reports(tmp_path: Path) -> None:
    """One scenario, one boot of the x86_64 reference image under QEMU."""
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    (tmp_path / "matrix.yml").write_text(
        "cells:\n  - {id: qemu-small, platform: qemu, arch: x86_64, "
        "scenarios: [scenarios/test_boot.py], keyword: reaches_every_boot_milestone}\n")
    proc = roslab("matrix", "run", "--where", "platform=qemu", "--results", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = tmp_path / "out" / "qemu-small"
    (case,) = read_junit(out / "junit.xml")
    assert case.nodeid == "scenarios/test_boot.py::test_reaches_every_boot_milestone"
    assert case.outcome == "passed" and case.prop("platform") == "qemu"
    (record,) = history.read(out / "bench.jsonl")
    assert record["ok"] and record["milestones"]["user-docker"] > record["milestones"]["kernel"]
    assert list((out / "allure-results").glob("*-result.json"))
    report = roslab("matrix", "report", "out", "-o", "report", cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert report.stdout.startswith("roslab nightly: PASSED: 1 cells; 1 passed")
    assert "qemu-small" in (tmp_path / "report" / "report.html").read_text()
