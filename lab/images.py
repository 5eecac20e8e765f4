"""Images a user brings: what kind each is and which arch it is for, checked before any boot.

Kinds: a folder with `vmlinuz` + `initrd` (direct kernel boot), an `.iso` (CD-ROM boot),
a disk (`.img`/`.qcow2`). The arch is read from the kernel itself (the file's boot
header), so an arm64 kernel handed to an x86_64 run fails here, not after a silent hang.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import ImageError

ARCHES = ("x86_64", "aarch64")
KERNEL = "kernel"
ISO = "iso"
DISK = "disk"
DISK_SUFFIXES = {".img": "raw", ".raw": "raw", ".qcow2": "qcow2"}
KERNEL_NAMES = ("vmlinuz", "vmlinuz-*", "bzImage", "Image")
INITRD_NAMES = ("initrd", "initrd.img", "initrd-*", "initramfs*")


def kernel_arch(header: bytes) -> str | None:
    """The arch of a Linux kernel from its first bytes (x86 bzImage or arm64 Image)."""
    if header[0x202:0x206] == b"HdrS":  # x86 boot protocol header
        return "x86_64"
    if header[0x38:0x3C] == b"ARM\x64":  # arm64 Image header magic
        return "aarch64"
    return None


def _first(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class Image:
    path: Path
    kind: str  # KERNEL, ISO or DISK
    arch: str | None  # None when the image gives no way to tell (a disk)
    kernel: Path | None = None
    initrd: Path | None = None
    disk_format: str | None = None
    manifest: dict = field(default_factory=dict, compare=False)

    @property
    def version(self) -> str | None:
        return self.manifest.get("version")

    @classmethod
    def open(cls, path: Path | str) -> Image:
        path = Path(path).expanduser()
        if not path.exists():
            raise ImageError(f"image {path} does not exist")
        if path.is_dir():
            return cls._folder(path)
        suffix = path.suffix.lower()
        if suffix == ".iso":
            return cls(path, ISO, iso_arch(path))
        if suffix in DISK_SUFFIXES:
            return cls(path, DISK, None, disk_format=DISK_SUFFIXES[suffix])
        raise ImageError(
            f"image {path}: unknown kind; give a folder with vmlinuz and initrd, "
            "an .iso, or a disk (.img, .qcow2)"
        )

    @classmethod
    def _folder(cls, path: Path) -> Image:
        kernel = _first(path, KERNEL_NAMES)
        initrd = _first(path, INITRD_NAMES)
        if kernel is None or initrd is None:
            missing = " and ".join(
                n for n, p in (("vmlinuz", kernel), ("initrd", initrd)) if p is None
            )
            raise ImageError(
                f"image folder {path} has no {missing} (direct kernel boot needs both)"
            )
        with kernel.open("rb") as f:
            arch = kernel_arch(f.read(0x240))
        if arch is None:
            raise ImageError(
                f"{kernel} is not a Linux kernel this lab knows (x86 bzImage, arm64 Image)"
            )
        manifest: dict = {}
        if (path / "manifest.json").is_file():
            try:
                manifest = json.loads((path / "manifest.json").read_text())
            except ValueError as exc:
                raise ImageError(f"{path / 'manifest.json'} is not JSON: {exc}") from exc
        return cls(path, KERNEL, arch, kernel=kernel, initrd=initrd, manifest=manifest)

    def check_arch(self, arch: str) -> None:
        if arch not in ARCHES:
            raise ImageError(f"unknown arch {arch!r}: known arches are {', '.join(ARCHES)}")
        if self.arch is not None and self.arch != arch:
            what = self.kernel or self.path
            raise ImageError(f"image {what} is for {self.arch}, but this run is for {arch}")


def _iso_kernel(path: Path, dest: Path | None) -> bytes | None:
    """The head of the first kernel inside an ISO (copied whole to `dest` if given)."""
    import io

    import pycdlib  # imported here: only ISO images need it

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except Exception as exc:  # pycdlib raises its own and OSError; both mean "not an ISO"
        raise ImageError(f"{path} is not a readable ISO 9660 image: {exc}") from exc
    try:
        facade = iso.get_rock_ridge_facade() if iso.has_rock_ridge() else iso.get_iso9660_facade()
        for dirpath, _dirs, files in facade.walk("/"):
            for name in files:
                if name.lower().startswith(("vmlinuz", "bzimage")):
                    buf = io.BytesIO()
                    facade.get_file_from_iso_fp(buf, f"{dirpath.rstrip('/')}/{name}")
                    if dest is not None:
                        dest.write_bytes(buf.getvalue())
                    return buf.getvalue()[:0x240]
        return None
    finally:
        iso.close()


def iso_arch(path: Path) -> str | None:
    """Arch of the first kernel found inside an ISO (None if it holds no kernel we know)."""
    head = _iso_kernel(path, None)
    return kernel_arch(head) if head else None


def extract_iso_kernel(path: Path, dest: Path) -> Path | None:
    """Copy the ISO's kernel to `dest` (to probe KVM with it); None if it has none."""
    return dest if _iso_kernel(path, dest) else None
