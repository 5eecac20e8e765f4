"""`-n 2 --dist loadgroup` keeps an xdist_group on one worker under pytest 9 (the plugin
puts the group in the test id where pytest 9 keeps it; xdist 3.8 alone does not)."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.profiles import PROFILES, Profile

ROOT = Path(__file__).resolve().parents[1]

GROUPED = """
import pytest
pytestmark = pytest.mark.xdist_group("one-machine")

@pytest.mark.parametrize("i", range(6))
def test_shares_a_machine(i):
    pass

def test_alone_too():
    pass
"""

OTHER = """
def test_elsewhere():
    pass
"""


def test_a_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_other.py").write_text(OTHER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",  # the plugin: an entry point
         "-n", "2", "--dist", "loadgroup", "-v", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers = {m.group(2): m.group(1)
               for m in re.finditer(r"\[(gw\d)\] .*PASSED (\S+)", proc.stdout)}
    grouped = {worker for test, worker in workers.items() if "test_grouped.py" in test}
    assert len([t for t in workers if "test_grouped.py" in t]) == 7, proc.stdout
    assert len(grouped) == 1, f"the group ran on {sorted(grouped)}:\n{proc.stdout}"


def _machine_sources(path: Path) -> list[object]:
    """What a scenario module's machines are booted with, as its import makes it: module
    data (cloud-configs), cloud_config markers and `cloud_config_for(profile)`."""
    found: list[object] = []
    ns = runpy.run_path(str(path))
    for name, value in sorted(ns.items()):
        if isinstance(value, dict | list | tuple | str | bytes) and not name.startswith("__"):
            found.append((name, value))
        for mark in getattr(value, "pytestmark", []):
            if mark.name == "cloud_config":
                found.append((name, mark.args, mark.kwargs))
    if callable(make := ns.get("cloud_config_for")):
        found.append(make(Profile.load(PROFILES / "reference.yml", "x86_64", "v1")))
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("test_*.py")),
                         ids=lambda p: p.name)
def test_a_scenario_machine_is_the_same_whenever_it_is_collected(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each xdist worker collects on its own: a cloud-config holding the time (gzip's
    header stamps it) gave the workers different machine groups, and xdist refused the run."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    first = _machine_sources(path)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    assert _machine_sources(path) == first
