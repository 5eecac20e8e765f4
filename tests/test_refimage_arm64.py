"""The arm64 release artifacts are laid out as RancherOS's, and images of one arch are
refused by a run for the other before anything boots."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from drivers.machines import make_machine
from lab import sdcard
from lab.errors import ImageError
from lab.images import SDCARD, Image
from refimage import pi
from refimage.build import ARTIFACTS, ensure_image

pytestmark = pytest.mark.refimage


@pytest.fixture(scope="module")
def arm64() -> Path:
    return ensure_image("aarch64")


def test_release_files_are_all_there(arm64: Path) -> None:
    assert sorted(p.name for p in arm64.iterdir()) == sorted(ARTIFACTS["aarch64"])
    assert (arm64 / "vmlinuz").read_bytes()[0x38:0x3C] == b"ARM\x64"  # an arm64 Image
    sums = (arm64 / "iso-checksums.txt").read_text()
    assert f"  {pi.PI_ZIP}" in sums and f"  {pi.ROOTFS_TAR}" in sums


def test_rootfs_tarball_holds_the_os(arm64: Path) -> None:
    with tarfile.open(arm64 / pi.ROOTFS_TAR) as tar:
        names = set(tar.getnames())
        busybox = tar.getmember("usr/bin/busybox")
        assert busybox.isfile() and tar.extractfile(busybox).read(20)[18] == 0xB7  # EM_AARCH64
    for path in ("init", "usr/sbin/dockerd", "usr/share/ros/os-config.yml",
                 "var/lib/system-docker", "etc/ssh/sshd_config"):
        assert path in names, path


def test_pi_zip_is_a_card_with_vfat_boot_and_ext4_root(arm64: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(arm64 / pi.PI_ZIP) as zf:
        assert zf.namelist() == [pi.PI_IMG]
        zf.extract(pi.PI_IMG, tmp_path)
    card = tmp_path / pi.PI_IMG
    boot, root = sdcard.partitions(card)
    assert (boot.type, root.type) == (sdcard.FAT32_LBA, sdcard.LINUX)
    with card.open("rb") as fh:
        fh.seek(root.start + 1024)
        superblock = fh.read(1024)
    assert superblock[56:58] == b"\x53\xef", "partition 2 is not ext4"
    assert superblock[120:126] == b"rootfs"
    names = sdcard.boot_names(card)
    assert {"kernel8.img", "bcm2837-rpi-3-b.dtb", "config.txt", "cmdline.txt",
            "initrd"} <= set(names)
    cmdline = sdcard.copy_from_boot(card, "cmdline.txt", tmp_path / "cmdline.txt").read_text()
    for arg in ("console=ttyAMA0,115200", "root=/dev/mmcblk0p2", "rootfstype=ext4",
                "rancher.autologin=ttyAMA0", "init=/init"):
        assert arg in cmdline.split(), arg


def test_pi_zip_opens_as_an_sd_card_image(arm64: Path) -> None:
    image = Image.open(arm64 / pi.PI_ZIP)
    assert (image.kind, image.arch) == (SDCARD, "aarch64")
    assert image.dtb is not None and image.dtb.name == "bcm2837-rpi-3-b.dtb"
    assert "root=/dev/mmcblk0p2" in image.cmdline


@pytest.mark.parametrize("image, run_arch, found", [
    ("aarch64", "x86_64", "vmlinuz is an arm64 Image (aarch64)"),
    ("pi-zip", "x86_64", "kernel8.img is an arm64 Image (aarch64)"),
    ("x86_64", "aarch64", "vmlinuz is an x86 bzImage (x86_64)"),
])
def test_an_image_of_the_other_arch_is_refused_before_boot(
    image: str, run_arch: str, found: str, tmp_path: Path
) -> None:
    path = ensure_image("aarch64") / pi.PI_ZIP if image == "pi-zip" else ensure_image(image)
    with pytest.raises(ImageError) as err:
        make_machine("qemu", path, run_arch, None, "default", tmp_path, "tcg")
    assert found in str(err.value) and f"this run is for {run_arch}" in str(err.value)
    assert not list(tmp_path.iterdir()), "a refused image left files behind"


def test_a_zip_without_a_card_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("README", "no card here")
    with pytest.raises(ImageError, match=r"expected one \.img inside, found none"):
        Image.open(tmp_path / "empty.zip")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ImageError, match="is not a readable zip"):
        Image.open(tmp_path / "bad.zip")


def test_a_card_without_a_partition_table_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("card.img", bytes(4096))
    (tmp_path / "blank.zip").write_bytes(buf.getvalue())
    with pytest.raises(ImageError, match="has no MBR partition table"):
        Image.open(tmp_path / "blank.zip")


NOT_APPLICABLE = '''
import pytest

@pytest.mark.needs("ssh")
def test_needs_ssh(machine):
    raise AssertionError("must not run")

@pytest.mark.needs("network")
def test_needs_network(machine):
    raise AssertionError("must not run")

@pytest.mark.cloud_config({"hostname": "x"}, datasource="nocloud")
def test_needs_a_config_drive(machine):
    raise AssertionError("must not run")

@pytest.mark.cloud_config("#cloud-config\\nx: [", allow_invalid=True)
def test_needs_yaml_text(machine):
    raise AssertionError("must not run")
'''


def test_checks_a_pi_cannot_make_are_reported_not_applicable(arm64: Path, tmp_path: Path) -> None:
    """On raspi3b, what needs SSH, a network, a config drive or YAML text is reported, with the
    reason, as not applicable: neither passed nor failed, and no machine is booted for it."""
    (tmp_path / "test_na.py").write_text(NOT_APPLICABLE)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "test_na.py", "-p", "no:cacheprovider", "-rs",
         "--platform", "qemu", "--arch", "aarch64", "--image", str(arm64 / pi.PI_ZIP),
         "--accel", "tcg", "--rootdir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 skipped" in out.stdout, out.stdout
    for reason in (
        "not applicable on qemu raspi3b: QEMU's raspi3b model has no network (no USB "
        "Ethernet), so no SSH",
        "not applicable on qemu raspi3b: QEMU's raspi3b model has no network interface",
        "not applicable on qemu raspi3b: it delivers cloud-config by cmdline only, not nocloud",
        "not applicable on qemu raspi3b: its cloud-config goes by cmdline, which carries keys",
    ):
        assert reason in out.stdout, out.stdout
