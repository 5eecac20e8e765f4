"""The run says what happened (issue 34): a one-shot that never finishes, a user Docker
that cannot load an image, a boot phase never reached, a refused SSH key and two looks at
a guest that is still changing are failures that name their cause. Fake machines here
stand in for the guest's answers only to check the lab's own judgement; what the guest
does is checked by the scenarios on a booted reference image."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import paramiko
import pytest

from fixtures.guest import two_looks, user_docker_image, wait_boot_complete
from fixtures.profiles import Profile
from lab import timeline as tl
from lab.errors import LabError
from lab.machine import ServiceState
from lab.result import Result
from lab.ssh import SSH, KeyPair

ROOT = Path(__file__).resolve().parent.parent
RUNNING = ServiceState("running", 0, 0, "no")
DONE = ServiceState("exited", 0, 0, "no")
UP = ServiceState("running", 0, 0, "always")


def _scenario(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"scenario_{name}",
                                                  ROOT / f"scenarios/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeMachine:
    """The Machine calls the helpers make, answered from scripts: `looks` are successive
    `service_states()` answers (the last one repeats), `runs` maps a command's start to
    its successive results (the last one repeats)."""

    def __init__(self, looks: list[dict[str, ServiceState]],
                 runs: dict[str, list[Result]] | None = None) -> None:
        self.looks = list(looks)
        self.runs = {k: list(v) for k, v in (runs or {}).items()}
        self.info: dict[str, Any] = {}
        self.capabilities = SimpleNamespace(ssh=True, console=True, slowdown=1.0)
        self.timeline = tl.Timeline()
        self.console_log = Path("/nonexistent/console.log")

    def scaled(self, seconds: float) -> float:
        return seconds

    def service_states(self, check: bool = True) -> dict[str, ServiceState]:
        return self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]

    def wait_until(self, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
        value = check()  # Machine.wait_until without its clock: a few tries
        for _ in range(4):
            if value:
                break
            value = check()
        return value

    def wait_for_user_docker(self, timeout: float = 180) -> None:
        self.timeline.mark(tl.USER_DOCKER)

    def run(self, cmd: str, timeout: float = 60, check: bool = False) -> Result:
        for start, results in self.runs.items():
            if cmd.startswith(start):
                result = results.pop(0) if len(results) > 1 else results[0]
                return result.check() if check else result
        raise AssertionError(f"unexpected command {cmd!r}")


def _profile(local_image: str | None = "busybox:latest") -> Profile:
    return Profile(name="test", os_name="RoslabOS", running=["udev"],
                   completed=["udev-cold"], local_image=local_image,
                   system_image="roslab/os-base:v1", syslog_file="/var/log/syslog",
                   cloud_init_log="/var/log/cloud-init.log", datasources=[])


# 1. a one-shot that never finishes -------------------------------------------------------

def test_one_shot_that_never_finishes_is_an_error_naming_it_and_its_log() -> None:
    machine = FakeMachine([{"udev": UP, "udev-cold": RUNNING}], runs={
        "sudo system-docker logs": [Result("logs", 0, "udevadm settle: waiting\nstill waiting")]})
    with pytest.raises(LabError) as raised:
        wait_boot_complete(machine, _profile())  # type: ignore[arg-type]
    text = str(raised.value)
    assert "udev-cold" in text and "still running" in text, text
    assert "still waiting" in text and "system-docker logs udev-cold" in text, text
    assert not machine.info.get("boot_complete")


def test_one_shot_that_finishes_completes_the_boot() -> None:
    machine = FakeMachine([{"udev": UP, "udev-cold": RUNNING}, {"udev": UP, "udev-cold": DONE}])
    assert wait_boot_complete(machine, _profile()) is machine  # type: ignore[arg-type]
    assert machine.info["boot_complete"] is True


# 2. a user Docker that cannot load an image ----------------------------------------------

def test_user_docker_that_cannot_load_the_image_fails_with_dockers_words() -> None:
    error = "Error response from daemon: write /var/lib/docker/tmp: no space left on device"
    machine = FakeMachine([{}], runs={"sudo system-docker save": [Result("save", 1, error)]})
    with pytest.raises(LabError) as raised:
        user_docker_image(machine, _profile(local_image=None))  # type: ignore[arg-type]
    text = str(raised.value)
    assert error in text and "roslab/os-base:v1" in text and "user Docker" in text, text


def test_user_docker_image_copied_once() -> None:
    machine = FakeMachine([{}], runs={"sudo system-docker save": [Result("save", 0, "Loaded")]})
    profile = _profile(local_image=None)
    assert user_docker_image(machine, profile) == "roslab/os-base:v1"  # type: ignore[arg-type]
    machine.runs.clear()  # a second copy would be an unexpected command
    assert user_docker_image(machine, profile) == "roslab/os-base:v1"  # type: ignore[arg-type]


# 3. a boot phase never reached -----------------------------------------------------------

def _booted(marks: dict[str, float], ago: float) -> SimpleNamespace:
    """A machine whose boot began `ago` s ago and reached `marks`."""
    timeline = tl.Timeline()
    timeline.t0 -= ago
    timeline.marks.update(marks)
    return SimpleNamespace(timeline=timeline, capabilities=SimpleNamespace(ssh=True,
                                                                            console=True))


BUDGETS = {"kernel": 45, "init": 30, "system-docker": 20, "services": 60, "ssh": 30,
           "user-docker": 40, "total": 150}


def test_stalled_boot_is_over_budget_naming_the_phase_never_reached() -> None:
    stalled = _booted({tl.KERNEL: 1.0, tl.INIT: 5.0, tl.SYSTEM_DOCKER: 9.0}, ago=400)
    with pytest.raises(AssertionError) as raised:
        _scenario("test_boot").test_each_boot_phase_within_budget(stalled, BUDGETS)
    text = str(raised.value)
    assert "phase services never reached; last milestone system-docker" in text, text
    assert "phase user-docker never reached" in text, text


def test_complete_boot_within_budget_passes() -> None:
    marks = {tl.KERNEL: 1.0, tl.INIT: 5.0, tl.SYSTEM_DOCKER: 9.0, tl.SERVICES: 26.0,
             tl.SSH: 29.0, tl.USER_DOCKER: 33.0}
    _scenario("test_boot").test_each_boot_phase_within_budget(_booted(marks, 60), BUDGETS)


# 4. a refused SSH key --------------------------------------------------------------------

class _RefuseEveryKey(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_FAILED


@pytest.fixture
def refusing_sshd() -> Iterator[tuple[str, int]]:
    """A real SSH server (paramiko's) on localhost that refuses every key."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    host_key = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") \
        else paramiko.RSAKey.generate(2048)
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            transport.start_server(server=_RefuseEveryKey())
            transports.append(transport)

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()
    listener.close()
    for transport in transports:
        transport.close()


def test_refused_key_is_a_clear_error_and_no_ssh_milestone(
        refusing_sshd: tuple[str, int], tmp_path: Path) -> None:
    timeline = tl.Timeline()
    ssh = SSH(*refusing_sshd, "rancher", KeyPair.generate(tmp_path / "key"), timeline)
    with pytest.raises(LabError) as raised:
        ssh.connect(timeout=3)
    assert tl.SSH not in timeline.marks, f"SSH marked reachable: {raised.value}"
    assert "refused the lab's key" in str(raised.value), str(raised.value)


# 5. two views of the same state ----------------------------------------------------------

def test_two_looks_are_taken_again_while_a_one_shot_finishes() -> None:
    machine = FakeMachine([{"udev": UP, "udev-cold": RUNNING}, {"udev": UP, "udev-cold": DONE},
                           {"udev": UP, "udev-cold": DONE}])
    first, second = two_looks(machine, gap=0)  # type: ignore[arg-type]
    assert str(first["udev-cold"]) == str(second["udev-cold"]) == "exited(0)"


def test_two_looks_still_show_a_service_that_restarts() -> None:
    restarted = ServiceState("running", 0, 1, "always")
    machine = FakeMachine([{"udev": UP, "udev-cold": DONE},
                           {"udev": restarted, "udev-cold": DONE}])
    first, second = two_looks(machine, gap=0)  # type: ignore[arg-type]
    assert (first["udev"].restarts, second["udev"].restarts) == (0, 1)


PS = ("Name       Command   State\n"
      "udev       udevd     Up 2 minutes\n"
      "udev-cold  udevadm   {cold}\n")


def test_ros_service_ps_and_system_docker_compared_once_both_settle() -> None:
    machine = FakeMachine([{"udev": UP, "udev-cold": DONE}], runs={"sudo ros service ps": [
        Result("ps", 0, PS.format(cold="Up 3 seconds")),
        Result("ps", 0, PS.format(cold="Exited (0) 1 second ago"))]})
    _scenario("test_services").test_ros_service_ps_agrees_with_system_docker(
        machine, _profile())


def test_ros_service_ps_that_never_agrees_fails_naming_the_wait() -> None:
    machine = FakeMachine([{"udev": UP, "udev-cold": DONE}], runs={"sudo ros service ps": [
        Result("ps", 0, PS.format(cold="Up 3 seconds"))]})
    with pytest.raises(AssertionError) as raised:
        _scenario("test_services").test_ros_service_ps_agrees_with_system_docker(
            machine, _profile())
    text = str(raised.value)
    assert "`ros service ps` says udev-cold is running, the system Docker says exited(0)" \
        in text, text
    assert "did not agree within" in text, text
