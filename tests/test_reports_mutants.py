"""`roslab mutants`: a row per scenario case, so a parametrized case no mutant fails shows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from commands import mutants as command
from reports import mutants

DS = "scenarios/test_cloud_config.py::test_datasource_delivers_cloud_config"


def _run(folder: Path, cause_seen: bool = True) -> None:
    row = {"scenario": f"{DS}[nocloud]", "mutant": "m", "causes": ["x"], "outcome": "failed",
           "cause_seen": cause_seen, "message": "cloud-config from the nocloud datasource"}
    (folder / "m.json").write_text(json.dumps(
        {"mutant": "m", "breaks": ["b"], "boots": 1, "seconds": 40.0, "rows": [row]}))


def test_table_shows_the_cases_of_a_function_that_no_mutant_fails(tmp_path: Path) -> None:
    _run(tmp_path)
    text = mutants.table(mutants.load(tmp_path), [f"{DS}[nocloud]", f"{DS}[url]"])
    lines = {line.split()[0]: line for line in text.splitlines() if "::" in line}
    assert " m " in lines[f"{DS.removeprefix('scenarios/')}[nocloud]"]
    assert mutants.NO_MUTANT in lines[f"{DS.removeprefix('scenarios/')}[url]"]
    assert "1/2 scenario cases failed by one" in text


@pytest.mark.parametrize(("cases", "cause_seen", "code"), [
    ([f"{DS}[nocloud]"], True, 0),
    ([f"{DS}[nocloud]", f"{DS}[url]"], True, 1),  # a case with no mutant
    ([f"{DS}[nocloud]"], False, 1),  # a mutant whose cause was not seen
])
def test_exit_code_needs_every_case_failed_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    cases: list[str], cause_seen: bool, code: int,
) -> None:
    _run(tmp_path, cause_seen)
    monkeypatch.setattr(command, "scenario_cases", lambda: cases)
    assert command.cmd_mutants(argparse.Namespace(results=tmp_path)) == code
    assert DS.removeprefix("scenarios/") in capsys.readouterr().out
