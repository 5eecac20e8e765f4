"""Both Docker instances: separate sockets, daemons and data; neither sees the other's
containers; the user Docker works, and removing its containers or restarting it leaves
the OS running."""

from __future__ import annotations

import secrets

import pytest

from fixtures.guest import system_containers
from fixtures.profiles import Profile
from lab.machine import Machine

EXTRA_LABEL = "roslab.extra-args=reached"
cloud_config = {"rancher": {"docker": {"extra_args": ["--label", EXTRA_LABEL]}}}


def _info(machine: Machine, client: str, field: str) -> str:
    return machine.run(f"{client} info --format '{{{{.{field}}}}}'", check=True).output.strip()


@pytest.fixture
def local_image(profile: Profile) -> str:
    if profile.local_image is None:
        pytest.skip(f"profile {profile.name} names no image the user Docker has offline")
    return profile.local_image


def test_sockets_are_separate(machine: Machine) -> None:
    out = machine.run("ls -l /var/run/system-docker.sock /var/run/docker.sock", check=True).output
    assert "system-docker.sock" in out and "docker.sock" in out
    system_id = _info(machine, "sudo system-docker", "ID")
    user_id = _info(machine, "docker", "ID")
    assert system_id != user_id, (
        f"/var/run/docker.sock and /var/run/system-docker.sock reach the same daemon ({user_id})"
    )


def test_daemons_are_separate_processes(machine: Machine) -> None:
    assert "1" in machine.run("pidof system-dockerd").output.split(), (
        "the system Docker (system-dockerd) is not PID 1"
    )
    top = machine.run("sudo system-docker top docker -o pid,args", check=True).output
    assert "dockerd" in top, f"no dockerd runs in the `docker` system container:\n{top}"
    user_pids = machine.run("pidof dockerd").output.split()
    assert user_pids and "1" not in user_pids, f"user dockerd pids: {user_pids}"


def test_data_roots_are_separate(machine: Machine) -> None:
    fmt = "{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}"
    mounts = machine.run(
        f"sudo system-docker inspect --format '{fmt}' docker", check=True
    ).output.split()
    assert "/var/lib/user-docker:/var/lib/docker" in mounts, (
        f"the user Docker's data is not /var/lib/user-docker (mounts: {mounts})"
    )
    system_root = _info(machine, "sudo system-docker", "DockerRootDir")
    assert system_root != "/var/lib/user-docker", "both Dockers keep their data in one place"


def test_containers_are_invisible_across_the_two_dockers(
    machine: Machine, local_image: str
) -> None:
    name = f"probe-{secrets.token_hex(4)}"
    machine.run(f"docker run -d --name {name} {local_image} sleep 600", check=True)
    try:
        system_names = system_containers(machine)
        assert name not in system_names, f"user container {name} shows in the system Docker"
        user_names = machine.run("docker ps -a --format '{{.Names}}'", check=True).output.split()
        leaked = sorted(set(user_names) & set(system_names))
        assert not leaked, f"system containers show in the user Docker: {leaked}"
    finally:
        machine.run(f"docker rm -f {name}")


def test_user_docker_runs_a_container_from_a_local_image(
    machine: Machine, local_image: str
) -> None:
    out = machine.run(
        f"docker run --rm {local_image} sh -c 'echo ran-$((6*7))'", timeout=120
    ).output
    assert "ran-42" in out, f"`docker run {local_image}` did not run: {out.strip()}"


def test_published_port_is_reachable_in_the_guest(machine: Machine, local_image: str) -> None:
    name = f"web-{secrets.token_hex(4)}"
    word = secrets.token_hex(6)
    serve = f"mkdir -p /www && echo {word} > /www/index.html && httpd -f -p 80 -h /www"
    machine.run(
        f"docker run -d --name {name} -p 18080:80 {local_image} sh -c '{serve}'",
        check=True,
        timeout=120,
    )
    try:
        got = machine.wait_until(
            lambda: word in machine.run("wget -q -O - http://127.0.0.1:18080/index.html").output,
            timeout=30,
        )
        assert got, "a port published by the user Docker (18080 -> 80) is not reachable"
    finally:
        machine.run(f"docker rm -f {name}")


def test_extra_args_reach_the_user_daemon(machine: Machine) -> None:
    labels = _info(machine, "docker", "Labels")
    assert EXTRA_LABEL in labels, (
        f"rancher.docker.extra_args (--label {EXTRA_LABEL}) did not reach the user Docker: "
        f"its labels are {labels}"
    )


@pytest.mark.fresh_machine
def test_removing_every_user_container_leaves_the_os_running(
    machine: Machine, profile: Profile, local_image: str
) -> None:
    machine.run(f"docker run -d {local_image} sleep 600", check=True, timeout=120)
    machine.run("docker rm -f $(docker ps -qa)", timeout=120)
    states = system_containers(machine)
    stopped = {n: states.get(n) for n in profile.running if states.get(n) != "running"}
    assert not stopped, f"`docker rm -f $(docker ps -qa)` stopped system services: {stopped}"
    assert machine.run("docker version >/dev/null").ok, "the user Docker stopped answering"


@pytest.mark.fresh_machine
def test_restarting_the_docker_service_brings_the_user_docker_back(machine: Machine) -> None:
    before = _info(machine, "docker", "ID")
    machine.run("sudo system-docker restart docker", check=True, timeout=120)
    back = machine.wait_until(lambda: machine.run("docker version >/dev/null 2>&1").ok,
                              timeout=120)
    assert back, "the user Docker did not answer within 120 s of `system-docker restart docker`"
    assert _info(machine, "docker", "ID") == before, "a different daemon answers after restart"
