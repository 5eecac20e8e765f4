"""The BIOS-bootable ISO (isolinux), made in Python with pycdlib, and its checksums file."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pycdlib

from lab.errors import BuildError

# RancherOS's ISO for VMware. Here the same kernel and initrd as rancheros.iso: the one
# initrd carries the drivers of the hardware VMware shows a guest, checked at build time.
VMWARE_ISO = "rancheros-vmware.iso"
VMWARE_DRIVERS = {  # module -> the device it drives (libvirt's `vmware` hardware profile)
    "vmxnet3": "VMXNET3 NIC",
    "vmw_pvscsi": "PVSCSI disk controller",
    "ata_piix": "IDE CD-ROM (PIIX)",
    "sr_mod": "SCSI/ATAPI CD-ROM",
    "sd_mod": "SCSI disks",
}


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


def vmware_variant(modules: Path) -> dict:
    """The manifest entry of the VMware ISO: its drivers, each found in the module tree
    (a missing one fails the build rather than shipping an ISO that cannot see its NIC)."""
    found = {m.name.split(".ko")[0]: m.relative_to(modules).as_posix()
             for m in modules.rglob("*.ko*")}
    missing = [name for name in VMWARE_DRIVERS if name not in found]
    if missing:
        raise BuildError(f"{VMWARE_ISO}: the kernel modules {', '.join(missing)} are not in "
                         f"the image (see MODULE_DIRS in refimage/rootfs.py)")
    return {"hardware": "vmware", "same_initrd_as": "rancheros.iso",
            "drivers": {name: {"for": what, "module": found[name]}
                        for name, what in VMWARE_DRIVERS.items()}}
