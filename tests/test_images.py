"""Image kinds and arch detection: bad images stop before any machine starts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib
import pytest

from drivers.machines import make_machine
from lab.errors import ImageError
from lab.images import ISO, KERNEL, Image, kernel_arch


def _arm64_folder(tmp_path: Path) -> Path:
    header = bytearray(0x40)
    header[0x38:0x3C] = b"ARM\x64"
    (tmp_path / "vmlinuz").write_bytes(bytes(header))
    (tmp_path / "initrd").write_bytes(b"")
    return tmp_path


def test_kernel_arch_from_headers(tiny_guests: dict[str, Path]) -> None:
    assert kernel_arch((tiny_guests["shell"] / "vmlinuz").read_bytes()[:0x240]) == "x86_64"
    assert kernel_arch(bytes(0x38) + b"ARM\x64") == "aarch64"
    assert kernel_arch(b"\0" * 0x240) is None


def test_folder_image(tiny_guests: dict[str, Path]) -> None:
    image = Image.open(tiny_guests["shell"])
    assert (image.kind, image.arch) == (KERNEL, "x86_64")


def test_missing_image_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=f"{tmp_path / 'nope'} does not exist"):
        make_machine("qemu", tmp_path / "nope", "x86_64", None, "configdrive", tmp_path, "tcg")


def test_folder_without_initrd(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"x")
    with pytest.raises(ImageError, match="has no initrd"):
        Image.open(tmp_path)


def test_wrong_arch_stops_before_boot(tmp_path: Path) -> None:
    folder = _arm64_folder(tmp_path)
    with pytest.raises(ImageError,
                       match=r"vmlinuz is an arm64 Image \(aarch64\), but this run is for x86_64"):
        make_machine("qemu", folder, "x86_64", None, "configdrive", tmp_path, "tcg")


def test_iso_arch_is_read_from_the_kernel_inside(tmp_path: Path,
                                                 tiny_guests: dict[str, Path]) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(rock_ridge="1.09", joliet=3)
    iso.add_directory("/BOOT", rr_name="boot", joliet_path="/boot")
    head = (tiny_guests["shell"] / "vmlinuz").read_bytes()[:4096]
    iso.add_fp(io.BytesIO(head), len(head), "/BOOT/VMLINUZ.;1", rr_name="vmlinuz",
               joliet_path="/boot/vmlinuz")
    iso.write(str(tmp_path / "x.iso"))
    iso.close()
    image = Image.open(tmp_path / "x.iso")
    assert (image.kind, image.arch) == (ISO, "x86_64")
    with pytest.raises(ImageError,
                       match=r"is an x86 bzImage \(x86_64\), but this run is for aarch64"):
        image.check_arch("aarch64")


def test_unknown_kind(tmp_path: Path) -> None:
    (tmp_path / "x.vmdk").write_bytes(b"")
    with pytest.raises(ImageError, match="unknown kind"):
        Image.open(tmp_path / "x.vmdk")


def test_a_misspelt_machine_option_is_refused_before_anything_is_made(
        tiny_guests: dict[str, Path], tmp_path: Path) -> None:
    """`cpu=1` for `cpus=1` used to be ignored silently (a 2-vCPU machine booted)."""
    from lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown option\(s\) cpu; known are .*cpus"):
        make_machine("qemu", tiny_guests["shell"], "x86_64", None, "configdrive", tmp_path,
                     "tcg", cpu=1)
    assert list(tmp_path.iterdir()) == []  # no work folder left behind


@pytest.mark.parametrize(("macs", "message"), [
    (["52:54:00:12:34:5"], "is not a MAC address"),
    (["53:54:00:12:34:56"], "is a multicast address"),
    (["52:54:00:12:34:56"] * 2, "a MAC is given twice"),
], ids=["malformed", "multicast", "twice"])
def test_extra_nics_are_checked_before_anything_is_made(
        tiny_guests: dict[str, Path], tmp_path: Path, macs: list[str], message: str) -> None:
    from lab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_machine("qemu", tiny_guests["shell"], "x86_64", None, "configdrive", tmp_path,
                     "tcg", extra_nics=macs)
    assert list(tmp_path.iterdir()) == []


def test_a_user_data_script_with_no_way_to_the_key_is_refused(
        tiny_guests: dict[str, Path], tmp_path: Path) -> None:
    """A script carries no SSH key: by a config drive the machine would be unreachable."""
    from lab.errors import ConfigError
    from lab.ssh import KeyPair

    key = KeyPair.generate(tmp_path)
    work = tmp_path / "machines"
    work.mkdir()
    with pytest.raises(ConfigError, match="a user-data script carries no SSH key"):
        make_machine("qemu", tiny_guests["shell"], "x86_64", "#!/bin/sh\ntrue\n",
                     "configdrive", work, "tcg", ssh_key=key)
    assert list(work.iterdir()) == []


def test_a_release_disk_reads_the_datasources_its_manifest_records(tmp_path: Path) -> None:
    """A cloud's disk of the reference build reads only the datasources baked into its own
    kernel command line (its manifest records that line); other images do not say."""
    from lab.images import baked_datasources

    disk = tmp_path / "rancheros-gce.img"
    disk.write_bytes(bytes(1 << 20))
    line = 'console=ttyS0 rancher.cloud_init.datasources=["gce", ec2] printk.devkmsg=on'
    (tmp_path / "manifest.json").write_text(json.dumps({
        "os_name": "RoslabOS", "sizes": {disk.name: 1 << 20},
        "disks": {"images": {disk.name: {"format": "raw", "kernel_cmdline": line}}}}))
    assert baked_datasources(Image.open(disk)) == ["gce", "ec2"]
    other = tmp_path / "other.img"
    other.write_bytes(bytes(1 << 20))
    assert baked_datasources(Image.open(other)) is None  # not the release's: no manifest
