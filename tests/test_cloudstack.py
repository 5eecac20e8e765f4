"""The CloudStack driver against a stand-in of the CloudStack API (tests/standins/
cloudstack_standin.py), reached through apache-libcloud with an API URL and signed
requests, as a user's cloud is."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins.base import machine_spec, start_run, terminate_while_waiting

from commands.cli import main
from drivers.cloudstack import CloudStackDriver
from drivers.rehearsal.cloudstack import CloudStackStandIn, serve
from lab import gc
from lab.errors import BootTimeout, ConfigError, ImageError

TEMPLATE = "cloudstack:rancheros-v1.5.8"


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudStackStandIn]:
    standin = serve(tmp_path, monkeypatch)
    monkeypatch.setattr(CloudStackDriver, "poll_interval", 0.05)
    yield standin
    standin.stop()


def test_launch_started_with_user_data_and_tags_then_destroyed(
        cloud: CloudStackStandIn, tmp_path: Path) -> None:
    """Stand-in CloudStack: deploy (started: libcloud's default would leave it stopped)
    with user data, tag it, wait for Running, destroy it."""
    driver = CloudStackDriver()
    driver.prepare(machine_spec(TEMPLATE, tmp_path, {"hostname": "cs"}))
    driver.start()
    try:
        (vm,) = cloud.vms.values()
        (deploy,) = cloud.deploys
        assert deploy["startvm"].lower() == "true" and deploy["templateid"] == "t-1"
        assert vm["userdata"] == "#cloud-config\nhostname: cs\n"
        tags = {t["key"]: t["value"] for t in vm["tags"]}
        assert tags["created-by"] == "roslab" and tags["roslab-run-id"] == gc.run_id()
        assert abs(int(tags["roslab-expires"]) - (time.time() + gc.DEFAULT_TTL)) < 60
        assert vm["state"] == "Running"
        assert driver.ssh_endpoint() == ("198.51.100.20", 22)
        assert driver.console_text() is None
    finally:
        driver.stop()
        driver.cleanup()
    assert cloud.live() == {}
    assert len(cloud.calls("GET", "/client/api")) > 5
    assert [r.query["command"] for r in cloud.requests].count(["destroyVirtualMachine"]) == 1


def test_an_unknown_template_is_named_and_nothing_is_made(
        cloud: CloudStackStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in CloudStack."""
    driver = CloudStackDriver()
    driver.prepare(machine_spec("cloudstack:no-such", tmp_path))
    with pytest.raises(ImageError, match="cloudstack has no template 'no-such' in zone zone-1"):
        driver.start()
    monkeypatch.setenv("ROSLAB_CLOUDSTACK_OFFERING", "Huge")
    with pytest.raises(ConfigError, match="no service offering 'Huge'.*Small Instance"):
        driver.start()
    assert cloud.vms == {}


def test_a_deploy_that_fails_after_the_cloud_made_it_leaves_nothing(
        cloud: CloudStackStandIn, tmp_path: Path) -> None:
    """Stand-in CloudStack: the VM is made but deployVirtualMachine answers 530; the
    driver finds it by name and destroys it."""
    cloud.deploy_error = "resource unavailable"
    driver = CloudStackDriver()
    driver.prepare(machine_spec(TEMPLATE, tmp_path))
    with pytest.raises(ConfigError, match="cloudstack refused the VM: .*resource unavailable"):
        driver.start()
    assert len(cloud.vms) == 1 and cloud.live() == {}


def test_a_vm_that_never_runs_times_out_and_is_destroyed(
        cloud: CloudStackStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in CloudStack: stuck in Starting; bounded wait, then destroyed."""
    cloud.hold_starting = True
    monkeypatch.setattr(CloudStackDriver, "boot_wait", 0.5)
    driver = CloudStackDriver()
    driver.prepare(machine_spec(TEMPLATE, tmp_path))
    with pytest.raises(BootTimeout, match="running with an address did not happen"):
        driver.start()
    assert cloud.vms and cloud.live() == {}


def test_sigterm_while_waiting_destroys_the_vm(cloud: CloudStackStandIn, tmp_path: Path) -> None:
    """Stand-in CloudStack: a run terminated while it waits leaves nothing running."""
    cloud.hold_starting = True
    assert terminate_while_waiting("cloudstack", TEMPLATE, tmp_path, lambda: cloud.vms) != 0
    assert cloud.live() == {}


def test_missing_credentials_and_sdk_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CLOUDSTACK_ENDPOINT", "CLOUDSTACK_KEY", "CLOUDSTACK_SECRET"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="CLOUDSTACK_ENDPOINT, CLOUDSTACK_KEY, "
                                          "CLOUDSTACK_SECRET not set"):
        CloudStackDriver().prepare(machine_spec(TEMPLATE, tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "libcloud", None)
    with pytest.raises(ConfigError, match="needs the Python package apache-libcloud"):
        CloudStackDriver().prepare(machine_spec(TEMPLATE, tmp_path))


def test_gc_finds_what_a_killed_run_left(cloud: CloudStackStandIn, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Stand-in CloudStack: a run SIGKILLed mid-test leaves a tagged VM; gc takes what is
    expired or older than asked, never an untagged VM."""
    run = start_run("cloudstack", TEMPLATE, tmp_path)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    assert len(cloud.live()) == 1
    theirs = cloud.seed_vm("web-1", "2020-01-01T00:00:00+0000")
    expired = cloud.seed_vm("old-run", "2020-01-01T00:00:00+0000", **{
        "created-by": "roslab", "roslab-run-id": "old", "roslab-expires": "1577840000"})

    assert main(["gc", "--platform", "cloudstack", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove cloudstack vm {expired} (run old: expired" in out
    assert "1 found on cloudstack" in out

    assert main(["gc", "--platform", "cloudstack", "--older-than", "0s"]) == 0
    assert "2 removed on cloudstack" in capsys.readouterr().out
    assert list(cloud.live()) == [theirs]
