"""The OpenStack driver against a stand-in of Keystone, Nova and Glance (tests/standins/
openstack_standin.py), reached through openstacksdk and a clouds.yaml, as a user's cloud is."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins.base import machine_spec, start_run, terminate_while_waiting

from commands.cli import main
from drivers.openstack import OpenStackDriver
from drivers.rehearsal.openstack import OpenStackStandIn, serve
from lab import gc
from lab.errors import BootTimeout, ConfigError, ImageError, LabError


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenStackStandIn]:
    standin = serve(tmp_path, monkeypatch)
    monkeypatch.setattr(OpenStackDriver, "poll_interval", 0.05)
    yield standin
    standin.stop()


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "rancheros-openstack.img"
    path.write_bytes(b"QFI\xfb" + bytes(range(256)) * 16)
    return path


def test_launch_marks_user_data_config_drive_console_and_delete(
        cloud: OpenStackStandIn, disk: Path, tmp_path: Path) -> None:
    """Stand-in cloud: upload, create with marks/user-data/config drive, wait, read, delete."""
    driver = OpenStackDriver()
    driver.prepare(machine_spec(str(disk), tmp_path, {"hostname": "os-run"}))
    before = time.time()
    driver.start()
    try:
        (server,) = cloud.servers.values()
        assert server["status"] == "ACTIVE"
        assert server["config_drive"] is True
        assert cloud.user_data[server["name"]] == "#cloud-config\nhostname: os-run\n"
        marks = server["metadata"]
        assert marks["created-by"] == "roslab" and marks["roslab-run-id"] == gc.run_id()
        assert before + gc.DEFAULT_TTL - 5 <= int(marks["roslab-expires"]) <= time.time() \
            + gc.DEFAULT_TTL
        (image_id,) = cloud.images
        assert cloud.uploads[image_id] == disk.read_bytes()
        assert cloud.images[image_id]["created-by"] == "roslab"
        assert cloud.images[image_id]["disk_format"] == "qcow2"  # qcow2 magic, as the release has
        assert driver.ssh_endpoint() == ("127.0.0.1", 22)  # the floating address
        assert "RancherOS v1.5.8 started" in (driver.console_text() or "")
        assert driver.alive()
        assert len(cloud.calls("GET", r"/compute/v2.1/servers/[^/]+")) >= 2  # waited for ACTIVE
    finally:
        driver.stop()
        driver.cleanup()
    assert cloud.servers == {} and cloud.images == {}
    assert cloud.calls("DELETE", r"/compute/v2.1/servers/[^/]+")
    assert cloud.calls("DELETE", r"/image/v2/images/[^/]+")
    assert disk.read_bytes().startswith(b"QFI\xfb")  # the user's image is only read


def test_an_existing_image_is_used_not_copied_nor_deleted(
        cloud: OpenStackStandIn, tmp_path: Path) -> None:
    """Stand-in cloud: `openstack:NAME` boots the cloud's image and leaves it there."""
    image = cloud.seed_image("rancheros-v1.5.8")
    driver = OpenStackDriver()
    driver.prepare(machine_spec("openstack:rancheros-v1.5.8", tmp_path))
    driver.start()
    driver.stop()
    driver.cleanup()
    assert list(cloud.images) == [image] and cloud.servers == {}
    assert not cloud.calls("POST", r"/image/v2/images")


