"""Scenario checks that need no boot: budgets refuse what would judge nothing, milestone
order, and the console patterns on other OSes' wording."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab import timeline as tl

ROOT = Path(__file__).resolve().parent.parent


def _collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "scenarios", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--budget", "kernal=3"), "--budget 'kernal=3': unknown phase 'kernal'"),
     (("--budget", "kernel=-3"), "--budget 'kernel=-3': expected PHASE=SECONDS"),
     (("--budget", "kernel"), "--budget 'kernel': expected PHASE=SECONDS")],
)
def test_bad_budget_option_stops_the_run(args: tuple[str, ...], message: str) -> None:
    result = _collect(*args)
    assert result.returncode == 4, result.stdout + result.stderr
    assert message in result.stderr
    assert "known phases: firmware, netboot, netboot-loaded, kernel" in result.stderr


def test_unknown_phase_in_budgets_file_stops_the_run(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yml"
    budgets.write_text("qemu:\n  x86_64:\n    tcg:\n      kernel: 20\n      sytem-docker: 20\n"
                       "      total: 0\n")
    result = _collect("--budgets", str(budgets))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "qemu.x86_64.tcg: unknown phase 'sytem-docker'" in result.stderr
    assert "qemu.x86_64.tcg.total: 0 is not a positive number" in result.stderr


def test_order_problems_names_negative_and_out_of_order_milestones() -> None:
    assert tl.order_problems({tl.KERNEL: 0.5, tl.INIT: 6.0, tl.SYSTEM_DOCKER: 10.0}) == []
    assert tl.order_problems({tl.KERNEL: -1.0}) == ["kernel at -1.0 s, before power-on"]
    assert tl.order_problems({tl.INIT: 6.0, tl.SYSTEM_DOCKER: 3.0}) == [
        "system-docker at 3.0 s comes before init at 6.0 s"]


def _console_errors() -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location("scenario_boot", ROOT / "scenarios/test_boot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CONSOLE_ERRORS


@pytest.mark.parametrize("line", [
    "ros: service preload-user-images failed: exited 3",  # the reference image
    'time="2018-09-01T10:00:00Z" level=error msg="Failed to start: console : exit 1"',  # logrus
    "[FAILED] Failed to start Docker Application Container Engine.",  # systemd-style
    "ros: failed services: ntp",
])
def test_failed_service_pattern_is_not_one_image_wording(line: str) -> None:
    pattern = dict((what, p) for what, p in _console_errors())["a system service that failed"]
    assert re.search(pattern, line), line


def test_failed_service_pattern_ignores_healthy_lines() -> None:
    pattern = dict((what, p) for what, p in _console_errors())["a system service that failed"]
    for line in ("ros: service udev up", 'level=info msg="Starting service console"',
                 "RoslabOS v1.0 started"):
        assert not re.search(pattern, line), line
