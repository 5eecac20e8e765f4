"""The lab's SSH key reaches every cloud's instance: through the cloud's own key channel
where the driver hands it over (AWS key pair, GCE `ssh-keys`, the QEMU metadata
stand-ins), else in the cloud-config. A key in neither place is a machine the lab cannot
log into."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.machines import make_machine
from lab.ssh import KeyPair

CLOUD_IMAGES = {"aws": "ami-0123456789abcdef0", "gce": "gce:rancheros",
                "openstack": "openstack:ros", "digitalocean": "digitalocean:123",
                "cloudstack": "cloudstack:ros", "aliyun": "aliyun:m-ros"}
BY_KEY_CHANNEL = {"aws", "gce"}


@pytest.mark.parametrize("platform", sorted(CLOUD_IMAGES))
def test_the_labs_key_reaches_the_instance_one_way_or_the_other(platform: str,
                                                                tmp_path: Path) -> None:
    key = KeyPair.generate(tmp_path / "key")
    machine = make_machine(platform, CLOUD_IMAGES[platform], "x86_64", {"hostname": "k"},
                           "default", tmp_path, "tcg", ssh_key=key)
    in_cloud_config = key.public in machine.spec.cloud_config.data.get(
        "ssh_authorized_keys", [])
    by_key_channel = machine.spec.ssh_keys == [key.public]
    assert (by_key_channel, in_cloud_config) == (
        (True, False) if platform in BY_KEY_CHANNEL else (False, True))


def test_on_qemu_a_metadata_datasource_serves_the_key_and_a_drive_carries_it(
        tmp_path: Path, tiny_guests: dict) -> None:
    key = KeyPair.generate(tmp_path / "key")
    ec2 = make_machine("qemu", tiny_guests["shell"], "x86_64", None, "ec2", tmp_path, "tcg",
                       ssh_key=key)
    drive = make_machine("qemu", tiny_guests["shell"], "x86_64", None, "configdrive", tmp_path,
                         "tcg", ssh_key=key)
    assert ec2.spec.ssh_keys == [key.public]
    assert drive.spec.ssh_keys == []
    assert drive.spec.cloud_config.data["ssh_authorized_keys"] == [key.public]
