"""Raspberry Pi SD card images: an MBR, a vfat boot partition and an ext4 root partition.

Written and read without mounting anything (mkfs.vfat and mtools, `mke2fs -d`), so
neither root nor loop devices are needed. The lab reads a card the way the Pi's firmware
does: `config.txt` names the kernel, the initramfs and the device tree on the boot
partition, `cmdline.txt` holds the kernel command line.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ImageError

SECTOR = 512
ALIGN = 4 << 20  # partitions start on 4 MiB boundaries, as the Pi's own images do
FAT32_LBA = 0x0C
LINUX = 0x83
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@dataclass(frozen=True)
class Partition:
    number: int
    type: int
    start: int  # bytes
    size: int  # bytes


def partitions(card: Path) -> list[Partition]:
    """The primary partitions in the card's MBR."""
    with card.open("rb") as fh:
        mbr = fh.read(SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise ImageError(f"{card} has no MBR partition table (not an SD card image)")
    found = []
    for i in range(4):
        entry = mbr[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = entry[4]
        start, count = struct.unpack("<II", entry[8:16])
        if ptype and count:
            found.append(Partition(i + 1, ptype, start * SECTOR, count * SECTOR))
    return found


def _mbr(parts: list[tuple[int, int, int]]) -> bytes:
    """An MBR for (type, start bytes, size bytes) partitions (LBA only; CHS left at max)."""
    table = b""
    for ptype, start, size in parts:
        chs = b"\xfe\xff\xff"
        table += struct.pack("<B3sB3sII", 0, chs, ptype, chs, start // SECTOR, size // SECTOR)
    table = table.ljust(64, b"\0")
    disk_id = struct.pack("<I", 0x524F534C)  # "ROSL"; fixed, so the image is reproducible
    return b"\0" * 440 + disk_id + b"\0\0" + table + b"\x55\xaa"


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise ImageError(
            f"{argv[0]} is missing: install dosfstools, mtools and e2fsprogs (./setup does)"
        ) from None
    if proc.returncode != 0:
        raise ImageError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _tree_bytes(tree: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def write_card(
    out: Path,
    boot_files: dict[str, Path],
    root_tree: Path,
    *,
    boot_label: str,
    root_label: str = "rootfs",
) -> None:
    """Write an SD card image: partition 1 vfat with `boot_files`, partition 2 ext4 of the tree."""
    work = Path(tempfile.mkdtemp(prefix="roslab-sd-", dir=out.parent))
    try:
        boot_bytes = sum(p.stat().st_size for p in boot_files.values())
        boot_size = _round_up(boot_bytes + (32 << 20), ALIGN)  # room for a user's own files
        boot = work / "boot.vfat"
        _run(["mkfs.vfat", "-C", "-n", boot_label[:11].upper(), str(boot), str(boot_size // 1024)],
             "mkfs.vfat")
        for name, src in boot_files.items():
            _run(["mcopy", "-i", str(boot), "-o", str(src), f"::{name}"], f"copying {name}",
                 MTOOLS_ENV)
        # ext4 with room to spare: Docker writes its state and the user's containers here
        root_size = _round_up(int(_tree_bytes(root_tree) * 1.3) + (256 << 20), ALIGN)
        root = work / "root.ext4"
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-i", "8192", "-L", root_label,
              "-d", str(root_tree), str(root), f"{root_size // 1024}k"], "mke2fs")
        boot_start = ALIGN
        root_start = boot_start + boot_size
        with open(work / "card.img", "wb") as fh:
            fh.write(_mbr([(FAT32_LBA, boot_start, boot_size), (LINUX, root_start, root_size)]))
            for start, part in ((boot_start, boot), (root_start, root)):
                fh.seek(start)
                with part.open("rb") as src:
                    shutil.copyfileobj(src, fh, 4 << 20)
            fh.truncate(root_start + root_size)
        (work / "card.img").rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _boot_partition(card: Path) -> Partition:
    parts = partitions(card)
    if not parts or parts[0].type not in (0x0B, 0x0C, 0x0E, 0x06):
        raise ImageError(f"{card}: the first partition is not a vfat boot partition")
    return parts[0]


def boot_names(card: Path) -> list[str]:
    """Names of the files at the top of the boot partition."""
    part = _boot_partition(card)
    out = _run(["mdir", "-b", "-i", f"{card}@@{part.start}", "::"], f"reading {card}", MTOOLS_ENV)
    return [line.rsplit("/", 1)[-1] for line in out.split()]


def copy_from_boot(card: Path, name: str, dest: Path) -> Path:
    """Copy one file of the boot partition to `dest`."""
    part = _boot_partition(card)
    _run(["mcopy", "-n", "-i", f"{card}@@{part.start}", f"::{name}", str(dest)],
         f"reading {name} from {card}", MTOOLS_ENV)
    return dest


def write_boot_file(card: Path, name: str, text: str) -> None:
    """Replace one file at the top of the card's boot partition (the card is written)."""
    part = _boot_partition(card)
    with tempfile.TemporaryDirectory(prefix="roslab-boot-") as tmp:
        source = Path(tmp) / name
        source.write_text(text)
        _run(["mcopy", "-o", "-i", f"{card}@@{part.start}", str(source), f"::{name}"],
             f"writing {name} to {card}", MTOOLS_ENV)


def pi_config(text: str) -> dict[str, str]:
    """The keys of a Pi `config.txt` that decide what boots (others are firmware settings)."""
    conf = {"kernel": "kernel8.img", "device_tree": "", "initramfs": ""}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("initramfs "):
            conf["initramfs"] = line.split()[1]
        elif "=" in line:
            key, _, value = line.partition("=")
            if key.strip() in conf:
                conf[key.strip()] = value.strip()
    return conf
