"""The installer's disk layout (the guest's ros/disk.py, run on a file as the build runs it)
and the cloud disk images `roslab image build --disks` makes from it."""

from __future__ import annotations

import json
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from lab.images import DISK, GCE_TARBALL, Image
from refimage import disks
from refimage.debs import Apt, extract

CMDLINE = "console=ttyS0 rancher.state.dev=LABEL=RANCHER_STATE roslab.test=1"


@pytest.fixture(scope="module")
def disk_module():  # type: ignore[no-untyped-def]
    return disks.guest_disk_module()


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory, disk_module):  # type: ignore[no-untyped-def]
    where = tmp_path_factory.mktemp("syslinux")
    for pkg in Apt("x86_64").fetch(["syslinux", "syslinux-common"]):
        if pkg.name.startswith("syslinux"):
            extract(pkg.path, where)
    return disk_module.Tools(syslinux=str(where / "usr/bin/syslinux"),
                             mbr_bin=str(where / "usr/lib/syslinux/mbr/mbr.bin"))


def _fat(image: Path, offset: int, *args: str) -> str:
    return subprocess.run([*args[:1], "-i", f"{image}@@{offset}", *args[1:]],
                          capture_output=True, text=True, check=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout


def _ext4_file(image: Path, start: int, size: int, path: str, tmp: Path) -> tuple[str, str]:
    """(label, contents of `path`) of the ext4 partition at byte `start`."""
    part = tmp / "state.ext4"
    with open(image, "rb") as src, open(part, "wb") as dst:
        src.seek(start)
        dst.write(src.read(size))
    label = subprocess.run(["e2label", str(part)], capture_output=True, text=True,
                           check=True).stdout.strip()
    cat = subprocess.run(["debugfs", "-R", f"cat {path}", str(part)], capture_output=True,
                         text=True).stdout
    return label, cat


def test_installed_disk_layout(tmp_path: Path, disk_module, tools) -> None:  # type: ignore[no-untyped-def]
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"K" * 4096)
    initrd.write_bytes(b"I" * 8192)
    target = tmp_path / "disk.img"
    with open(target, "wb") as fh:
        fh.truncate(disk_module.MIN_BYTES)
    disk_module.write_disk(str(target), str(kernel), str(initrd), CMDLINE, "Test OS",
                           b"#cloud-config\nhostname: from-install\n", tools)
    sector0 = target.read_bytes()[:512]
    assert sector0[510:] == b"\x55\xaa"
    entries = [struct.unpack("<B3sB3sII", sector0[446 + 16 * i:462 + 16 * i]) for i in range(2)]
    (boot_flag, _, boot_type, _, boot_start, boot_len), (_, _, state_type, _, state_start,
                                                          state_len) = entries
    assert (boot_flag, boot_type, boot_start) == (0x80, 0x0E, 2048)
    assert state_type == 0x83 and state_start == boot_start + boot_len
    assert (state_start + state_len) * 512 == disk_module.MIN_BYTES
    listing = _fat(target, boot_start * 512, "mdir", "-a", "-b", "::/")
    assert "::/ldlinux.sys" in listing and "::/syslinux.cfg" in listing
    cfg = _fat(target, boot_start * 512, "mtype", "::/syslinux.cfg")
    assert f"APPEND {CMDLINE}\n" in cfg and "KERNEL /boot/vmlinuz" in cfg
    assert _fat(target, boot_start * 512, "mtype", "::/boot/initrd") == "I" * 8192
    assert "RANCHEROS" in _fat(target, boot_start * 512, "mlabel", "-s", "::")
    label, config = _ext4_file(target, state_start * 512, state_len * 512,
                               "/" + disk_module.USER_CONFIG, tmp_path)
    assert label == "RANCHER_STATE"
    assert config == "#cloud-config\nhostname: from-install\n"


def test_too_small_a_disk_is_refused_before_writing(tmp_path: Path, disk_module,  # type: ignore[no-untyped-def]
                                                    tools) -> None:
    target = tmp_path / "small.img"
    target.write_bytes(b"\1" * 4096)
    with pytest.raises(disk_module.InstallError, match="at least"):
        disk_module.write_disk(str(target), str(target), str(target), CMDLINE, "x", None, tools)
    assert target.read_bytes() == b"\1" * 4096


@pytest.mark.refimage
def test_cloud_disks_are_listed_with_their_datasource(tmp_path: Path) -> None:
    """`roslab image build --disks`: every cloud disk in the manifest, in its cloud's format,
    its loader's command line naming the cloud's datasource; the lab opens each as a disk."""
    from refimage.build import ensure_image

    folder = disks.ensure_disks(ensure_image("x86_64"))
    manifest = json.loads((folder / "manifest.json").read_text())
    formats = {"qcow2": "qcow2", "raw": "raw", "vpc": "vpc", "gce": "raw"}
    for cloud in disks.CLOUD_DISKS:
        path = folder / cloud.name
        assert manifest["sizes"][cloud.name] == path.stat().st_size
        listed = manifest["disks"]["images"][cloud.name]
        datasource = cloud.append.split("rancher.cloud_init.datasources=")[1].split()[0]
        assert f"rancher.cloud_init.datasources={datasource}" in listed["kernel_cmdline"]
        image = Image.open(path)
        assert image.kind == (GCE_TARBALL if cloud.fmt == "gce" else DISK)
        if cloud.fmt == "gce":
            with tarfile.open(path) as tar:
                assert tar.getnames() == ["disk.raw"]
            continue
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["format"] == formats[cloud.fmt] == (image.disk_format or "raw")
        raw = tmp_path / f"{cloud.name}.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(raw)], check=True)
        cfg = _fat(raw, 2048 * 512, "mtype", "::/syslinux.cfg")
        raw.unlink()
        assert f"rancher.cloud_init.datasources={datasource}" in cfg
