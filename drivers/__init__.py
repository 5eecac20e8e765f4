"""Platform drivers: the registry. `PLATFORMS` names each implemented one.

Everything that depends on the platform (its options, doctor checks, readiness, garbage,
release artifact) is asked of its driver class; nothing outside drivers/ names one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from lab.driver import Driver, Option
from lab.errors import ConfigError

DEFAULT_PLATFORM = "qemu"  # any Linux box has it
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
PLANNED: tuple[str, ...] = ()


def driver_class(platform: str) -> type[Driver]:
    if platform not in PLATFORMS:
        planned = f" (planned, not implemented yet: {', '.join(PLANNED)})" if PLANNED else ""
        raise ConfigError(
            f"unknown platform {platform!r}: known platforms are {', '.join(PLATFORMS)}{planned}"
        )
    module, _, cls = PLATFORMS[platform].partition(":")
    return getattr(importlib.import_module(module), cls)


def drivers() -> dict[str, type[Driver]]:
    return {name: driver_class(name) for name in PLATFORMS}


def clouds() -> list[str]:
    """The platforms whose objects live in a cloud account."""
    return [name for name, cls in drivers().items() if cls.in_cloud]


def platform_options() -> dict[str, tuple[Option, list[str]]]:
    """Every platform's options by flag, each with the platforms that take it."""
    found: dict[str, tuple[Option, list[str]]] = {}
    for name, cls in drivers().items():
        for option in cls.options:
            found.setdefault(option.flag, (option, []))[1].append(name)
    return found


def add_platform_options(add_option: Callable[..., Any]) -> None:
    """Declare every platform's options with argparse's add_argument or pytest's addoption."""
    for option, platforms in platform_options().values():
        option.add_to(add_option, platforms)


def platform_option_values(values: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The platform options given (not None) in parsed arguments (a Namespace or a dict)."""
    get = values.get if isinstance(values, Mapping) else (lambda k: getattr(values, k, None))
    return {o.dest: v for o, _ in platform_options().values() if (v := get(o.dest)) is not None}
