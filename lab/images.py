"""Images a user brings: what kind each is and which arch it is for, checked before any boot.

Kinds: a folder with `vmlinuz` + `initrd` (direct kernel boot), an `.iso` (CD-ROM boot),
a disk (`.img`/`.qcow2`), a Raspberry Pi SD card release (`.zip` holding one `.img`), a GCE
disk tarball (the release's `rancheros-gce.tar.gz`: a gzipped tar of `disk.raw`), or an
image a cloud already holds (`openstack:NAME`, `gce:IMAGE`, `digitalocean:ID`...).
The arch is read from the kernel itself (the file's boot header), so an arm64 kernel
handed to an x86_64 run fails here, not after a silent hang.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from lab import sdcard
from lab.cache import cache_root
from lab.errors import ImageError

ARCHES = ("x86_64", "aarch64")
KERNEL = "kernel"
ISO = "iso"
DISK = "disk"
SDCARD = "sdcard"
GCE_TARBALL = "gce-tarball"  # what GCE makes an image from: a .tar.gz holding disk.raw
GCE_DISK_MEMBER = "disk.raw"
# an image a cloud already holds: an AMI id (ami-..., or ami:REGION from the release's
# catalog), or `<platform>:<name or id>` on the other clouds
CLOUD = "cloud"
CLOUD_IMAGE = re.compile(r"ami-[0-9a-f]{8,17}|ami:[a-z0-9-]*")
# the image reference schemes of images a cloud already holds (`gce:IMAGE`...): part of
# the image naming users type, like the datasource names, so data here
CLOUD_PLATFORMS = ("gce", "digitalocean", "openstack", "cloudstack", "aliyun")
CMDLINE_KINDS = (KERNEL, SDCARD)  # kinds whose kernel command line the lab controls
DISK_SUFFIXES = {".img": "raw", ".raw": "raw", ".qcow2": "qcow2", ".vhd": "vpc"}
QCOW2_MAGIC = b"QFI\xfb"  # a release's .img may be qcow2 (rancheros-openstack.img is)
CMDLINE_DATASOURCES = ("url", "cmdline")  # they ride on the kernel command line


def datasource_gap(image: Image, datasource: str) -> str | None:
    """Why `datasource` cannot reach a guest booted from `image` (None when it can): the
    kernel command line's datasources need a kernel the lab boots, and a release disk
    reads only the datasources its own command line names."""
    if image.kind in CMDLINE_KINDS or datasource == "none":
        return None
    if datasource in CMDLINE_DATASOURCES:
        return (f"datasource {datasource} needs direct kernel boot (an image folder): "
                f"{image.path} boots with the datasources baked into it")
    baked = baked_datasources(image)
    if baked is not None and datasource not in baked:
        return (f"{image.path.name} reads only {', '.join(baked)}, as its kernel command "
                f"line says: cloud-config by {datasource} would not reach it")
    return None


KERNEL_NAMES = ("vmlinuz", "vmlinuz-*", "bzImage", "Image")
INITRD_NAMES = ("initrd", "initrd.img", "initrd-*", "initramfs*")


KERNEL_FORMAT = {"x86_64": "an x86 bzImage", "aarch64": "an arm64 Image"}


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
    kind: str  # KERNEL, ISO, DISK, SDCARD, GCE_TARBALL or CLOUD
    arch: str | None  # None when the image gives no way to tell (a disk)
    kernel: Path | None = None
    initrd: Path | None = None
    disk_format: str | None = None
    card: Path | None = None  # SDCARD: the card image unpacked from the zip (never written)
    dtb: Path | None = None  # SDCARD: the device tree config.txt names
    cmdline: str = ""  # SDCARD: cmdline.txt
    manifest: dict = field(default_factory=dict, compare=False)
    ref: str = ""  # CLOUD: the cloud's name or id of the image

    @property
    def version(self) -> str | None:
        return self.manifest.get("version")

    @classmethod
    def open(cls, path: Path | str) -> Image:
        if not Path(path).exists() and CLOUD_IMAGE.fullmatch(str(path)):
            return cls(Path(path), CLOUD, None, ref=str(path))  # the cloud's driver checks it
        scheme, _, ref = str(path).partition(":")
        if scheme in CLOUD_PLATFORMS and ref and not Path(path).exists():
            return cls(Path(str(path)), CLOUD, None, ref=ref)
        path = Path(path).expanduser()
        if not path.exists():
            raise ImageError(f"image {path} does not exist")
        if path.is_dir():
            return cls._folder(path)
        # a release file keeps its folder's manifest (version, OS name) when it lists the file
        return replace(cls._file(path), manifest=_release_manifest(path.parent, path.name))

    @classmethod
    def _file(cls, path: Path) -> Image:
        suffix = path.suffix.lower()
        if path.name.lower().endswith(".tar.gz"):
            _check_gce_tarball(path)
            return cls(path, GCE_TARBALL, None)
        if suffix == ".iso":
            return cls(path, ISO, iso_arch(path))
        if suffix in DISK_SUFFIXES:
            with path.open("rb") as fh:
                qcow2 = fh.read(4) == QCOW2_MAGIC
            return cls(path, DISK, None, disk_format="qcow2" if qcow2 else DISK_SUFFIXES[suffix])
        if suffix == ".zip":
            return cls._sd_card(path)
        raise ImageError(
            f"image {path}: unknown kind; give a folder with vmlinuz and initrd, "
            "an .iso, a disk (.img, .qcow2, .vhd), a Raspberry Pi SD card .zip or a GCE disk "
            "tarball (.tar.gz holding disk.raw)"
        )

    @classmethod
    def _sd_card(cls, path: Path) -> Image:
        """A Pi release zip: boots as the Pi's firmware would, from its boot partition."""
        unpacked = _unpack_card(path)
        boot = unpacked / "boot"
        conf = sdcard.pi_config((boot / "config.txt").read_text(errors="replace")
                                if (boot / "config.txt").exists() else "")
        def boot_file(key: str) -> Path:
            name = conf[key]
            if not name or not (boot / name).is_file():
                raise ImageError(
                    f"{path}: the boot partition has no {key} "
                    f"{name or '(config.txt names none)'}; found: "
                    f"{', '.join(sorted(p.name for p in boot.iterdir()))}")
            return boot / name
        kernel = boot_file("kernel")
        with kernel.open("rb") as f:
            arch = kernel_arch(f.read(0x240))
        if arch is None:
            raise ImageError(f"{path}: {kernel.name} on the boot partition is not a Linux "
                             "kernel this lab knows (x86 bzImage, arm64 Image)")
        cmdline = (boot / "cmdline.txt").read_text().strip() if (boot / "cmdline.txt").exists() \
            else ""
        return cls(path, SDCARD, arch, kernel=kernel,
                   initrd=boot_file("initramfs") if conf["initramfs"] else None,
                   card=unpacked / "card.img", dtb=boot_file("device_tree"), cmdline=cmdline)

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
        return cls(path, KERNEL, arch, kernel=kernel, initrd=initrd,
                   manifest=_release_manifest(path))

    def check_arch(self, arch: str) -> None:
        if arch not in ARCHES:
            raise ImageError(f"unknown arch {arch!r}: known arches are {', '.join(ARCHES)}")
        if self.arch is not None and self.arch != arch:
            kernel = f"its kernel {self.kernel.name}" if self.kernel else "its kernel"
            raise ImageError(f"image {self.path}: {kernel} is {KERNEL_FORMAT[self.arch]} "
                             f"({self.arch}), but this run is for {arch}")


