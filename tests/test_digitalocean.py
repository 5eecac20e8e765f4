"""The DigitalOcean driver against a stand-in of its API v2 (tests/standins/
digitalocean_standin.py) served over TLS, reached through pydo with an API token and a
private base URL, as a user's account is."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins.base import machine_spec, start_run, terminate_while_waiting

from commands.cli import main
from drivers.digitalocean import DigitalOceanDriver
from drivers.rehearsal.digitalocean import DigitalOceanStandIn, serve
from lab import gc
from lab.errors import BootTimeout, ConfigError, ImageError

RELEASE_URL = "https://releases.example.org/v1.5.8/rancheros-digitalocean.img"


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DigitalOceanStandIn]:
    standin = serve(tmp_path, monkeypatch)
    monkeypatch.setattr(DigitalOceanDriver, "poll_interval", 0.05)
    yield standin
    standin.stop()


def test_launch_tags_user_data_custom_image_and_delete(
        cloud: DigitalOceanStandIn, tmp_path: Path) -> None:
    """Stand-in DigitalOcean: import the release image by URL, create a droplet with
    user_data and mark tags, wait for active with a public address, delete both."""
    driver = DigitalOceanDriver()
    driver.prepare(machine_spec(f"digitalocean:{RELEASE_URL}", tmp_path, {"hostname": "do"}))
    driver.start()
    try:
        (droplet,) = cloud.droplets.values()
        assert droplet["status"] == "active"
        assert droplet["user_data"] == "#cloud-config\nhostname: do\n"
        marks = dict(t.split(":", 1) for t in droplet["tags"])
        assert marks["created-by"] == "roslab" and marks["roslab-run-id"] == gc.run_id()
        assert abs(int(marks["roslab-expires"]) - (time.time() + gc.DEFAULT_TTL)) < 60
        (image,) = cloud.images.values()
        assert image["url"] == RELEASE_URL and image["tags"] == droplet["tags"]
        assert droplet["image"]["id"] == image["id"]
        assert driver.ssh_endpoint() == ("127.0.0.1", 22)  # the public address
        assert driver.console_text() is None
        assert "no console output" in (DigitalOceanDriver.capabilities.lacks("console") or "")
    finally:
        driver.stop()
        driver.cleanup()
    assert cloud.droplets == {} and cloud.images == {}
    assert len(cloud.calls("DELETE", r"/v2/(droplets|images)/\d+")) == 2


def test_an_existing_image_is_used_and_kept(cloud: DigitalOceanStandIn, tmp_path: Path) -> None:
    """Stand-in DigitalOcean: `digitalocean:ID` boots an image the account has."""
    ident = cloud.seed("images", "rancheros-v1.5.8")
    driver = DigitalOceanDriver()
    driver.prepare(machine_spec(f"digitalocean:{ident}", tmp_path))
    driver.start()
    driver.stop()
    driver.cleanup()
    assert list(cloud.images) == [ident] and cloud.droplets == {}


def test_an_unknown_image_is_named_and_nothing_is_made(
        cloud: DigitalOceanStandIn, tmp_path: Path) -> None:
    """Stand-in DigitalOcean."""
    driver = DigitalOceanDriver()
    driver.prepare(machine_spec("digitalocean:999", tmp_path))
    with pytest.raises(ImageError, match="digitalocean has no image '999'"):
        driver.start()
    assert cloud.droplets == {} and cloud.images == {}


def test_a_create_that_fails_after_the_cloud_made_it_leaves_nothing(
        cloud: DigitalOceanStandIn, tmp_path: Path) -> None:
    """Stand-in DigitalOcean: the droplet is made but the answer is a 500, not retried
    (a retried POST makes a second droplet); the driver deletes it by name."""
    cloud.fail("POST", r"/v2/droplets", 500)
    driver = DigitalOceanDriver()
    driver.prepare(machine_spec(f"digitalocean:{RELEASE_URL}", tmp_path))
    with pytest.raises(ConfigError, match="digitalocean refused the droplet"):
        driver.start()
    assert len(cloud.calls("POST", r"/v2/droplets")) == 1
    assert cloud.droplets == {} and cloud.images == {}


def test_a_droplet_that_never_becomes_active_times_out_and_is_deleted(
        cloud: DigitalOceanStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in DigitalOcean: stuck in `new`; a bounded wait, then nothing left."""
    cloud.hold_new = True
    monkeypatch.setattr(DigitalOceanDriver, "boot_wait", 0.5)
    driver = DigitalOceanDriver()
    driver.prepare(machine_spec(f"digitalocean:{RELEASE_URL}", tmp_path))
    with pytest.raises(BootTimeout, match="running with an address did not happen"):
        driver.start()
    assert cloud.droplets == {} and cloud.images == {}


def test_sigterm_while_waiting_deletes_everything(
        cloud: DigitalOceanStandIn, tmp_path: Path) -> None:
    """Stand-in DigitalOcean: a run terminated while it waits leaves nothing."""
    cloud.hold_new = True
    image = f"digitalocean:{RELEASE_URL}"
    assert terminate_while_waiting("digitalocean", image, tmp_path, lambda: cloud.droplets) != 0
    assert cloud.droplets == {} and cloud.images == {}


def test_missing_token_and_sdk_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="no API token; set DIGITALOCEAN_TOKEN"):
        DigitalOceanDriver().prepare(machine_spec("digitalocean:1", tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "pydo", None)
    with pytest.raises(ConfigError, match="needs the Python package pydo"):
        DigitalOceanDriver().prepare(machine_spec("digitalocean:1", tmp_path))


def test_gc_finds_what_a_killed_run_left(cloud: DigitalOceanStandIn, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Stand-in DigitalOcean: a run SIGKILLed mid-test leaves a droplet and an image; gc
    pages through the account, takes what is expired or older than asked, and no more."""
    run = start_run("digitalocean", f"digitalocean:{RELEASE_URL}", tmp_path)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    assert len(cloud.droplets) == len(cloud.images) == 1
    theirs = cloud.seed("droplets", "web-1", tags=["web"])
    for n in range(250):  # more than one page of the account's own images
        cloud.seed("images", f"snapshot-{n}")
    expired = cloud.seed("droplets", "old-run", tags=[
        "created-by:roslab", "roslab-run-id:old", "roslab-expires:1577840000"])

    assert main(["gc", "--platform", "digitalocean", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove digitalocean droplet {expired} (run old: expired" in out
    assert "1 found on digitalocean" in out

    assert main(["gc", "--platform", "digitalocean", "--older-than", "0s"]) == 0
    assert "3 removed on digitalocean" in capsys.readouterr().out
    assert list(cloud.droplets) == [theirs] and len(cloud.images) == 250
