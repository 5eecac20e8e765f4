"""Images pulled from a registry, as RancherOS users pull them: `docker pull busybox` and
`system-docker pull busybox`, then a container of each; an image nobody has fails at once
with the registry's "not found", never a hang; /etc/rc.local pulls and starts a container.

Where the platform's machines reach the lab's host, the lab serves the registry and both
of the guest's Dockers use it as their mirror (`lab_registry`: rancher.docker.registry_mirror
and rancher.system_docker.registry_mirror in the cloud-config); the pulled image must then
be the one the lab's registry serves, digest for digest. A cloud's or a box's machine pulls
from Docker Hub over its own network."""

from __future__ import annotations

import re
import time

import pytest

from lab.machine import Machine
from lab.registry import Registry

pytestmark = [pytest.mark.lab_registry, pytest.mark.needs("network")]

IMAGE = "busybox"
ABSENT = "roslab-no-such-image"  # nobody serves it
NOT_FOUND_SECONDS = 60  # far above a refusal (under a second here): only a hang exceeds it
RC_LOCAL_CONTAINER = "roslab-rc-pulled"
RC_LOCAL_LOG = "/var/log/roslab-rc-pull.log"
RC_LOCAL = f"""#!/bin/sh
wait-for-docker
docker pull {IMAGE} >{RC_LOCAL_LOG} 2>&1 &&
  docker run -d --name {RC_LOCAL_CONTAINER} {IMAGE} sleep 86400 >>{RC_LOCAL_LOG} 2>&1
"""
cloud_config = {"write_files": [{"path": "/etc/rc.local", "content": RC_LOCAL,
                                 "permissions": "0755"}]}


def _served_digest(lab_registry: Registry | None) -> str | None:
    """The digest the lab's registry serves busybox:latest by (None: no lab registry)."""
    if lab_registry is None:
        return None
    got = lab_registry.manifest(f"{IMAGE}:latest")
    assert got is not None, f"the lab's registry at {lab_registry.url} does not serve {IMAGE}"
    return got[0]


def _pull_and_run(machine: Machine, client: str, lab_registry: Registry | None) -> None:
    started = time.monotonic()
    pull = machine.run(f"{client} pull -q {IMAGE} 2>&1", timeout=300)
    took = time.monotonic() - started
    assert pull.ok, f"`{client} pull {IMAGE}` exited {pull.rc} after {took:.1f} s: " \
                    f"{pull.output.strip()[-300:]!r}"
    digests = machine.run(f"{client} image inspect --format "
                          f"'{{{{join .RepoDigests \" \"}}}}' {IMAGE}").output.split()
    served = _served_digest(lab_registry)
    if served is not None:
        assert f"{IMAGE}@{served}" in digests, (
            f"`{client} pull {IMAGE}` did not take the lab's registry's image "
            f"({IMAGE}@{served}): the pulled image has {digests}")
    mark = f"pulled-{client.split()[-1]}-ran"
    run = machine.run(f"{client} run --rm {IMAGE} echo {mark} 2>&1", timeout=120)
    assert run.output.strip().endswith(mark), (
        f"`{client} run --rm {IMAGE} echo {mark}` exited {run.rc}: "
        f"{run.output.strip()[-300:]!r}")


def test_user_docker_pulls_and_runs_busybox(machine: Machine,
                                            lab_registry: Registry | None) -> None:
    _pull_and_run(machine, "docker", lab_registry)


def test_system_docker_pulls_and_runs_busybox(machine: Machine,
                                              lab_registry: Registry | None) -> None:
    _pull_and_run(machine, "sudo system-docker", lab_registry)


def test_an_image_nobody_has_fails_fast_with_not_found(machine: Machine) -> None:
    started = time.monotonic()
    pull = machine.run(f"docker pull {ABSENT} 2>&1", timeout=NOT_FOUND_SECONDS + 30)
    took = time.monotonic() - started
    assert not pull.ok and took < NOT_FOUND_SECONDS, (
        f"`docker pull {ABSENT}` exited {pull.rc} after {took:.1f} s (a refusal is expected "
        f"within {NOT_FOUND_SECONDS} s): {pull.output.strip()[-300:]!r}")
    mirror = machine.run("sudo ros config get rancher.docker.registry_mirror").output.strip()
    if not mirror.startswith("http"):  # Docker Hub answers itself
        assert re.search(r"not found|does not exist|manifest unknown", pull.output), \
            f"`docker pull {ABSENT}` failed with {pull.output.strip()[-300:]!r}"
        return
    # the mirror's refusal comes first; Docker then tries Docker Hub, whose error (here: no
    # route to it) is the one it prints, so the mirror's is read in the user Docker's log
    log = machine.run("sudo system-docker logs docker 2>&1 | "
                      "grep -i 'next endpoint' | tail -n 3").output
    assert "manifest unknown" in log, (
        f"the user Docker never heard the registry mirror {mirror} say 'manifest unknown' "
        f"for {ABSENT}: its log's fallbacks read {log.strip()[-300:]!r}; "
        f"the pull said {pull.output.strip()[-200:]!r}")
    host = mirror.split("://", 1)[1].rstrip("/")
    direct = machine.run(f"docker pull {host}/{ABSENT} 2>&1", timeout=NOT_FOUND_SECONDS)
    assert not direct.ok and "manifest unknown" in direct.output, (
        f"`docker pull {host}/{ABSENT}` exited {direct.rc}: {direct.output.strip()[-300:]!r}")


def test_rc_local_pulls_and_starts_a_container(machine: Machine) -> None:
    def running() -> str:
        return machine.run(f"docker inspect --format '{{{{.State.Status}}}}' "
                           f"{RC_LOCAL_CONTAINER} 2>&1").output.strip()

    state = machine.wait_until(lambda: running() == "running" and "running", timeout=180,
                               interval=3) or running()
    log = machine.run(f"sudo cat {RC_LOCAL_LOG}").output.strip()
    assert state == "running", (
        f"/etc/rc.local did not pull {IMAGE} and start {RC_LOCAL_CONTAINER}: the user Docker "
        f"says {state[-120:]!r}; {RC_LOCAL_LOG}: {log[-300:]!r}")
