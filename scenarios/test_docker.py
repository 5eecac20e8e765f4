"""Both Docker instances: separate sockets, daemons and data; neither sees the other's
containers; the user Docker works, and removing its containers or restarting it leaves
the OS running."""

from __future__ import annotations

import secrets

import pytest

from fixtures.guest import system_containers, user_docker_back, user_docker_image
from fixtures.profiles import Profile
from lab.machine import Machine

EXTRA_LABEL = "roslab.extra-args=reached"
cloud_config = {"rancher": {"docker": {"extra_args": ["--label", EXTRA_LABEL]}}}


def _info(machine: Machine, client: str, field: str) -> str:
    return machine.run(f"{client} info --format '{{{{.{field}}}}}'", check=True).output.strip()


USER_DOCKER_DATA = "/var/lib/user-docker"  # the image contract: where its data lives on the host


# each test asks for the user image itself (user_docker_image), not through a fixture: an
# image the user Docker cannot load is then that test's failure, not an error in its setup


def _socket(machine: Machine, path: str) -> str:
    """`device:inode` of the socket at `path` (symlinks followed), or why it is not one."""
    out = machine.run(f"test -S {path} && stat -L -c '%d:%i' {path}").output.strip()
    return out or f"{path} is not a socket"


def test_sockets_are_separate(machine: Machine) -> None:
    system_sock = _socket(machine, "/var/run/system-docker.sock")
    user_sock = _socket(machine, "/var/run/docker.sock")
    assert "not a socket" not in system_sock + user_sock, f"{system_sock}; {user_sock}"
    assert system_sock != user_sock, (
        f"/var/run/docker.sock and /var/run/system-docker.sock are the same socket "
        f"(inode {user_sock})"
    )
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


def _host_path(machine: Machine, path: str) -> str:
    """Where `path` inside the `docker` system container is on the host (its bind mounts)."""
    fmt = "{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}"
    mounts = machine.run(
        f"sudo system-docker inspect --format '{fmt}' docker", check=True
    ).output.split()
    best = ("", "")
    for mount in mounts:
        source, _, dest = mount.partition(":")
        if (path == dest or path.startswith(dest.rstrip("/") + "/")) and len(dest) > len(best[1]):
            best = (source, dest)
    if not best[1]:
        return f"{path} in the docker container's own filesystem (no bind mount)"
    return best[0] + path[len(best[1]):]


def test_data_roots_are_separate(machine: Machine) -> None:
    user_root = _info(machine, "docker", "DockerRootDir")
    on_host = _host_path(machine, user_root)
    assert on_host == USER_DOCKER_DATA, (
        f"the user Docker's data root is {user_root}, which is {on_host} on the host; "
        f"expected {USER_DOCKER_DATA}"
    )
    # seen from the `docker` container, where that host folder is mounted: the console's
    # own container does not mount it
    assert machine.run(f"sudo system-docker exec docker test -d {user_root}/image").ok, (
        f"{USER_DOCKER_DATA} on the host holds no Docker data (no image/ folder)"
    )
    system_root = _info(machine, "sudo system-docker", "DockerRootDir")
    assert system_root != on_host, f"both Dockers keep their data in {system_root}"


def test_containers_are_invisible_across_the_two_dockers(
    machine: Machine, profile: Profile
) -> None:
    local_image = user_docker_image(machine, profile)
    name = f"probe-{secrets.token_hex(4)}"
    machine.run(f"docker run -d --pull never --name {name} {local_image} sleep 600", check=True)
    try:
        system_names = system_containers(machine)
        assert name not in system_names, f"user container {name} shows in the system Docker"
        user_names = machine.run("docker ps -a --format '{{.Names}}'", check=True).output.split()
        leaked = sorted(set(user_names) & set(system_names))
        assert not leaked, f"system containers show in the user Docker: {leaked}"
    finally:
        machine.run(f"docker rm -f {name}")


def test_user_docker_runs_a_container_from_a_local_image(
    machine: Machine, profile: Profile
) -> None:
    local_image = user_docker_image(machine, profile)
    out = machine.run(
        f"docker run --rm --pull never {local_image} sh -c 'echo ran-$((6*7))' 2>&1",
        timeout=120
    ).output
    assert "ran-42" in out, f"`docker run {local_image}` did not run: {out.strip()}"


def test_published_port_is_reachable_in_the_guest(machine: Machine, profile: Profile) -> None:
    local_image = user_docker_image(machine, profile)
    name = f"web-{secrets.token_hex(4)}"
    word = secrets.token_hex(6)
    serve = f"mkdir -p /www && echo {word} > /www/index.html && httpd -f -p 80 -h /www"
    machine.run(
        f"docker run -d --pull never --name {name} -p 18080:80 {local_image} sh -c '{serve}'",
        check=True,
        timeout=120,
    )
    try:
        # the server first answers in its own container; then the published port must
        # reach it at once (a few seconds' grace), not after another long wait
        serving = machine.wait_until(
            lambda: word in machine.run(
                f"docker exec {name} wget -q -O - http://127.0.0.1:80/index.html").output,
            timeout=30,
        )
        assert serving, (f"the web server in container {name} did not answer on its own "
                         f"port 80 within {machine.scaled(30):.0f} s")
        got = machine.wait_until(
            lambda: word in machine.run(
                # bounded by timeout(1): the console's busybox wget crashes on -T
                "timeout 10 wget -q -O - http://127.0.0.1:18080/index.html").output,
            timeout=5)
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
    machine: Machine, profile: Profile
) -> None:
    local_image = user_docker_image(machine, profile)
    machine.run(f"docker run -d --pull never {local_image} sleep 600", check=True, timeout=120)
    machine.run("docker rm -f $(docker ps -qa)", timeout=120)
    left = machine.run("docker ps -qa", check=True).output.split()
    assert not left, f"`docker rm -f $(docker ps -qa)` left user containers: {left}"
    states = system_containers(machine)
    stopped = {n: states.get(n) for n in profile.running if states.get(n) != "running"}
    assert not stopped, f"`docker rm -f $(docker ps -qa)` stopped system services: {stopped}"
    assert machine.run("docker version >/dev/null").ok, "the user Docker stopped answering"


def _user_daemon(machine: Machine) -> str:
    """What changes when the user Docker restarts: its container's start time and PID."""
    fmt = "{{.State.StartedAt}} pid {{.State.Pid}}"
    return machine.run(f"sudo system-docker inspect --format '{fmt}' docker",
                       check=True).output.strip()


@pytest.mark.fresh_machine
def test_restarting_the_docker_service_brings_the_user_docker_back(machine: Machine) -> None:
    before = _user_daemon(machine)
    daemon_id = _info(machine, "docker", "ID")
    machine.run("sudo system-docker restart docker", check=True, timeout=120)
    after = _user_daemon(machine)
    assert after != before, (
        f"`system-docker restart docker` did not restart the user Docker: its container "
        f"still has start time and pid {before}"
    )
    not_back = user_docker_back(machine, timeout=120)
    assert not_back is None, f"after `system-docker restart docker`: {not_back}"
    # the ID is kept in the data root: the same one proves the restarted daemon kept its data
    assert _info(machine, "docker", "ID") == daemon_id, "a different daemon answers after restart"
