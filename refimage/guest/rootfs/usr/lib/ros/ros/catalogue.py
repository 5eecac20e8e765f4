"""Optional services (RancherOS's os-services repository, here a folder of the image):
`ros service enable NAME` turns one on in rancher.services_include, and from then on it
is part of the OS's services, started at boot like the others."""

from __future__ import annotations

import glob
import os

from ros import config

CATALOGUE = "/usr/share/ros/services"
LOCAL_PREFIX = "/var/lib/rancher/conf"  # where RancherOS takes a service file by path


def available() -> list[str]:
    return sorted(os.path.basename(p)[:-4] for p in glob.glob(f"{CATALOGUE}/*.yml"))


def is_local(name: str) -> bool:
    return name.startswith("/")


def definition(name: str) -> dict:
    """The services a catalogue entry (or a local compose file) declares."""
    path = name if is_local(name) else f"{CATALOGUE}/{name}.yml"
    data = config._yaml_file(path)
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def included(cfg: dict) -> dict[str, dict]:
    """The services of every enabled rancher.services_include entry."""
    out: dict[str, dict] = {}
    include = config.get(cfg, "rancher.services_include")
    for name, enabled in (include if isinstance(include, dict) else {}).items():
        if enabled is True:
            out.update(definition(str(name)))
    return out
