"""`roslab image build --disks`: the clouds' disk images, made by the guest's own installer.

Each is what `ros install -d DISK -c CLOUD-CONFIG -a APPEND` writes (the guest's
ros/disk.py, imported from the guest tree and run here on a plain file), with the cloud's
datasource baked into its kernel command line as RancherOS's packer builds do, then
converted with qemu-img to the format the cloud takes. They are an opt-in target: they
add to the build time and only cloud and disk-boot runs need them. They are written into
the image folder and listed in its manifest under `disks` (and `sizes`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import yaml

from lab.errors import BuildError, ConfigError
from refimage import build
from refimage.debs import Apt, extract

DISK_MODULE = build.GUEST / "rootfs/usr/lib/ros/ros/disk.py"
DISK_BYTES = 1 << 30  # GCE takes whole GiB; clouds grow the disk, not the image
GCE_MEMBER = "disk.raw"


@dataclass(frozen=True)
class CloudDisk:
    name: str
    fmt: str  # raw, qcow2, vpc (VHD), gce (disk.raw in a tar.gz)
    append: str
    cloud_config: dict | None = None


# the appends of rancher/os-packer's install2disk (and the DigitalOcean build)
CLOUD_DISKS = (
    CloudDisk("rancheros-openstack.img", "qcow2",
              "printk.devkmsg=on rancher.cloud_init.datasources=[configdrive]"),
    CloudDisk("rancheros-digitalocean.img", "raw",
              "notsc clocksource=kvm-clock rancher.network.interfaces.eth0.ipv4ll "
              "rancher.cloud_init.datasources=[digitalocean]"),
    CloudDisk("rancheros-gce.tar.gz", "gce",
              'printk.devkmsg=on rancher.cloud_init.datasources=["gce"]',
              {"rancher": {"resize_device": "/dev/sda",
                           "docker": {"extra_args": ["--mtu", "1460"]}}}),
    CloudDisk("rancheros-aliyun.vhd", "vpc",
              "printk.devkmsg=on rancher.cloud_init.datasources=[aliyun]"),
    CloudDisk("rancheros-cloudstack.img", "qcow2",
              "printk.devkmsg=on rancher.cloud_init.datasources=[cloudstack]"),
    # raw, as the AWS driver uploads it (EBS direct APIs) and registers it as an AMI
    CloudDisk("rancheros-aws.img", "raw",
              "printk.devkmsg=on rancher.cloud_init.datasources=[ec2]"),
)
NAMES = [d.name for d in CLOUD_DISKS]


def guest_disk_module() -> ModuleType:
    """The guest's installer core (standard library only), loaded from the guest tree."""
    spec = importlib.util.spec_from_file_location("roslab_guest_disk", DISK_MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _inputs(manifest: dict) -> str:
    h = hashlib.sha256(manifest["inputs_hash"].encode())
    for path in (DISK_MODULE, Path(__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()


def disks_current(folder: Path) -> bool:
    manifest = build.read_manifest(folder) or {}
    disks = manifest.get("disks") or {}
    return disks.get("inputs") == _inputs(manifest) if manifest else False


def ensure_disks(folder: Path, progress: build.Progress | None = None) -> Path:
    """Build the cloud disks into the reference image `folder` unless they are current."""
    say = progress or (lambda msg: None)
    folder = folder.resolve()
    manifest = build.read_manifest(folder)
    if manifest is None:
        raise BuildError(f"{folder} is not a complete reference image (no valid manifest)")
    if manifest["arch"] != "x86_64":
        raise ConfigError("the cloud disk images boot with syslinux from a BIOS: x86_64 only, "
                          f"not {manifest['arch']}")
    with build._lock(folder.parent / f".{folder.name}.lock"):
        manifest = build.read_manifest(folder) or manifest
        if disks_current(folder):
            say("cloud disk images are up to date")
            return folder
        _build_disks(folder, manifest, say)
    return folder


def _build_disks(folder: Path, manifest: dict, say: build.Progress) -> None:
    started = time.monotonic()
    disk = guest_disk_module()
    missing = disk.locate_tools()
    if missing or shutil.which("qemu-img") is None:
        raise BuildError(f"building disk images needs {', '.join(missing or ['qemu-img'])}: "
                         "run ./setup (apt: dosfstools e2fsprogs mtools qemu-utils)")
    work = Path(tempfile.mkdtemp(prefix="roslab-disks-", dir=folder.parent))
    try:
        say("unpacking syslinux (the installed disks' boot loader)")
        for pkg in Apt("x86_64").fetch(["syslinux", "syslinux-common"]):
            if pkg.name.startswith("syslinux"):
                extract(pkg.path, work / "syslinux")
        tools = disk.Tools(syslinux=str(work / "syslinux/usr/bin/syslinux"),
                           mbr_bin=str(work / "syslinux/usr/lib/syslinux/mbr/mbr.bin"))
        title = f"{manifest['os_name']} {manifest['version']}"
        made = {}
        for cloud in CLOUD_DISKS:
            say(f"writing {cloud.name}")
            raw = work / f"{cloud.name}.raw"
            with open(raw, "wb") as fh:
                fh.truncate(DISK_BYTES)
            cc = None if cloud.cloud_config is None else (
                "#cloud-config\n" + yaml.safe_dump(cloud.cloud_config)).encode()
            try:
                disk.write_disk(str(raw), str(folder / "vmlinuz"), str(folder / "initrd"),
                                f"{disk.BASE_CMDLINE} {cloud.append}", title, cc, tools)
            except disk.InstallError as exc:
                raise BuildError(f"{cloud.name}: {exc}") from None
            out = work / cloud.name
            _convert(raw, cloud.fmt, out)
            raw.unlink(missing_ok=True)
            made[cloud.name] = {"format": cloud.fmt, "kernel_cmdline":
                                f"{disk.BASE_CMDLINE} {cloud.append}"}
        for name in made:
            os.replace(work / name, folder / name)
        manifest["disks"] = {"inputs": _inputs(manifest), "images": made,
                             "build_seconds": round(time.monotonic() - started, 1)}
        manifest["sizes"].update({n: (folder / n).stat().st_size for n in made})
        tmp = folder / "manifest.json.partial"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, folder / "manifest.json")
        say(f"built {len(made)} cloud disk images in {manifest['disks']['build_seconds']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert(raw: Path, fmt: str, out: Path) -> None:
    if fmt == "raw":
        os.replace(raw, out)
        return
    if fmt == "gce":  # GCE: a gzipped tar holding disk.raw (its zeros compress to nothing)
        with tarfile.open(out, "w:gz", format=tarfile.GNU_FORMAT) as tar:
            tar.add(raw, arcname=GCE_MEMBER)
        return
    options = {"qcow2": ["-c", "-o", "compat=0.10"], "vpc": ["-o", "subformat=dynamic"]}
    proc = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *options[fmt],
                           str(raw), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"qemu-img convert to {fmt} failed for {out.name}: "
                         f"{proc.stderr.strip()}")
