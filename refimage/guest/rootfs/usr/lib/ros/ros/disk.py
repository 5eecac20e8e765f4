"""The bootable disk `ros install` writes; also run on the build host for the cloud images.

Standard library only, so the image builder imports this very file. Layout (MBR, BIOS):
  1. FAT16 `RANCHEROS` (active): syslinux, /syslinux.cfg, /boot/vmlinuz, /boot/initrd
  2. ext4 `RANCHER_STATE` to the end of the disk, holding the given cloud-config as
     /var/lib/rancher/conf/cloud-config.d/user_config.yml
Every tool works at a byte offset into the target (a block device or a plain file), so
nothing is mounted and no partition device has to appear: the same steps run in the guest
and, unprivileged, on the build host.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

SECTOR = 512
BOOT_START = 2048  # sectors: partitions start 1 MiB in, as fdisk aligns them
BOOT_MIB = 160  # kernel + initrd (~90 MB) with room to spare
STATE_LABEL = "RANCHER_STATE"
BOOT_LABEL = "RANCHEROS"  # FAT labels hold 11 characters; the ISO's volume id too
USER_CONFIG = "var/lib/rancher/conf/cloud-config.d/user_config.yml"
# what every installed disk boots with; `-a` appends to it
BASE_CMDLINE = ("console=tty0 console=ttyS0,115200n8 rancher.autologin=ttyS0 "
                f"rancher.state.dev=LABEL={STATE_LABEL} rancher.state.wait")
MIN_BYTES = (BOOT_START + BOOT_MIB * 2048) * SECTOR + 64 * 1024 * 1024


class InstallError(Exception):
    pass


@dataclass(frozen=True)
class Tools:
    """Where the tools are: the guest's PATH, or files unpacked on the build host."""

    syslinux: str = "syslinux"
    mbr_bin: str = "/usr/lib/syslinux/mbr/mbr.bin"


def target_size(target: str) -> int:
    with open(target, "rb") as fh:
        return fh.seek(0, os.SEEK_END)


def syslinux_cfg(title: str, cmdline: str) -> str:
    # TIMEOUT is in tenths of a second: boot at once, unattended
    return (f"SERIAL 0 115200\nDEFAULT rancheros\nPROMPT 0\nTIMEOUT 1\n"
            f"LABEL rancheros\n  SAY {title}\n"
            f"  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd\n  APPEND {cmdline}\n")


def _entry(active: bool, ptype: int, start: int, count: int) -> bytes:
    chs = b"\xfe\xff\xff"  # LBA only: the CHS fields say "beyond 8 GB"
    return struct.pack("<B3sB3sII", 0x80 if active else 0, chs, ptype, chs, start, count)


def partition_table(total_sectors: int, mbr_code: bytes) -> tuple[bytes, int, int]:
    """Sector 0 and the state partition's (start, sectors)."""
    boot_sectors = BOOT_MIB * 2048
    state_start = BOOT_START + boot_sectors
    state_sectors = total_sectors - state_start
    table = (_entry(True, 0x0E, BOOT_START, boot_sectors)  # FAT16 LBA
             + _entry(False, 0x83, state_start, state_sectors) + bytes(32))
    sig = os.urandom(4)
    sector0 = mbr_code[:440].ljust(440, b"\0") + sig + b"\0\0" + table + b"\x55\xaa"
    return sector0, state_start, state_sectors


def _run(argv: list[str], **kw: object) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise InstallError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")


def write_disk(target: str, vmlinuz: str, initrd: str, cmdline: str, title: str,
               cloud_config: bytes | None = None, tools: Tools | None = None) -> None:
    """Make `target` (a disk device or a file of its final size) a bootable installed OS."""
    tools = tools or Tools()
    size = target_size(target)
    if size < MIN_BYTES:
        raise InstallError(f"{target} holds {size >> 20} MiB; an install needs at least "
                           f"{MIN_BYTES >> 20} MiB")
    with open(tools.mbr_bin, "rb") as fh:
        mbr = fh.read()
    sector0, state_start, state_sectors = partition_table(size // SECTOR, mbr)
    with open(target, "r+b") as fh:
        # zero the start of each partition: no stale label of an earlier install survives
        for start in (0, BOOT_START * SECTOR, state_start * SECTOR):
            fh.seek(start)
            fh.write(bytes(1 << 20))
        fh.seek(0)
        fh.write(sector0)
        fh.flush()
        os.fsync(fh.fileno())
    boot_off = BOOT_START * SECTOR
    _run(["mkfs.fat", "-I", "-F", "16", "-n", BOOT_LABEL, "--offset", str(BOOT_START), target,
          str(BOOT_MIB * 1024)])
    _run([tools.syslinux, "--offset", str(boot_off), "--install", target])
    image = f"{target}@@{boot_off}"
    with tempfile.TemporaryDirectory(prefix="ros-install-") as tmp:
        cfg = os.path.join(tmp, "syslinux.cfg")
        with open(cfg, "w") as fh:
            fh.write(syslinux_cfg(title, cmdline))
        _run(["mmd", "-i", image, "::/boot"])
        _run(["mcopy", "-i", image, vmlinuz, "::/boot/vmlinuz"])
        _run(["mcopy", "-i", image, initrd, "::/boot/initrd"])
        _run(["mcopy", "-i", image, cfg, "::/syslinux.cfg"])
        seed = os.path.join(tmp, "state")
        os.makedirs(seed)
        if cloud_config is not None:
            path = os.path.join(seed, USER_CONFIG)
            os.makedirs(os.path.dirname(path))
            with open(path, "wb") as fh:
                fh.write(cloud_config)
            os.chmod(path, 0o600)
        _run(["mkfs.ext4", "-q", "-F", "-L", STATE_LABEL, "-E",
              f"offset={state_start * SECTOR}", "-d", seed, target,
              f"{state_sectors * SECTOR // 1024}k"])


def locate_tools() -> list[str]:
    """The tools write_disk needs that are not on PATH."""
    return [t for t in ("mkfs.fat", "mkfs.ext4", "mcopy", "mmd")
            if shutil.which(t) is None]
