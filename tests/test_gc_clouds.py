"""`roslab gc --all-clouds`: every cloud whose SDK and credentials are here, against the
stand-ins of OpenStack, GCE, DigitalOcean, CloudStack and Aliyun at once, after runs
killed on each."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from standins.base import start_run

from commands.cli import main
from drivers import clouds
from drivers.rehearsal import aliyun as aliyun_standin
from drivers.rehearsal import cloudstack as cloudstack_standin
from drivers.rehearsal import digitalocean as digitalocean_standin
from drivers.rehearsal import gce as gce_standin
from drivers.rehearsal import openstack as openstack_standin


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS is tested against moto (tests/test_aws.py); here it has no region, so gc skips it
    before asking for credentials (and boto3 never probes the instance metadata address)."""
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


RUNS = {"openstack": "rancheros-openstack.img",
        "gce": "gce:gs://roslab-images/rancheros-gce.tar.gz",
        "digitalocean": "digitalocean:https://releases.example.org/rancheros-digitalocean.img",
        "cloudstack": "cloudstack:rancheros-v1.5.8",
        "aliyun": "aliyun:m-rancheros158"}


def test_all_clouds_after_killed_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Stand-ins of five clouds: one run SIGKILLed on each; --dry-run lists what each
    left, the real pass removes it."""
    standins = {
        "openstack": openstack_standin.serve(tmp_path, monkeypatch),
        "gce": gce_standin.serve(tmp_path, monkeypatch),
        "digitalocean": digitalocean_standin.serve(tmp_path, monkeypatch),
        "cloudstack": cloudstack_standin.serve(tmp_path, monkeypatch),
        "aliyun": aliyun_standin.serve(tmp_path, monkeypatch),
    }
    disk = tmp_path / RUNS["openstack"]
    disk.write_bytes(b"\0" * 1024)
    try:
        for platform, image in RUNS.items():
            run = start_run(platform, str(disk) if platform == "openstack" else image,
                            tmp_path)
            run.send_signal(signal.SIGKILL)
            run.wait(10)
        assert main(["gc", "--all-clouds", "--older-than", "0s", "--dry-run"]) == 0
        out = capsys.readouterr().out
        print(out)
        assert "2 found on openstack" in out and "3 found on gce" in out
        assert "2 found on digitalocean" in out and "1 found on cloudstack" in out
        assert "1 found on aliyun" in out and "skipped aws" in out
        assert standins["openstack"].servers and standins["gce"].instances

        assert main(["gc", "--all-clouds", "--older-than", "0s"]) == 0
        out = capsys.readouterr().out
        print(out)
        assert "2 removed on openstack" in out and "3 removed on gce" in out
        assert not standins["openstack"].servers and not standins["openstack"].images
        assert not standins["gce"].instances and not standins["gce"].firewalls
        assert not standins["digitalocean"].droplets and not standins["digitalocean"].images
        assert not standins["cloudstack"].live() and not standins["aliyun"].instances
    finally:
        for standin in standins.values():
            standin.stop()


def test_clouds_without_sdk_or_credentials_are_listed_as_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Stand-in OpenStack only: the other clouds have no credentials here."""
    standin = openstack_standin.serve(tmp_path, monkeypatch)
    for var in ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN", "GOOGLE_CLOUD_PROJECT",
                "CLOUDSTACK_ENDPOINT", "ALIBABA_CLOUD_ACCESS_KEY_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    try:
        assert main(["gc", "--all-clouds", "--dry-run"]) == 0
    finally:
        standin.stop()
    out = capsys.readouterr().out
    assert "skipped digitalocean: platform digitalocean: no API token" in out
    assert "skipped gce: platform gce: no credentials" in out
    assert "skipped cloudstack: platform cloudstack: CLOUDSTACK_ENDPOINT" in out
    assert "skipped aliyun: platform aliyun: ALIBABA_CLOUD_ACCESS_KEY_ID" in out
    assert "skipped aws: platform aws needs a region" in out
    assert "0 found on openstack" in out
    assert clouds() == ["aws", "openstack", "gce", "digitalocean", "cloudstack", "aliyun"]


def test_a_cloud_that_fails_half_way_fails_gc_naming_it_and_what_is_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A policy refuses one delete half way through the sweep (a 403): that is
    not a cloud that was never configured; gc goes on, then fails naming the cloud and
    the thing it could not remove."""
    standin = openstack_standin.serve(tmp_path, monkeypatch)
    disk = tmp_path / RUNS["openstack"]
    disk.write_bytes(b"\0" * 1024)
    try:
        run = start_run("openstack", str(disk), tmp_path)
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        standin.fail("DELETE", r"/image/v2/images/([^/]+)", 403)
        code = main(["gc", "--all-clouds", "--older-than", "0s"])
    finally:
        standin.stop()
    out = capsys.readouterr().out
    print(out)
    assert code == 1
    assert "skipped openstack" not in out
    assert "roslab gc: could not sweep 1 cloud(s)" in out
    assert "openstack: PlatformError: could not remove 1: image " in out


def test_gc_needs_a_platform_or_all_clouds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["gc", "--dry-run"])
    assert "one of the arguments --platform --all-clouds is required" in \
        capsys.readouterr().err
