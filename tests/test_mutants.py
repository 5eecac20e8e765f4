"""Every scenario can fail: each mutant (tests/mutants.py) is booted with the scenarios it
declares, and each of them must fail - a failure, not an error or a skip - with a message
that holds its named causes. A scenario case in scenarios/ (each parametrized case on its
own, `test_x[url]`) that no mutant fails makes test_every_scenario_has_a_mutant fail,
so new scenarios and new cases come with their mutant.

Each run writes results/mutants/<mutant>.json; `roslab mutants` prints the coverage table
(scenario case, mutant, cause seen) from them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mutants import MUTANTS, Mutant  # tests/ is on sys.path (rootdir conftest mode)

from reports.mutants import scenario_cases

pytestmark = pytest.mark.refimage
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "mutants"


def _pytest(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """node id -> (outcome, message and text) from a JUnit XML file."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        nodeid = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        outcome, text = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                text = f"{element.get('message', '')}\n{element.text or ''}"
                break
        out[nodeid] = (outcome, text)
    return out


def _message(text: str) -> str:
    """The failure's message: pytest's `E` lines up to the assertion's own detail."""
    lines = []
    for line in text.splitlines():
        if line.startswith("E "):
            if line[2:].lstrip().startswith("assert "):
                break
            lines.append(line[2:].strip())
        elif lines:
            break
    message = " ".join(lines) or (text.strip().splitlines() or [""])[0]
    return message[:300]


@pytest.mark.mutation  # 24 boots: nightly (see the nightly workflow's mutation job)
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_fails_its_scenarios_with_their_causes(tmp_path: Path, mutant: Mutant,
                                                     request: pytest.FixtureRequest) -> None:
    from mutants import make_image

    image = make_image(mutant, tmp_path / "image")
    junit = tmp_path / "junit.xml"
    artifacts = tmp_path / "results"
    platform = list(mutant.platform)
    if "libvirt" in platform:  # on the hardware the breakage matters on, a real libvirtd
        platform += ["--libvirt-uri", request.getfixturevalue("libvirt_uri")]
    started = time.monotonic()
    # no booting ahead: this run's xdist workers already keep the cores busy, and the
    # scenario run's admission does not see their machines
    result = _pytest(*[f.scenario for f in mutant.fails], "-q", *platform, "--no-boot-ahead",
                     "--accel", "tcg", "--image", str(image), "--roslab-artifacts",
                     str(artifacts), f"--junitxml={junit}", timeout=1800)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert junit.exists(), f"the scenario run made no JUnit report:\n{output[-3000:]}"
    outcomes = _outcomes(junit)
    rows, wrong = [], []
    for fails in mutant.fails:
        outcome, text = outcomes.get(fails.scenario, ("not run", ""))
        missing = [c for c in fails.causes if c not in text]
        ok = outcome == "failed" and not missing
        rows.append({"scenario": fails.scenario, "mutant": mutant.name,
                     "causes": list(fails.causes), "outcome": outcome, "cause_seen": ok,
                     "message": _message(text)})
        if not ok:
            wrong.append(f"{fails.scenario}: {outcome}"
                         + (f", message lacks {missing}" if missing else "")
                         + f"\n    {text.strip()[-1500:]}")
    # every machine a failed scenario used kept its console log in its own folder
    boots = len({p.parent.name for p in artifacts.glob("*/*/console.log")})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{mutant.name}.json").write_text(json.dumps(
        {"mutant": mutant.name, "breaks": [b.what for b in mutant.breakages],
         "boots": boots, "seconds": round(seconds, 1), "rows": rows}, indent=1))
    assert not wrong, (f"mutant {mutant.name} did not fail these scenarios with their causes:\n"
                       + "\n".join(wrong))


def test_every_scenario_has_a_mutant() -> None:
    """Collected the way pytest collects them, so a new scenario, or a new case of one (a
    parameter, a service the profile adds), without a mutant fails. Per case, not per
    function: one case's mutant proves nothing about another's check (its datasource)."""
    collected = set(scenario_cases())
    declared = {f.scenario for m in MUTANTS for f in m.fails}
    unknown = sorted(declared - collected)
    assert not unknown, f"mutants name scenario cases that do not exist: {unknown}"
    uncovered = sorted(collected - declared)
    assert not uncovered, (
        "scenario cases no mutant makes fail (add one to tests/mutants.py): "
        + ", ".join(uncovered)
    )
