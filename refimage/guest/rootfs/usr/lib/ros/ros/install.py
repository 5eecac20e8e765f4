"""`ros install`: write this OS to a disk that boots by itself (see ros/disk.py).

The kernel and initrd come from what the machine booted from, as RancherOS installs from
its ISO: the ISO (volume `RancherOS`) or an installed disk's boot partition (`RANCHEROS`),
or a folder or device given with -i.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import yaml

from ros import cloudinit, config, disk

SOURCE_LABEL = "RancherOS"  # the ISO's volume id; an installed disk's boot partition too


def _mounted_devices() -> set[str]:
    with open("/proc/mounts") as fh:
        return {line.split()[0] for line in fh if line.startswith("/dev/")}


@contextlib.contextmanager
def _source(given: str | None) -> Iterator[str]:
    """A folder holding boot/vmlinuz and boot/initrd."""
    if given and os.path.isdir(given):
        yield given
        return
    dev = given or cloudinit.find_label(SOURCE_LABEL)
    if not dev:
        raise disk.InstallError(
            "nothing to install from: no ISO or installed disk labelled RancherOS is "
            "attached (boot the release's rancheros.iso, or give -i FOLDER|DEVICE)")
    where = tempfile.mkdtemp(prefix="ros-install-src-")
    try:
        for fstype in ("iso9660", "vfat"):
            if subprocess.run(["mount", "-t", fstype, "-o", "ro", dev, where],
                              capture_output=True).returncode == 0:
                break
        else:
            raise disk.InstallError(f"could not mount the installation source {dev}")
        try:
            yield where
        finally:
            subprocess.run(["umount", where], capture_output=True)
    finally:
        os.rmdir(where)


def _cloud_config(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise disk.InstallError(f"cannot read the cloud-config {path}: {exc.strerror}") from None
    try:
        parsed = config.load_yaml(data)
    except yaml.YAMLError as exc:
        raise disk.InstallError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(parsed, dict):
        raise disk.InstallError(f"{path} is not a cloud-config (a YAML mapping)")
    return data


def _reread_partitions(device: str) -> None:
    """Have the kernel read the new table (/dev/vda1 ...); a file or busy disk is fine."""
    subprocess.run(["blockdev", "--rereadpt", device], capture_output=True)


def install(device: str, cloud_config: str | None, append: str, source: str | None,
            install_type: str, force: bool, no_reboot: bool) -> int:
    try:
        if install_type not in ("generic", ""):
            raise disk.InstallError(f"install type {install_type!r} is not supported by this "
                                    "image: it installs `generic` (MBR, syslinux)")
        if not os.path.exists(device):
            raise disk.InstallError(f"{device} does not exist")
        base = os.path.basename(device)
        busy = [m for m in _mounted_devices() if os.path.basename(m).startswith(base)]
        if busy:
            raise disk.InstallError(f"{device} is in use (mounted: {', '.join(sorted(busy))})")
        cc = _cloud_config(cloud_config)
        if not force and sys.stdin.isatty():
            answer = input(f"Continue with the install? {device} will be erased [y/N]: ")
            if answer.strip().lower() not in ("y", "yes"):
                print("ros install: not installed")
                return 1
        rel = config.os_release()
        title = f"{rel.get('NAME', 'RancherOS')} {rel.get('VERSION', '')}".strip()
        cmdline = f"{disk.BASE_CMDLINE} {append}".strip()
        with _source(source) as src, tempfile.TemporaryDirectory(prefix="ros-install-") as tmp:
            files = {}
            for name in ("vmlinuz", "initrd"):
                found = os.path.join(src, "boot", name)
                if not os.path.isfile(found):
                    raise disk.InstallError(f"the installation source has no boot/{name}")
                files[name] = os.path.join(tmp, name)
                shutil.copyfile(found, files[name])  # the source may be on the target
            print(f"ros install: writing {title} to {device}")
            disk.write_disk(device, files["vmlinuz"], files["initrd"], cmdline, title, cc)
        _reread_partitions(device)
        os.sync()
        config.boot_log("install", f"installed to {device}: {cmdline}")
        print(f"ros install: {device} installed (boots with: {cmdline})")
    except disk.InstallError as exc:
        print(f"ros install: {exc}", file=sys.stderr)
        return 1
    if not no_reboot:
        print("ros install: rebooting")
        os.execv("/usr/bin/busybox", ["reboot", "-f"])
    return 0
