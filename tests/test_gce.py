"""The GCE driver against a stand-in of Compute Engine's REST API (tests/standins/
gce_standin.py), reached through google-cloud-compute with a service-account key file and
a private API endpoint, as a user's project is."""

from __future__ import annotations

import json
import os
import signal
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from standins.base import machine_spec, start_run, terminate_while_waiting

from commands.cli import main
from drivers.gce import GceDriver, label_value
from drivers.rehearsal.gce import PROJECT, GceStandIn, serve
from lab import gc
from lab.errors import BootTimeout, ConfigError, ImageError, PlatformError
from lab.images import GCE_TARBALL, Image

ZONE = "us-central1-a"


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GceStandIn]:
    standin = serve(tmp_path, monkeypatch)
    monkeypatch.setattr(GceDriver, "poll_interval", 0.05)
    yield standin
    standin.stop()


TARBALL = "gce:gs://roslab-images/rancheros-gce.tar.gz"


def test_launch_labels_user_data_firewall_serial_console_and_delete(
        cloud: GceStandIn, tmp_path: Path) -> None:
    """Stand-in GCE: image from the release tarball, SSH rule for the runner only, instance
    with user-data and labels; wait, read the serial port, delete all three."""
    driver = GceDriver()
    driver.prepare(machine_spec(TARBALL, tmp_path, {"hostname": "gce-run"}))
    driver.start()
    try:
        ((zone, name), inst), = cloud.instances.items()
        assert zone == ZONE and inst["status"] == "RUNNING"
        items = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
        assert items["user-data"] == "#cloud-config\nhostname: gce-run\n"
        labels = inst["labels"]
        assert labels["created-by"] == "roslab"
        assert labels["roslab-run-id"] == label_value(gc.run_id())
        assert abs(int(labels["roslab-expires"]) - (time.time() + gc.DEFAULT_TTL)) < 60
        assert all(v == label_value(v) for v in labels.values())
        (image,) = cloud.images.values()
        assert image["rawDisk"]["source"] == \
            "https://storage.googleapis.com/roslab-images/rancheros-gce.tar.gz"
        assert image["labels"] == labels
        assert inst["disks"][0]["initializeParams"]["sourceImage"].endswith(image["name"])
        (rule,) = cloud.firewalls.values()
        assert rule["sourceRanges"] == ["198.51.100.7/32"]
        assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
        assert rule["targetTags"] == inst["tags"]["items"]
        assert json.loads(rule["description"])["created-by"] == "roslab"
        assert driver.ssh_endpoint() == ("127.0.0.1", 22)
        assert "RancherOS v1.5.8 started" in (driver.console_text() or "")
    finally:
        driver.stop()
        driver.cleanup()
    assert cloud.instances == {} and cloud.images == {} and cloud.firewalls == {}
    assert cloud.calls("DELETE", rf".*/zones/{ZONE}/instances/{name}")


def test_an_existing_image_is_used_and_kept(cloud: GceStandIn, tmp_path: Path) -> None:
    """Stand-in GCE: `gce:NAME` boots the project's image and leaves it there."""
    cloud.seed("images", "rancheros-v1-5-8")
    driver = GceDriver()
    driver.prepare(machine_spec("gce:rancheros-v1-5-8", tmp_path))
    driver.start()
    driver.stop()
    driver.cleanup()
    assert list(cloud.images) == ["rancheros-v1-5-8"]
    assert cloud.instances == {} and cloud.firewalls == {}


def test_an_unknown_image_is_named_and_nothing_is_made(cloud: GceStandIn, tmp_path: Path) -> None:
    """Stand-in GCE."""
    driver = GceDriver()
    driver.prepare(machine_spec("gce:no-such-image", tmp_path))
    with pytest.raises(ImageError, match="gce has no image .*no-such-image"):
        driver.start()
    assert cloud.instances == {} and cloud.firewalls == {} and cloud.images == {}


