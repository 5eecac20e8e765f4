"""Platform drivers. `PLATFORMS` names each implemented one; the others are planned."""

from __future__ import annotations

import importlib

from lab.driver import Driver
from lab.errors import ConfigError

PLATFORMS: dict[str, str] = {
    "qemu": "drivers.qemu:QemuDriver",
    "aws": "drivers.aws:AwsDriver",
    "openstack": "drivers.openstack:OpenStackDriver",
    "gce": "drivers.gce:GceDriver",
    "digitalocean": "drivers.digitalocean:DigitalOceanDriver",
    "cloudstack": "drivers.cloudstack:CloudStackDriver",
    "aliyun": "drivers.aliyun:AliyunDriver",
    "libvirt": "drivers.libvirt:LibvirtDriver",
    "labgrid": "drivers.labgrid:LabgridDriver",  # physical boxes on a labgrid farm
}
# platforms whose objects live in a cloud account: `roslab gc --all-clouds` visits each
CLOUDS = ("aliyun", "aws", "cloudstack", "digitalocean", "gce", "openstack")
PLANNED: tuple[str, ...] = ()


def driver_class(platform: str) -> type[Driver]:
    if platform not in PLATFORMS:
        planned = f" (planned, not implemented yet: {', '.join(PLANNED)})" if PLANNED else ""
        raise ConfigError(
            f"unknown platform {platform!r}: known platforms are {', '.join(PLATFORMS)}{planned}"
        )
    module, _, cls = PLATFORMS[platform].partition(":")
    return getattr(importlib.import_module(module), cls)
