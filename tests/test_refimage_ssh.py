"""SSH and the power button against the reference image (one boot for the module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.machines import make_machine
from lab import timeline as tl
from lab.machine import Machine
from lab.ssh import KeyPair

pytestmark = [pytest.mark.refimage, pytest.mark.xdist_group("refimage-ssh")]


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    work = tmp_path_factory.mktemp("ref")
    key = KeyPair.generate(work / "key")
    machine = make_machine("qemu", None, "x86_64", {"hostname": "roslab-ssh"}, "configdrive",
                           work, "tcg", ssh_key=key)
    with machine:
        machine.boot()
        yield machine


def test_ssh_runs_commands_with_the_lab_key(booted: Machine) -> None:
    result = booted.ssh().run("id -un; hostname; echo err >&2; exit 3", timeout=60)
    assert (result.rc, result.stdout.split(), result.stderr.strip()) == (
        3, ["rancher", "roslab-ssh"], "err")
    assert tl.SSH in booted.timeline.marks


def test_console_and_ssh_agree(booted: Machine) -> None:
    assert booted.run("hostname", check=True).output == booted.ssh().run("hostname").stdout.strip()
    assert booted.info["image_version"] is not None
    assert Path(booted.info["image"]).is_dir()


def test_power_button_stops_the_guest_and_every_service_on_sigterm(booted: Machine) -> None:
    booted.wait_for_user_docker()  # every service is up, so every one is stopped
    booted.power_button()
    assert booted.wait_stopped(120), "the guest ignored the ACPI power button"
    log = booted.console_log.read_text(errors="replace")
    said = log[log.rfind("ros: power button pressed"):]
    assert "ros: system halted" in said, f"no clean halt; the console said: {said[-800:]}"
    # a service that ignores SIGTERM holds the shutdown for its whole stop timeout
    assert "was killed" not in said, said
