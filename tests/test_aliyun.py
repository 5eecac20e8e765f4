"""The Aliyun driver against a stand-in of the ECS API (tests/standins/aliyun_standin.py),
reached through apache-libcloud's signed ECS connection with an AccessKey pair and an
endpoint, as a user's account is."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins.base import machine_spec, start_run, terminate_while_waiting

from commands.cli import main
from drivers.aliyun import AliyunDriver
from drivers.rehearsal.aliyun import AliyunStandIn, serve
from lab import gc
from lab.errors import BootTimeout, ConfigError

IMAGE = "aliyun:m-rancheros158"


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AliyunStandIn]:
    standin = serve(tmp_path, monkeypatch)
    monkeypatch.setattr(AliyunDriver, "poll_interval", 0.05)
    yield standin
    standin.stop()


def test_launch_user_data_tags_console_and_delete(cloud: AliyunStandIn, tmp_path: Path) -> None:
    """Stand-in ECS: CreateInstance with UserData, tags and a client token, a public
    address, start, wait for Running, read the console output, delete."""
    driver = AliyunDriver()
    driver.prepare(machine_spec(IMAGE, tmp_path, {"hostname": "ali"}))
    driver.start()
    try:
        (inst,) = cloud.instances.values()
        (create,) = cloud.created
        assert inst["Status"] == "Running" and create["ClientToken"] == inst["InstanceName"]
        assert inst["UserData"] == "#cloud-config\nhostname: ali\n"
        assert inst["SecurityGroupId"] == "sg-standin"
        tags = inst["tags"]
        assert tags["created-by"] == "roslab" and tags["roslab-run-id"] == gc.run_id()
        assert abs(int(tags["roslab-expires"]) - (time.time() + gc.DEFAULT_TTL)) < 60
        assert driver.ssh_endpoint() == ("127.0.0.1", 22)
        assert "RancherOS v1.5.8 started" in (driver.console_text() or "")
    finally:
        driver.stop()
        driver.cleanup()
    assert cloud.instances == {}
    assert "RancherOS v1.5.8 started" in (tmp_path / "console.log").read_text()


def test_an_unknown_image_or_no_security_group_is_named_and_nothing_is_made(
        cloud: AliyunStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in ECS."""
    driver = AliyunDriver()
    driver.prepare(machine_spec("aliyun:m-none", tmp_path))
    with pytest.raises(ConfigError, match="aliyun refused the instance: .*InvalidImageId"):
        driver.start()
    monkeypatch.delenv("ROSLAB_ALIYUN_SECURITY_GROUP")
    with pytest.raises(ConfigError, match="set ROSLAB_ALIYUN_SECURITY_GROUP"):
        driver.start()
    assert cloud.instances == {}


def test_a_create_that_fails_after_the_cloud_made_it_leaves_nothing(
        cloud: AliyunStandIn, tmp_path: Path) -> None:
    """Stand-in ECS: the instance is made but CreateInstance answers 500; the driver finds
    it by name and deletes it."""
    cloud.fail_after_create = "an internal error occurred"
    driver = AliyunDriver()
    driver.prepare(machine_spec(IMAGE, tmp_path))
    with pytest.raises(ConfigError, match="aliyun refused the instance"):
        driver.start()
    assert len(cloud.created) == 1 and cloud.instances == {}


def test_an_instance_that_never_runs_times_out_with_its_console_and_is_deleted(
        cloud: AliyunStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in ECS: stuck in Starting; bounded wait, the console output as evidence."""
    cloud.hold_starting = True
    monkeypatch.setattr(AliyunDriver, "boot_wait", 0.5)
    driver = AliyunDriver()
    driver.prepare(machine_spec(IMAGE, tmp_path))
    with pytest.raises(BootTimeout, match="running with an address did not happen") as err:
        driver.start()
    assert "RancherOS v1.5.8 started" in err.value.last_lines
    assert cloud.instances == {}


def test_sigterm_while_waiting_deletes_the_instance(cloud: AliyunStandIn, tmp_path: Path) -> None:
    """Stand-in ECS: a run terminated while it waits leaves nothing."""
    cloud.hold_starting = True
    assert terminate_while_waiting("aliyun", IMAGE, tmp_path, lambda: cloud.instances) != 0
    assert cloud.instances == {}


def test_missing_credentials_and_sdk_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                "ALIBABA_CLOUD_REGION_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="ALIBABA_CLOUD_ACCESS_KEY_ID, "
                                          "ALIBABA_CLOUD_ACCESS_KEY_SECRET, "
                                          "ALIBABA_CLOUD_REGION_ID not set"):
        AliyunDriver().prepare(machine_spec(IMAGE, tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "libcloud", None)
    with pytest.raises(ConfigError, match="needs the Python package apache-libcloud"):
        AliyunDriver().prepare(machine_spec(IMAGE, tmp_path))


def test_gc_finds_what_a_killed_run_left(cloud: AliyunStandIn, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Stand-in ECS: a run SIGKILLed mid-test leaves a tagged instance; gc pages through
    the tag filter, takes what is expired or older than asked, never what is not ours."""
    run = start_run("aliyun", IMAGE, tmp_path)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    assert len(cloud.instances) == 1
    theirs = cloud.seed("web-1", "2020-01-01T00:00Z", team="web")
    for n in range(120):  # more than one page of the lab's expired instances
        cloud.seed(f"old-{n}", "2020-01-01T00:00Z", **{
            "created-by": "roslab", "roslab-run-id": "old", "roslab-expires": "1577840000"})

    assert main(["gc", "--platform", "aliyun", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(run old: expired" in out and "120 found on aliyun" in out

    assert main(["gc", "--platform", "aliyun", "--older-than", "0s"]) == 0
    assert "121 removed on aliyun" in capsys.readouterr().out
    assert list(cloud.instances) == [theirs]
