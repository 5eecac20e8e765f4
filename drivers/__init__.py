"""Platform drivers. `PLATFORMS` names each implemented one; the others are planned."""

from __future__ import annotations

import importlib

from drivers.base import Driver
from lab.errors import ConfigError

PLATFORMS: dict[str, str] = {"qemu": "drivers.qemu:QemuDriver",
                             "libvirt": "drivers.libvirt:LibvirtDriver"}
PLANNED = ("aws", "gce", "digitalocean", "openstack", "physical")


def driver_class(platform: str) -> type[Driver]:
    if platform not in PLATFORMS:
        planned = f" (planned, not implemented yet: {', '.join(PLANNED)})"
        raise ConfigError(
            f"unknown platform {platform!r}: known platforms are {', '.join(PLATFORMS)}{planned}"
        )
    module, _, cls = PLATFORMS[platform].partition(":")
    return getattr(importlib.import_module(module), cls)
