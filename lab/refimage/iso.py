"""The BIOS-bootable ISO (isolinux), made in Python with pycdlib, and its checksums file."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pycdlib


def isolinux_cfg(os_name: str, version: str, cmdline: str) -> str:
    # TIMEOUT is in tenths of a second: boot at once, as an unattended lab wants.
    return (
        "SERIAL 0 115200\n"
        "DEFAULT rancheros\nPROMPT 0\nTIMEOUT 1\n"
        f"LABEL rancheros\n  SAY {os_name} {version}\n"
        f"  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd\n  APPEND {cmdline}\n"
    )


def write_iso(
    out: Path, *, vmlinuz: Path, initrd: Path, isolinux_bin: Path, ldlinux: Path, cfg: str
) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", joliet=3, vol_ident="RancherOS")
    for d in ("boot", "isolinux"):
        iso.add_directory(f"/{d.upper()}", rr_name=d, joliet_path=f"/{d}")
    cfg_bytes = cfg.encode()
    entries = [
        (str(isolinux_bin), "/ISOLINUX/ISOLINUX.BIN;1", "isolinux/isolinux.bin"),
        (str(ldlinux), "/ISOLINUX/LDLINUX.C32;1", "isolinux/ldlinux.c32"),
        (str(vmlinuz), "/BOOT/VMLINUZ.;1", "boot/vmlinuz"),
        (str(initrd), "/BOOT/INITRD.;1", "boot/initrd"),
    ]
    for src, iso_path, real in entries:
        iso.add_file(src, iso_path, rr_name=real.split("/")[-1], joliet_path="/" + real)
    iso.add_fp(
        io.BytesIO(cfg_bytes),
        len(cfg_bytes),
        "/ISOLINUX/ISOLINUX.CFG;1",
        rr_name="isolinux.cfg",
        joliet_path="/isolinux/isolinux.cfg",
    )
    iso.add_eltorito(
        "/ISOLINUX/ISOLINUX.BIN;1",
        bootcatfile="/ISOLINUX/BOOT.CAT;1",
        boot_load_size=4,
        boot_info_table=True,
        media_name="noemul",
    )
    tmp = out.with_suffix(".partial")
    iso.write(str(tmp))
    iso.close()
    tmp.rename(out)


def write_checksums(folder: Path, names: list[str], out: Path) -> None:
    """`iso-checksums.txt` as a RancherOS release has it: per algorithm, `<algo>: <hex>  <file>`."""
    lines = []
    for algo in ("md5", "sha1", "sha256", "sha512"):
        for name in names:
            h = hashlib.new(algo)
            with open(folder / name, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            lines.append(f"{algo}: {h.hexdigest()}  {name}")
    out.write_text("\n".join(lines) + "\n")