def _check_gce_tarball(path: Path) -> None:
    """GCE makes an image only from a gzipped tar whose file is `disk.raw`: say so before
    anything is uploaded (only the first header is read, not the whole disk)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageError(f"{path} is not a readable .tar.gz: {exc}") from exc
    if first is None or first.name.removeprefix("./") != GCE_DISK_MEMBER or not first.isfile():
        found = first.name if first is not None else "nothing"
        raise ImageError(f"{path}: a GCE disk tarball holds {GCE_DISK_MEMBER} (made with "
                         f"`tar --format=oldgnu -Sczf {path.name} disk.raw`); it holds {found}")


def unpack_gce_disk(path: Path, dest: Path) -> Path:
    """The tarball's disk.raw as a sparse file in `dest` (a disk is mostly zeros)."""
    chunk = 1 << 20
    out = dest / GCE_DISK_MEMBER
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.next()
            src = tar.extractfile(member) if member is not None else None
            if src is None:
                raise ImageError(f"{path}: no {GCE_DISK_MEMBER} inside")
            with out.open("wb") as fh:
                while block := src.read(chunk):
                    if block.count(0) == len(block):
                        fh.seek(len(block), 1)
                    else:
                        fh.write(block)
                fh.truncate()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageError(f"could not unpack {path}: {exc}") from exc
    return out


BAKED_DATASOURCES = re.compile(r"rancher\.cloud_init\.datasources=\[([^\]]*)\]")


def baked_datasources(image: Image) -> list[str] | None:
    """The datasources a release disk's own kernel command line names, as its manifest
    records it (a cloud's disk reads only those); None when the image does not say."""
    disk = ((image.manifest.get("disks") or {}).get("images") or {}).get(image.path.name)
    found = BAKED_DATASOURCES.search((disk or {}).get("kernel_cmdline", ""))
    if found is None:
        return None
    return [name.strip().strip('"') for name in found[1].split(",") if name.strip()]


def _release_manifest(folder: Path, member: str | None = None) -> dict:
    """The folder's manifest.json (a reference image build); for a file of the folder, only
    when the manifest lists it, so a stray file is not taken for the release."""
    path = folder / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise ImageError(f"{path} is not JSON: {exc}") from exc
    return manifest if member is None or member in manifest.get("sizes", {}) else {}


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


def _unpack_card(path: Path) -> Path:
    """Unzip a Pi release once (one cache slot per zip path, refreshed when the zip changes);
    copy out its boot partition.

    The user's zip is only read; the lab boots a copy-on-write overlay of the unpacked card.
    """
    st = path.stat()
    stamp = f"{st.st_size} {st.st_mtime_ns}\n"
    slot = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    cards = cache_root() / "cards"
    dest = cards / slot
    cards.mkdir(parents=True, exist_ok=True)
    with open(cards / f".{slot}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "stamp").exists() and (dest / "stamp").read_text() == stamp:
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=cards))
        try:
            try:
                with zipfile.ZipFile(path) as zf:
                    imgs = [n for n in zf.namelist() if n.lower().endswith(".img")]
                    if len(imgs) != 1:
                        found = ", ".join(imgs) or "none"
                        raise ImageError(f"{path}: expected one .img inside, found {found}")
                    with zf.open(imgs[0]) as src, open(tmp / "card.img", "wb") as out:
                        shutil.copyfileobj(src, out, 4 << 20)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ImageError(f"{path} is not a readable zip: {exc}") from exc
            (tmp / "boot").mkdir()
            try:
                for name in sdcard.boot_names(tmp / "card.img"):
                    sdcard.copy_from_boot(tmp / "card.img", name, tmp / "boot" / name)
            except ImageError as exc:  # name the user's file, not the unpacked copy
                message = str(exc).replace(str(tmp / "card.img"), f"{path}:{imgs[0]}")
                raise ImageError(message) from None
            (tmp / "stamp").write_text(stamp)  # last: a slot without it is incomplete
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
