"""A crash-looping system service fails the wait at once, naming the service, its exit
code and its log, instead of a bare timeout minutes later.

The user Docker is made to crash-loop the way a user can break it: a flag its dockerd
does not know in `rancher.docker.extra_args` (the `docker` system container restarts
forever, `restart: always`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from drivers.machines import make_machine
from lab.errors import ServiceFailed

pytestmark = pytest.mark.refimage
WAIT = 300.0  # the user-Docker wait scenarios use


def test_a_crash_looping_user_docker_is_named_with_its_log(tmp_path: Path) -> None:
    cc = {"rancher": {"docker": {"extra_args": ["--no-such-flag"]}}}
    with make_machine("qemu", None, "x86_64", cc, "configdrive", tmp_path, "tcg") as machine:
        machine.boot()
        began = time.monotonic()
        with pytest.raises(ServiceFailed) as failed:
            machine.wait_for_user_docker(WAIT)
        waited = time.monotonic() - began
    message = str(failed.value)
    assert "system service docker is crash-looping" in message
    assert "restarted" in message
    assert "no-such-flag" in message  # dockerd's own words, from `system-docker logs`
    assert "last milestone reached" in message and "full console log" in message
    # named as soon as it is seen, not when the wait runs out
    assert waited < WAIT / 2, f"took {waited:.0f} s of a {WAIT:.0f} s wait"