def test_an_unknown_image_or_flavor_is_named_and_nothing_is_made(
        cloud: OpenStackStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in cloud: bad input fails before any server exists."""
    driver = OpenStackDriver()
    driver.prepare(machine_spec("openstack:no-such-image", tmp_path))
    with pytest.raises(ImageError, match="openstack has no image 'no-such-image'"):
        driver.start()
    monkeypatch.setenv("ROSLAB_OPENSTACK_FLAVOR", "m9.huge")
    with pytest.raises(ConfigError, match="no flavor 'm9.huge'.*ROSLAB_OPENSTACK_FLAVOR"):
        driver.start()
    assert cloud.servers == {} and cloud.images == {}


def test_a_create_that_fails_after_the_cloud_made_it_leaves_nothing(
        cloud: OpenStackStandIn, disk: Path, tmp_path: Path) -> None:
    """Stand-in cloud: Nova makes the server but the answer is a 500; the driver finds the
    server by its name and deletes it, and the uploaded image too."""
    cloud.fail("POST", r"/compute/v2.1/servers", 500)
    driver = OpenStackDriver()
    driver.prepare(machine_spec(str(disk), tmp_path))
    with pytest.raises(ConfigError, match="openstack refused the server"):
        driver.start()
    assert cloud.servers == {} and cloud.images == {}
    assert cloud.calls("GET", r"/compute/v2.1/servers(/detail)?")  # looked it up by name


def test_a_server_that_never_runs_times_out_with_its_console_and_is_deleted(
        cloud: OpenStackStandIn, disk: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in cloud: a server stuck in BUILD; a bounded wait, the console as evidence."""
    cloud.hold_build = True
    monkeypatch.setattr(OpenStackDriver, "boot_wait", 0.5)
    driver = OpenStackDriver()
    driver.prepare(machine_spec(str(disk), tmp_path))
    with pytest.raises(BootTimeout, match="running with an address did not happen") as err:
        driver.start()
    assert "RancherOS v1.5.8 started" in err.value.last_lines
    assert cloud.servers == {} and cloud.images == {}


def test_sigterm_while_waiting_deletes_everything(
        cloud: OpenStackStandIn, disk: Path, tmp_path: Path) -> None:
    """Stand-in cloud: a run terminated (SIGTERM, as Ctrl-C) while it waits leaves nothing."""
    cloud.hold_build = True
    assert terminate_while_waiting("openstack", str(disk), tmp_path, lambda: cloud.servers) != 0
    assert cloud.servers == {} and cloud.images == {}


def test_missing_credentials_and_sdk_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OS_CLOUD", "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="OS_CLOUD.*clouds.yaml"):
        OpenStackDriver().prepare(machine_spec("openstack:x", tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "openstack", None)
    with pytest.raises(ConfigError, match=r"needs the Python package openstacksdk .*pip install"):
        OpenStackDriver().prepare(machine_spec("openstack:x", tmp_path))


def test_gc_finds_what_a_killed_run_left(
        cloud: OpenStackStandIn, disk: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Stand-in cloud: a run SIGKILLed mid-test leaves its server and image; gc lists them
    (dry run), takes only what is expired or older than asked, never what is not ours."""
    run = start_run("openstack", str(disk), tmp_path)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    left = set(cloud.servers)
    assert len(left) == 1 and len(cloud.images) == 1
    theirs = cloud.seed_server("someone-elses", "2020-01-01T00:00:00Z")
    expired = cloud.seed_server("old-run", "2020-01-01T00:00:00Z", **{
        "created-by": "roslab", "roslab-run-id": "old", "roslab-expires": "1577840000"})

    assert main(["gc", "--platform", "openstack", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove openstack server {expired} (run old: expired" in out
    assert "1 found on openstack" in out and len(cloud.servers) == 3

    assert main(["gc", "--platform", "openstack"]) == 0
    assert set(cloud.servers) == left | {theirs}

    assert main(["gc", "--platform", "openstack", "--older-than", "0s", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 found on openstack" in out and "openstack image" in out

    assert main(["gc", "--platform", "openstack", "--older-than", "0s"]) == 0
    assert set(cloud.servers) == {theirs} and cloud.images == {}


def test_an_unreachable_cloud_is_a_lab_error(cloud: OpenStackStandIn, tmp_path: Path) -> None:
    """Stand-in cloud, then stopped: the ledger names what it could not delete."""
    driver = OpenStackDriver()
    driver.prepare(machine_spec("openstack:x", tmp_path))
    driver.ledger.add("image", "img-1", lambda: (_ for _ in ()).throw(OSError("refused")))
    with pytest.raises(LabError, match=r"could not delete image img-1: OSError: refused.*gc"):
        driver.cleanup()


def test_platform_options_win_and_the_console_log_is_kept(
        cloud: OpenStackStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in cloud: --instance-type / --platform-option over the variables; the console
    log is copied to the machine's console.log before the server is deleted."""
    cloud.flavors.append({"id": "3", "name": "m1.medium", "ram": 4096, "vcpus": 2, "disk": 40})
    cloud.seed_image("rancheros-v1.5.8")
    monkeypatch.setenv("ROSLAB_OPENSTACK_FLAVOR", "m1.small")
    spec = machine_spec("openstack:rancheros-v1.5.8", tmp_path)
    spec.options = {"instance_type": "m1.medium", "network": "net-1"}
    driver = OpenStackDriver()
    driver.prepare(spec)
    driver.start()
    driver.stop()
    driver.cleanup()
    (create,) = cloud.calls("POST", r"/compute/v2.1/servers")
    assert create.json()["server"]["flavorRef"] == "3"
    assert create.json()["server"]["networks"] == [{"uuid": "net-1"}]
    assert "RancherOS v1.5.8 started" in (tmp_path / "console.log").read_text()
    assert cloud.servers == {}
