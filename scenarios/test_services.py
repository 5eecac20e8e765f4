"""Service containers: the system services run under the system Docker, come back when
killed, and do their jobs (syslog stores, network configures eth0)."""

from __future__ import annotations

import re
import secrets

import pytest

from fixtures.guest import system_containers, two_looks
from fixtures.profiles import Profile
from lab.machine import Machine, ServiceState

CUSTOM = "roslab-custom"


def cloud_config_for(profile: Profile) -> dict:
    """Every test here shares one machine, booted with a custom service declared; its
    image is one the system Docker has, which the profile names (it is versioned)."""
    return {
        "rancher": {
            "services": {
                CUSTOM: {
                    "image": profile.system_image,
                    "command": "sleep 86400",
                    "restart": "always",
                    "net": "host",
                    "labels": {"io.rancher.os.scope": "system"},
                }
            }
        }
    }


def _stays_up(machine: Machine, name: str) -> str | None:
    """Why system container `name` does not stay up (None when it does): it must be
    running, and 3 s later still running with the same restart count. Every container is
    in both looks, which are taken once per machine: each service's test reads its own."""
    if "service_looks" not in machine.info:
        machine.info["service_looks"] = two_looks(machine)
    first, second = (look.get(name) for look in machine.info["service_looks"])
    if (first and second and str(first) == str(second) == "running"
            and first.restarts == second.restarts):
        return None

    def said(state: ServiceState | None) -> str:
        return f"{state} after {state.restarts} restarts" if state else "absent"

    return f"it was {said(first)}, then 3 s later {said(second)}"


def test_long_running_service_runs_under_system_docker(
    machine: Machine, running_service: str
) -> None:
    why = _stays_up(machine, running_service)
    assert why is None, (
        f"system service {running_service!r} does not stay up under the system Docker: {why}"
    )


def test_one_shot_service_completed(machine: Machine, completed_service: str) -> None:
    states = system_containers(machine)
    assert states.get(completed_service) == "exited(0)", (
        f"one-shot service {completed_service!r} is {states.get(completed_service, 'absent')}, "
        f"expected exited(0); logs:\n"
        + machine.run(f"sudo system-docker logs --tail 20 {completed_service}").output
    )


def _ps_state(status: str) -> str:
    """A Docker status as `ros service ps` shows it ("Up 3 minutes", "Exited (0) 2 minutes
    ago") in the form system_containers gives ("running", "exited(0)")."""
    if status.startswith("Up "):
        return "running"
    exited = re.match(r"Exited \((-?\d+)\)", status)
    return f"exited({exited.group(1)})" if exited else status.split()[0].lower()


def _ps_disagrees(machine: Machine, names: list[str]) -> tuple[list[str], str]:
    """Where `ros service ps` and the system Docker, asked one after the other, differ
    about `names`; and what `ros service ps` printed."""
    out = machine.run("sudo ros service ps", check=True).output
    listed = {}
    for line in out.splitlines()[1:]:  # under the Name Command State Ports header
        status = re.search(r"\s(Up \S.*|Exited \(-?\d+\).*|Restarting\b.*|Created\b.*)", line)
        if line.split() and status:
            listed[line.split()[0]] = _ps_state(status.group(1).strip())
    states = system_containers(machine)
    return [f"`ros service ps` does not list {name}" if name not in listed else
            f"`ros service ps` says {name} is {listed[name]}, "
            f"the system Docker says {states.get(name)}"
            for name in names if listed.get(name) != states.get(name)], out


AGREE_TIMEOUT = 30  # s: a one-shot that finishes between the two looks settles in one more


def test_ros_service_ps_agrees_with_system_docker(machine: Machine, profile: Profile) -> None:
    # the two views are taken one after the other, so a one-shot that finishes between
    # them makes them differ for a moment: they must agree on one state, within a limit
    seen: dict[str, tuple[list[str], str]] = {}

    def agree() -> bool:
        seen["last"] = _ps_disagrees(machine, profile.running + profile.completed)
        return not seen["last"][0]

    agreed = machine.wait_until(agree, timeout=AGREE_TIMEOUT, interval=2)
    problems, out = seen["last"]
    assert agreed, (
        f"`ros service ps` and the system Docker did not agree within "
        f"{machine.scaled(AGREE_TIMEOUT):.0f} s: " + "; ".join(problems)
        + f"\n`ros service ps` printed:\n{out}")


def test_killed_service_comes_back(machine: Machine) -> None:
    def pid() -> str:
        return machine.run(
            "sudo system-docker inspect --format '{{.State.Pid}}' syslog", check=True
        ).output.strip()

    before = pid()
    assert before not in ("", "0"), "syslog is not running, so it cannot be killed"
    machine.run(f"sudo kill -9 {before}", check=True)
    # restart: always brings it back in about a second; 30 s is for a loaded host
    after = machine.wait_until(lambda: (p := pid()) not in ("0", before) and p, timeout=30)
    assert after, (f"syslog (pid {before}) was killed and did not come back within "
                   f"{machine.scaled(30):.0f} s")


def test_syslog_stores_what_logger_sends(machine: Machine, profile: Profile) -> None:
    word = f"roslab-{secrets.token_hex(6)}"

    def delivered() -> bool:
        # sent again each try: a syslog daemon just restarted (the scenario above kills
        # it) drops what reaches /dev/log before it listens, as any syslog would
        machine.run(f"logger -t roslab-scenario {word}", check=True)
        return machine.run(f"sudo grep -q {word} {profile.syslog_file}").ok

    # a delivered line is in the file within a second; 30 s is for a loaded host
    assert machine.wait_until(delivered, timeout=30, interval=2), (
        f"logger's message {word} never reached {profile.syslog_file} within "
        f"{machine.scaled(30):.0f} s"
    )


@pytest.mark.needs("network")
def test_network_service_gave_eth0_an_address(machine: Machine) -> None:
    out = machine.run("ip -4 -o addr show dev eth0").output
    assert " inet " in out, f"eth0 has no IPv4 address: {out.strip()!r}"


def test_custom_service_runs_under_system_docker_not_user_docker(machine: Machine) -> None:
    why = _stays_up(machine, CUSTOM)
    assert why is None, (
        f"the rancher.services entry {CUSTOM!r} does not stay up under the system Docker: "
        f"{why}; all: {system_containers(machine)}"
    )
    user = machine.run("docker ps -a --format '{{.Names}}'", check=True).output.split()
    assert CUSTOM not in user, f"{CUSTOM} shows up in the user Docker too: {user}"
