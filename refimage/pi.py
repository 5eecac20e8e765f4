"""The arm64 release artifacts: `rootfs_arm64.tar.gz` and `rancheros-raspberry-pi64.zip`.

The zip holds an SD card image laid out as RancherOS's: a vfat boot partition (kernel,
the Pi 3 device tree, `config.txt`, `cmdline.txt`) and an ext4 root partition holding the
same OS tree as the initrd. The Debian kernel has the SD host and ext4 as modules, so the
boot partition also carries a small first-stage initramfs that loads them and switches
to the root partition (Debian's own Pi images do the same with initramfs-tools).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from lab import sdcard
from refimage import archive, rootfs

ROOTFS_TAR = "rootfs_arm64.tar.gz"
PI_ZIP = "rancheros-raspberry-pi64.zip"
PI_IMG = "rancheros-raspberry-pi64.img"
# What the first stage needs to reach the root partition on a Pi 3: its two SD hosts
# (sdhost for the card slot, sdhci-iproc for the other controller) and ext4, with the
# crc32c it checksums metadata with (a soft dependency, so modules.dep does not list it).
SD_MODULES = [
    "kernel/drivers/mmc/host/bcm2835.ko",
    "kernel/drivers/mmc/host/sdhci-iproc.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/fs/ext4/ext4.ko",
]
CONFIG_TXT = """# Read by the Pi's firmware (and by roslab, which boots the card the same way)
arm_64bit=1
enable_uart=1
kernel=kernel8.img
device_tree={dtb}
initramfs initrd followkernel
"""


def cmdline_txt(password: str = "rancher") -> str:
    """As the release's, plus the mini-UART: with the upstream device tree the Pi 3's
    serial header is ttyS1 (the PL011 serves Bluetooth), and the last console= wins."""
    return (
        "console=tty1 console=ttyAMA0,115200 console=ttyS1,115200 root=/dev/mmcblk0p2 "
        "rootfstype=ext4 rootwait rw init=/init cgroup_enable=memory swapaccount=1 "
        f"rancher.password={password} rancher.autologin=ttyAMA0 rancher.autologin=ttyS1\n"
    )


def _ordered_modules(moddir: Path, wanted: list[str]) -> list[str]:
    """`wanted` and their dependencies, each after what it needs (insmod order)."""
    deps = rootfs.module_deps(moddir)
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps.get(mod, []):
            visit(dep)
        order.append(mod)

    for mod in wanted:
        visit(mod)
    return order


def write_boot_initrd(root: Path, release: str, work: Path, out: Path) -> None:
    """The first-stage initramfs: busybox, the SD and ext4 modules, and guest/sdboot/init."""
    tree = work / "sdboot"
    moddir = root / "usr/lib/modules" / release
    mods = _ordered_modules(moddir, SD_MODULES)
    (tree / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "newroot"):
        (tree / d).mkdir()
    shutil.copy2(root / "usr/bin/busybox", tree / "bin/busybox")
    for applet in ("sh", "mount", "umount", "insmod", "switch_root", "sleep", "cat", "mkdir",
                   "echo"):
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "sbin").symlink_to("bin")
    for mod in mods:
        (tree / "modules" / mod).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / mod, tree / "modules" / mod)
    (tree / "modules.order").write_text("\n".join(mods) + "\n")
    init = Path(__file__).parent / "guest/sdboot/init"
    shutil.copy2(init, tree / "init")
    os.chmod(tree / "init", 0o755)
    archive.write_initrd(tree, out)


def write_rootfs_tar(root: Path, out: Path) -> None:
    """The OS tree as the release's rootfs tarball (hard links kept, owners numeric)."""
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry, filter=_numeric_owner)
    tmp.rename(out)


def _numeric_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""
    return info


def write_pi_zip(
    out: Path, *, vmlinuz: Path, dtb: Path, boot_initrd: Path, root: Path, label: str,
    work: Path,
) -> None:
    """rancheros-raspberry-pi64.zip: one SD card image, flashable as it is."""
    boot = work / "pi-boot"
    boot.mkdir()
    (boot / "config.txt").write_text(CONFIG_TXT.format(dtb=dtb.name))
    (boot / "cmdline.txt").write_text(cmdline_txt())
    files = {
        "kernel8.img": vmlinuz,
        dtb.name: dtb,
        "initrd": boot_initrd,
        "config.txt": boot / "config.txt",
        "cmdline.txt": boot / "cmdline.txt",
    }
    card = work / PI_IMG
    sdcard.write_card(card, files, root, boot_label=label)
    tmp = out.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        zf.write(card, PI_IMG)
    tmp.rename(out)
    card.unlink()