def test_a_create_that_fails_after_the_cloud_made_it_leaves_nothing(
        cloud: GceStandIn, tmp_path: Path) -> None:
    """Stand-in GCE: the instance is made but the insert answers 503; the driver deletes
    it by name, then the rule and the image."""
    cloud.fail("POST", rf".*/zones/{ZONE}/instances", 503)
    driver = GceDriver()
    driver.prepare(machine_spec(TARBALL, tmp_path))
    with pytest.raises(ConfigError, match="gce refused the instance: POST .*stand-in fault"):
        driver.start()
    assert cloud.instances == {} and cloud.firewalls == {} and cloud.images == {}
    assert cloud.calls("DELETE", rf".*/zones/{ZONE}/instances/[^/]+")


def test_an_instance_that_never_runs_times_out_with_its_serial_output(
        cloud: GceStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in GCE: stuck in PROVISIONING; bounded wait, serial output as evidence."""
    cloud.hold_provisioning = True
    monkeypatch.setattr(GceDriver, "boot_wait", 0.5)
    driver = GceDriver()
    driver.prepare(machine_spec(TARBALL, tmp_path))
    with pytest.raises(BootTimeout, match="running with an address") as err:
        driver.start()
    assert "RancherOS v1.5.8 started" in err.value.last_lines
    assert cloud.instances == {} and cloud.firewalls == {} and cloud.images == {}


def test_sigterm_while_waiting_deletes_everything(cloud: GceStandIn, tmp_path: Path) -> None:
    """Stand-in GCE: a run terminated while it waits for RUNNING leaves nothing."""
    cloud.hold_provisioning = True
    assert terminate_while_waiting("gce", TARBALL, tmp_path, lambda: cloud.instances) != 0
    assert cloud.instances == {} and cloud.firewalls == {} and cloud.images == {}


def test_missing_credentials_ssh_source_and_sdk_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cloud: GceStandIn) -> None:
    """Stand-in GCE (for the SSH source check)."""
    driver = GceDriver()
    driver.prepare(machine_spec(TARBALL, tmp_path))
    monkeypatch.delenv("ROSLAB_SSH_SOURCE")
    with pytest.raises(ConfigError, match="ROSLAB_SSH_SOURCE is not set: .*runner"):
        driver.start()
    assert not cloud.calls("POST", ".*")  # refused before anything was made
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match="platform gce: no credentials.*GOOGLE_APPLICATION"):
        GceDriver().prepare(machine_spec(TARBALL, tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "google.cloud.compute_v1", None)
    with pytest.raises(ConfigError, match="needs the Python package google-cloud-compute"):
        GceDriver().prepare(machine_spec(TARBALL, tmp_path))


def test_gc_finds_what_a_killed_run_left(cloud: GceStandIn, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Stand-in GCE: a run SIGKILLed mid-test leaves an instance, a rule and an image; gc
    takes what is expired or older than asked, in all zones, never what is not ours."""
    run = start_run("gce", TARBALL, tmp_path)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    assert len(cloud.instances) == len(cloud.firewalls) == len(cloud.images) == 1
    cloud.seed("instances", "someone-elses", labels={"team": "web"})
    cloud.seed("instances", "old-run", zone="europe-west1-b", labels={
        "created-by": "roslab", "roslab-run-id": "old", "roslab-expires": "1577840000"})
    cloud.seed("firewalls", "allow-http", description="the web team's rule")

    assert main(["gc", "--platform", "gce", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove gce instance europe-west1-b/old-run (run old: expired" in out
    assert "1 found on gce" in out

    assert main(["gc", "--platform", "gce", "--older-than", "0s"]) == 0
    out = capsys.readouterr().out
    assert "4 removed on gce" in out
    assert [name for _, name in cloud.instances] == ["someone-elses"]
    assert list(cloud.firewalls) == ["allow-http"] and cloud.images == {}


def test_a_machine_made_for_gce_is_deleted_by_machine_stop(
        cloud: GceStandIn, tmp_path: Path) -> None:
    """Stand-in GCE: make_machine takes `gce:IMAGE`, the gce datasource and platform
    options; Machine.stop (what every fixture's finalizer calls) deletes all it made."""
    from drivers.machines import make_machine
    from lab.ssh import KeyPair

    cloud.seed("images", "rancheros-v1-5-8")
    key = KeyPair.generate(tmp_path / "ssh")
    machine = make_machine("gce", "gce:rancheros-v1-5-8", "x86_64", {"hostname": "m"},
                           "default", tmp_path, "tcg", ssh_key=key,
                           platform_options={"zone": "europe-west1-b", "ssh_from": "192.0.2.9"})
    assert machine.spec.datasource == "gce"
    machine.driver.prepare(machine.spec)
    machine.driver.start()
    ((zone, _name), inst), = cloud.instances.items()
    assert zone == "europe-west1-b"
    items = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    # the lab's key reaches the guest as the instance's `ssh-keys` metadata (the gce
    # datasource), not through the user's cloud-config
    assert items["ssh-keys"] == f"rancher:{key.public}\n"
    assert "ssh_authorized_keys" not in yaml.safe_load(items["user-data"])
    assert next(iter(cloud.firewalls.values()))["sourceRanges"] == ["192.0.2.9/32"]
    machine.stop()
    assert cloud.instances == {} and cloud.firewalls == {}
    assert list(cloud.images) == ["rancheros-v1-5-8"]
    assert machine.capabilities.lacks("console")


# a local release tarball, uploaded to Cloud Storage per run -------------------------------

BUCKET = "roslab-uploads"


def gce_tarball(folder: Path, size: int) -> Path:
    """A release-shaped `rancheros-gce.tar.gz`: a gzipped tar of `disk.raw` (random bytes,
    so gzip cannot shrink it below the upload size under test)."""
    folder.mkdir(parents=True, exist_ok=True)
    disk = folder / "disk.raw"
    disk.write_bytes(os.urandom(size))
    tarball = folder / "rancheros-gce.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(disk, arcname="disk.raw")
    disk.unlink()
    return tarball


@pytest.fixture
def bucket(cloud: GceStandIn, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    cloud.buckets[BUCKET] = {}
    monkeypatch.setenv("ROSLAB_GCE_BUCKET", BUCKET)
    return cloud.buckets[BUCKET]


@pytest.mark.parametrize(("upload", "size"), [("multipart", 64 << 10),
                                              ("resumable", 9 << 20)])  # over 8 MiB
def test_a_local_tarball_is_uploaded_made_an_image_and_deleted_with_it(
        cloud: GceStandIn, bucket: dict[str, Any], tmp_path: Path, upload: str,
        size: int) -> None:
    """Stand-in GCE and Cloud Storage: `--image ./rancheros-gce.tar.gz` uploads the exact
    bytes as an object of the run's own, marked; the image is made from that object; stop
    deletes the instance, then the image, then the object."""
    tarball = gce_tarball(tmp_path / "release", size)
    driver = GceDriver()
    driver.prepare(machine_spec(str(tarball), tmp_path))
    driver.start()
    try:
        (name, stored), = bucket.items()
        assert stored.data == tarball.read_bytes()
        assert name.startswith("roslab-") and name.endswith(".tar.gz")
        marks = stored.resource["metadata"]
        assert marks["created-by"] == "roslab" and marks["roslab-run-id"] == gc.run_id()
        assert abs(int(marks["roslab-expires"]) - (time.time() + gc.DEFAULT_TTL)) < 60
        (opened,) = cloud.calls("POST", rf"/upload/storage/v1/b/{BUCKET}/o")
        assert opened.query["uploadType"] == [upload]
        assert opened.query["ifGenerationMatch"] == ["0"]  # never overwrites an object
        (image,) = cloud.images.values()
        assert image["rawDisk"]["source"] == f"https://storage.googleapis.com/{BUCKET}/{name}"
        (inst,) = cloud.instances.values()
        assert inst["disks"][0]["initializeParams"]["sourceImage"].endswith(image["name"])
    finally:
        driver.stop()
        driver.cleanup()
    assert bucket == {} and cloud.images == {} and cloud.instances == {}
    deletes = [r.path for r in cloud.requests if r.method == "DELETE"]
    assert deletes.index(f"/storage/v1/b/{BUCKET}/o/{name}") == len(deletes) - 1  # last


def test_two_machines_of_one_run_upload_objects_of_their_own(
        cloud: GceStandIn, bucket: dict[str, Any], tmp_path: Path) -> None:
    """Stand-in GCE and Cloud Storage: one run, two machines, two objects; each machine
    deletes only its own."""
    tarball = gce_tarball(tmp_path / "release", 4096)
    first, second = GceDriver(), GceDriver()
    first.prepare(machine_spec(str(tarball), tmp_path / "a"))
    second.prepare(machine_spec(str(tarball), tmp_path / "b"))
    first.start()
    try:
        second.start()
        assert len(bucket) == 2 and len(cloud.images) == 2
        second.stop()
        second.cleanup()
        assert len(bucket) == 1 and len(cloud.images) == 1
    finally:
        first.stop()
        first.cleanup()
    assert bucket == {} and cloud.images == {}


def test_an_image_create_that_fails_after_the_upload_leaves_no_object(
        cloud: GceStandIn, bucket: dict[str, Any], tmp_path: Path) -> None:
    """Stand-in GCE and Cloud Storage: the image is made but its insert answers 503; the
    driver deletes the image by name, then the object it uploaded."""
    cloud.fail("POST", rf".*/projects/{PROJECT}/global/images", 503)
    driver = GceDriver()
    driver.prepare(machine_spec(str(gce_tarball(tmp_path / "release", 4096)), tmp_path))
    with pytest.raises(PlatformError, match="gce: could not create the machine: .*stand-in "
                                            "fault"):
        driver.start()
    assert bucket == {} and cloud.images == {} and cloud.instances == {}
    assert cloud.calls("DELETE", rf"/storage/v1/b/{BUCKET}/o/roslab-[^/]+")
    assert cloud.calls("DELETE", r".*/global/images/roslab-[^/]+")


def test_an_upload_whose_answer_is_lost_leaves_no_object(
        cloud: GceStandIn, bucket: dict[str, Any], tmp_path: Path) -> None:
    """Stand-in Cloud Storage: the object is stored but the client sees a 503; its retry
    is refused (create-only precondition), and the driver deletes the object by name."""
    cloud.fail("POST", rf"/upload/storage/v1/b/{BUCKET}/o", 503)
    driver = GceDriver()
    driver.prepare(machine_spec(str(gce_tarball(tmp_path / "release", 4096)), tmp_path))
    with pytest.raises(PlatformError, match="PreconditionFailed"):
        driver.start()
    assert len(cloud.calls("POST", rf"/upload/storage/v1/b/{BUCKET}/o")) == 2
    assert bucket == {} and cloud.images == {} and cloud.instances == {}


def test_a_local_tarball_needs_a_bucket_that_exists(
        cloud: GceStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in GCE and Cloud Storage: no bucket given, or one that does not exist, or
    no google-cloud-storage: a ConfigError naming what to set; nothing is made."""
    tarball = str(gce_tarball(tmp_path / "release", 4096))
    monkeypatch.delenv("ROSLAB_GCE_BUCKET", raising=False)
    with pytest.raises(ConfigError, match=r"rancheros-gce.tar.gz is uploaded to a Cloud "
                       r"Storage bucket first.*--platform-option bucket=NAME or set "
                       r"ROSLAB_GCE_BUCKET"):
        GceDriver().prepare(machine_spec(tarball, tmp_path))
    monkeypatch.setenv("ROSLAB_GCE_BUCKET", "no-such-bucket")
    driver = GceDriver()
    driver.prepare(machine_spec(tarball, tmp_path))
    with pytest.raises(ConfigError, match="no Cloud Storage bucket no-such-bucket"):
        driver.start()
    assert not cloud.calls("POST", r"/compute/.*")
    assert cloud.images == {} and cloud.instances == {} and cloud.firewalls == {}
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    with pytest.raises(ConfigError, match="needs the Python package google-cloud-storage"):
        GceDriver().prepare(machine_spec(tarball, tmp_path))


def test_a_tarball_without_disk_raw_is_refused_before_any_upload(tmp_path: Path) -> None:
    """A rootfs tarball is not a GCE disk: the image check says what GCE needs."""
    (tmp_path / "etc").mkdir()
    rootfs = tmp_path / "rootfs_amd64.tar.gz"
    with tarfile.open(rootfs, "w:gz") as tar:
        tar.add(tmp_path / "etc", arcname="etc")
    with pytest.raises(ImageError, match="a GCE disk tarball holds disk.raw.*it holds etc"):
        Image.open(rootfs)
    (tmp_path / "broken.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(ImageError, match="broken.tar.gz is not a readable .tar.gz"):
        Image.open(tmp_path / "broken.tar.gz")
    assert Image.open(gce_tarball(tmp_path / "release", 512)).kind == GCE_TARBALL


def test_gc_finds_an_object_a_killed_run_left(
        cloud: GceStandIn, bucket: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Stand-in GCE and Cloud Storage: a run SIGKILLed after its upload leaves an object
    beside its instance, rule and image; gc sweeps the bucket only when one is configured,
    and takes only objects that carry the marks."""
    run = start_run("gce", str(gce_tarball(tmp_path / "release", 4096)), tmp_path)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    (left,) = bucket
    killed_run = bucket[left].resource["metadata"]["roslab-run-id"]
    cloud.put_object(BUCKET, "roslab-old.tar.gz", b"old", metadata={
        "created-by": "roslab", "roslab-run-id": "old", "roslab-expires": "1577840000"})
    cloud.put_object(BUCKET, "roslab-notes.txt", b"someone's, unmarked")

    assert main(["gc", "--platform", "gce", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove gce object gs://{BUCKET}/roslab-old.tar.gz (run old: expired" in out
    assert "1 found on gce" in out

    monkeypatch.delenv("ROSLAB_GCE_BUCKET")
    assert main(["gc", "--platform", "gce", "--older-than", "0s"]) == 0
    assert "3 removed on gce" in capsys.readouterr().out  # instance, rule, image
    assert len(bucket) == 3

    monkeypatch.setenv("ROSLAB_GCE_BUCKET", BUCKET)
    assert main(["gc", "--platform", "gce", "--older-than", "0s"]) == 0
    out = capsys.readouterr().out
    assert f"removed gce object gs://{BUCKET}/{left} (run {killed_run}: created" in out
    assert "2 removed on gce" in out
    assert list(bucket) == ["roslab-notes.txt"]
    assert list(cloud.buckets["roslab-images"]) == ["rancheros-gce.tar.gz"]

    monkeypatch.setenv("ROSLAB_GCE_BUCKET", "no-such-bucket")
    assert main(["gc", "--platform", "gce", "--dry-run"]) == 2
    assert "no Cloud Storage bucket no-such-bucket to sweep" in capsys.readouterr().err


def test_sigterm_after_the_upload_deletes_the_object_too(
        cloud: GceStandIn, bucket: dict[str, Any], tmp_path: Path) -> None:
    """Stand-in GCE and Cloud Storage: a run from a local tarball, terminated while it
    waits for RUNNING, leaves neither the instance, rule and image nor the object."""
    cloud.hold_provisioning = True
    tarball = str(gce_tarball(tmp_path / "release", 4096))
    assert terminate_while_waiting("gce", tarball, tmp_path, lambda: cloud.instances) != 0
    assert cloud.calls("POST", rf"/upload/storage/v1/b/{BUCKET}/o")
    assert bucket == {} and cloud.instances == {} and cloud.firewalls == {}
    assert cloud.images == {}


def test_qemu_boots_a_gce_tarball_by_its_disk(tmp_path: Path) -> None:
    """QEMU boots the tarball's disk.raw as GCE does: unpacked (byte for byte, sparse where
    it is zeros) into the machine's own folder, under a copy-on-write overlay."""
    from drivers.machines import make_machine

    tarball = gce_tarball(tmp_path / "release", 512)
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("disk.raw")
        assert member is not None
        expected = member.read()
    machine = make_machine("qemu", tarball, "x86_64", None, "default", tmp_path, "tcg")
    try:
        machine.driver.prepare(machine.spec)
        unpacked = machine.workdir / "disk.raw"
        assert unpacked.read_bytes() == expected
        drives = [a for a in machine.driver._argv() if a.startswith("if=")]
        assert drives == [f"if=virtio,format=qcow2,file={machine.workdir / 'overlay.qcow2'}"]
    finally:
        machine.stop()
    assert not machine.workdir.exists()
    assert GCE_TARBALL in GceDriver.capabilities.image_kinds
