"""`roslab soak`: boot, check the image contract and stop, N times; how often does the
lab itself fail?

Each boot is a bench record (kind "soak") in the history, so soak boots feed the same
reports and statistics as bench boots. A failed boot says whose failure it was
(`LabError.blame`): the guest's (the OS broke its contract: its bug), the input's, or
the lab's (an emulator that would not start, a bug in the harness: a flake to fix).
The flake rate is the lab's failures over all boots.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.table import Table

from fixtures.profiles import Profile, profile_path
from lab.errors import CommandError
from reports.bench import BenchOptions, BenchResult, run_bench
from reports.history import Record


class ContractBroken(CommandError):
    """A booted guest that does not do what the image contract says."""


def contract_check(machine: Any) -> None:
    """The image contract, briefly (the scenarios check it in depth): every long-running
    system service of the image's profile runs, the user Docker answers and is not the
    system Docker, and SSH (where the machine has a network) runs a command."""
    from fixtures.guest import system_containers

    profile = Profile.load(profile_path(None, machine.image.manifest), machine.arch,
                           machine.image.version)
    states = system_containers(machine)
    down = {name: states.get(name, "missing") for name in profile.running
            if not states.get(name, "").startswith("running")}
    if down:
        raise ContractBroken(f"system services not running: {down}")
    ids = machine.run("docker info -f '{{.ID}}'; sudo system-docker info -f '{{.ID}}'",
                      check=True).output.split()
    if len(ids) != 2 or ids[0] == ids[1]:
        raise ContractBroken(f"the user and system Docker are not two daemons: IDs {ids}")
    if machine.capabilities.ssh:
        machine.ssh().run("true", check=True)


def run_soak(opts: BenchOptions, console: Console | None = None) -> BenchResult:
    console = console or Console(stderr=True)
    result = run_bench(replace(opts, check=contract_check, kind="soak"), console)
    print_outcome(result.records, console)
    return result


def lab_failures(records: list[Record]) -> list[Record]:
    return [r for r in records if not r.get("ok") and r.get("blame", "lab") == "lab"]


def print_outcome(records: list[Record], console: Console) -> None:
    blame = Counter("passed" if r.get("ok") else r.get("blame", "lab") for r in records)
    table = Table(title="soak outcome")
    for col in ("boots", "passed", "guest failures", "input errors", "lab failures",
                "lab flake rate"):
        table.add_column(col, justify="right")
    n = len(records)
    lab = blame.get("lab", 0)
    table.add_row(str(n), str(blame.get("passed", 0)), str(blame.get("guest", 0)),
                  str(blame.get("input", 0)), str(lab), f"{100 * lab / n:.1f} %" if n else "-")
    console.print(table)
    for r in records:
        if not r.get("ok"):
            console.print(f"boot {r['boot']} ({r.get('blame', 'lab')}): {r.get('error')}\n"
                          f"    evidence: {r.get('console_log')}")
