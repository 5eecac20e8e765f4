"""`roslab image build`: the reference image, from Debian packages, cached by input hash.

Output folder (as a RancherOS release): vmlinuz, initrd, rancheros.iso, rancheros.ipxe
(x86_64), iso-checksums.txt, manifest.json. The folder is assembled beside its final place and
renamed into it only when complete, and manifest.json is written last, so an
interrupted build never leaves something a later run would take for a good image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lab import sdcard
from lab.cache import cache_root
from refimage import archive, iso, pi, rootfs
from refimage.debs import Apt, Package, extract

OS_NAME = "RoslabOS"
OS_VERSION = "v0.1.0"
IPXE_SCRIPT = "rancheros.ipxe"
# where a release's iPXE script says its kernel and initrd are; whoever serves the folder
# (the labgrid driver's netboot server) sets its own base URL
IPXE_BASE_URL = "http://releases.roslab.invalid/os/" + OS_VERSION
BUILDER_REVISION = "1"  # bump when the image layout changes in a way the hash cannot see
GUEST = Path(__file__).parent / "guest"
BUILDER_SOURCES = [
    *(Path(__file__).parent / n for n in ("build.py", "rootfs.py", "archive.py", "iso.py",
                                          "pi.py")),
    Path(sdcard.__file__),  # the lab's SD card writer makes the Pi card
]
# A release's files per arch (RancherOS publishes arm64 as a rootfs tarball and a Pi zip).
ARTIFACTS = {
    "x86_64": ["vmlinuz", "initrd", "rancheros.iso", iso.VMWARE_ISO, IPXE_SCRIPT,
               "iso-checksums.txt", "manifest.json"],
    "aarch64": ["vmlinuz", "initrd", pi.ROOTFS_TAR, pi.PI_ZIP, "iso-checksums.txt",
                "manifest.json"],
}
CONSOLE = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}

Progress = Callable[[str], None]


def default_out(arch: str) -> Path:
    return cache_root() / "images" / arch


def default_cmdline(arch: str) -> str:
    tty = CONSOLE[arch]
    return (
        f"console=tty0 console={tty},115200n8 rancher.autologin={tty} "
        "rancher.cloud_init.datasources=[configdrive,nocloud]"
    )


def ipxe_script(arch: str) -> str:
    """`rancheros.ipxe` in the shape RancherOS releases ship it: netboot kernel and initrd
    from `base-url` into RAM."""
    return ("#!ipxe\n# Boot RoslabOS to RAM\n\n# Location of Kernel/Initrd images\n"
            f"set base-url {IPXE_BASE_URL}\n\n"
            f"kernel ${{base-url}}/vmlinuz {default_cmdline(arch)}\n"
            "initrd ${base-url}/initrd\nboot\n")


def _tree_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for base in paths:
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(f.relative_to(base.parent).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def inputs_hash(arch: str, packages: list[Package]) -> str:
    h = hashlib.sha256()
    h.update(f"{BUILDER_REVISION} {arch} {OS_NAME} {OS_VERSION}\n".encode())
    for p in sorted(packages, key=lambda p: p.name):
        h.update(f"{p.name} {p.version} {p.arch}\n".encode())
    h.update(_tree_hash([GUEST, *BUILDER_SOURCES]).encode())
    return h.hexdigest()


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not all((folder / name).exists() for name in ARTIFACTS.get(manifest.get("arch"), [])):
        return None
    # a file cut short (a full disk, a killed copy) is never served as the image
    for name, size in (manifest.get("sizes") or {}).items():
        try:
            if (folder / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return manifest


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One build per output folder at a time (pytest -n 2 workers may both ask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def ensure_image(
    arch: str = "x86_64",
    out: Path | None = None,
    progress: Progress | None = None,
    mirror: str | None = None,
    refresh: bool = False,
) -> Path:
    """The reference image folder for `arch`, built only if its inputs changed."""
    say = progress or (lambda msg: None)
    out = (out or default_out(arch)).resolve()
    with _lock(out.parent / f".{out.name}.lock"):
        apt = Apt(arch, mirror=mirror)
        if refresh or not apt.lists_present():
            say(f"updating the Debian package lists ({apt.mirror})")
            apt.update()
        names = [*rootfs.USERLAND, *rootfs.INSTALLER[arch], rootfs.KERNEL[arch],
                 *_bootloader(arch), *([rootfs.PI_KERNEL] if arch == "aarch64" else [])]
        say("resolving packages")
        packages = apt.fetch(names)
        digest = inputs_hash(arch, packages)
        manifest = read_manifest(out)
        if manifest and manifest.get("inputs_hash") == digest:
            say(f"reference image is up to date: {out}")
            return out
        _build(arch, out, packages, digest, apt, say)
        return out


def _bootloader(arch: str) -> list[str]:
    return rootfs.BOOTLOADER if arch == "x86_64" else []


def _build(
    arch: str, out: Path, packages: list[Package], digest: str, apt: Apt, say: Progress
) -> None:
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix="roslab-build-"))
    try:
        by_name = {p.name: p for p in packages}
        kernel = rootfs.kernel_package(packages, rootfs.KERNEL[arch])
        root = work / "root"
        root.mkdir()
        say(f"unpacking {len(packages)} packages")
        userland = [
            p
            for p in packages
            if not p.name.startswith("linux-image") and p.name not in rootfs.BOOTLOADER
        ]
        rootfs.stage_userland(root, userland, _busybox_applets(root, by_name), say)
        say(f"selecting kernel modules from {kernel.name}")
        vmlinuz, release = rootfs.stage_kernel(kernel, work / "kernel", root)
        _install_guest_files(root, arch)
        if arch == "x86_64":  # ros install writes syslinux's MBR code (BIOS disks only)
            mbr = work / "bootloader-mbr"
            extract(by_name["syslinux-common"].path, mbr)
            dest = root / "usr/lib/syslinux/mbr"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(mbr / "usr/lib/syslinux/mbr/mbr.bin", dest / "mbr.bin")
        _compile_python(root)
        say("laying out the system Docker's image store")
        exclude = set(rootfs.ENGINE_FILES) | {
            "usr/lib/modules",
            "usr/share/ros/images",
            "var/lib/rancher/preload",
            "var/lib/user-docker",
            "init",
        }
        archive.write_docker_store(
            root,
            root / "var/lib/system-docker",
            f"roslab/os-base:{OS_VERSION}",
            arch,
            exclude=exclude,
        )
        busybox_root = busybox_image_root(work, by_name["busybox-static"])
        archive.write_docker_archive(
            busybox_root,
            root / "var/lib/rancher/preload/docker/busybox.tar",
            "busybox:latest",
            arch,
            cmd=["sh"],
        )
        say("writing the initrd (cpio + lz4)")
        archive.write_initrd(root, tmp_out / "initrd")
        shutil.copy2(vmlinuz, tmp_out / "vmlinuz")
        if arch == "x86_64":
            say("writing rancheros.iso")
            boot = work / "bootloader"
            for name in rootfs.BOOTLOADER:
                extract(by_name[name].path, boot)
            iso.write_iso(
                tmp_out / "rancheros.iso",
                vmlinuz=tmp_out / "vmlinuz",
                initrd=tmp_out / "initrd",
                isolinux_bin=boot / "usr/lib/ISOLINUX/isolinux.bin",
                ldlinux=boot / "usr/lib/syslinux/modules/bios/ldlinux.c32",
                cfg=iso.isolinux_cfg(OS_NAME, OS_VERSION, default_cmdline(arch)),
            )
            say(f"writing {iso.VMWARE_ISO}")
            variants = {iso.VMWARE_ISO: iso.vmware_variant(root / "usr/lib/modules" / release)}
            iso.write_iso(
                tmp_out / iso.VMWARE_ISO,
                vmlinuz=tmp_out / "vmlinuz",
                initrd=tmp_out / "initrd",
                isolinux_bin=boot / "usr/lib/ISOLINUX/isolinux.bin",
                ldlinux=boot / "usr/lib/syslinux/modules/bios/ldlinux.c32",
                cfg=iso.isolinux_cfg(f"{OS_NAME} (VMware)", OS_VERSION, default_cmdline(arch)),
            )
            (tmp_out / IPXE_SCRIPT).write_text(ipxe_script(arch))
            iso.write_checksums(tmp_out, ["rancheros.iso", iso.VMWARE_ISO],
                                tmp_out / "iso-checksums.txt")
        else:
            say(f"writing {pi.ROOTFS_TAR}")
            pi.write_rootfs_tar(root, tmp_out / pi.ROOTFS_TAR)
            pi_kernel = rootfs.kernel_package(packages, rootfs.PI_KERNEL)
            say(f"selecting kernel modules from {pi_kernel.name} for the Pi's card")
            shutil.rmtree(root / "usr/lib/modules")  # the card's root has its kernel's
            pi_vmlinuz, pi_release = rootfs.stage_kernel(pi_kernel, work / "pi-kernel", root)
            say(f"writing {pi.PI_ZIP} (SD card: vfat boot, ext4 root)")
            pi.write_boot_initrd(root, pi_release, work, work / "sdboot.initrd")
            pi.write_pi_zip(
                tmp_out / pi.PI_ZIP,
                vmlinuz=pi_vmlinuz,
                dtb=work / "pi-kernel/usr/lib" / f"linux-image-{pi_release}" / rootfs.PI_DTB,
                boot_initrd=work / "sdboot.initrd",
                root=root,
                label=OS_NAME,
                work=work,
            )
            iso.write_checksums(
                tmp_out, [pi.ROOTFS_TAR, pi.PI_ZIP], tmp_out / "iso-checksums.txt"
            )
        manifest = {
            "os_name": OS_NAME,
            "version": OS_VERSION,
            "arch": arch,
            "kernel_release": release,
            "pi_kernel_release": pi_release if arch == "aarch64" else None,
            "kernel_cmdline": default_cmdline(arch),
            "variants": variants if arch == "x86_64" else {},
            "inputs_hash": digest,
            "packages": {p.name: p.version for p in sorted(packages, key=lambda p: p.name)},
            "versions": {
                "kernel": kernel.version,
                "docker": by_name["docker.io"].version,
                "containerd": by_name["containerd"].version,
                "busybox": by_name["busybox-static"].version,
                "openssh": by_name["openssh-server"].version,
                "python": by_name["python3"].version,
            },
            "sizes": {
                n: (tmp_out / n).stat().st_size
                for n in ("vmlinuz", "initrd", "rancheros.iso", iso.VMWARE_ISO, pi.ROOTFS_TAR,
                          pi.PI_ZIP)
                if (tmp_out / n).exists()
            },
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (tmp_out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        tmp_out.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        say(f"built {out} in {manifest['build_seconds']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp_out, ignore_errors=True)


def _busybox_applets(root: Path, by_name: dict[str, Package]) -> list[str]:
    """The applet list, read from the busybox binary of the same version built for the host."""
    tmp = Path(tempfile.mkdtemp(prefix="roslab-bb-"))
    try:
        host = by_name["busybox-static"]
        if host.arch != "amd64" or os.uname().machine != "x86_64":
            host = Apt("x86_64").fetch([f"busybox-static={host.version}"])[0]
        extract(host.path, tmp)
        out = subprocess.run([str(tmp / "bin/busybox"), "--list"], capture_output=True, text=True)
        return out.stdout.split()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def busybox_image_root(work: Path, busybox: Package) -> Path:
    """A busybox:latest image for the user Docker, so scenarios run containers offline."""
    root = work / "busybox-image"
    extract(busybox.path, root)
    shutil.rmtree(root / "usr", ignore_errors=True)
    for d in ("etc", "tmp", "root", "proc", "sys", "dev"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
    )
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    for name in (
        "sh",
        "ls",
        "cat",
        "echo",
        "sleep",
        "httpd",
        "wget",
        "nc",
        "env",
        "id",
        "hostname",
        "ps",
        "true",
        "false",
        "test",
        "mkdir",
        "rm",
        "grep",
        "uname",
        "date",
        "vi",
    ):
        (root / "bin" / name).symlink_to("busybox")
    return root


def _install_guest_files(root: Path, arch: str) -> None:
    """Copy guest/rootfs over the staged tree, filling in the version."""
    src = GUEST / "rootfs"
    values = {
        "@OS_NAME@": OS_NAME,
        "@OS_VERSION@": OS_VERSION,
        "@ARCH@": arch,
        "@IMAGE@": f"roslab/os-base:{OS_VERSION}",
    }
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        dest = root / rel
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        if "__pycache__" in rel.parts:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        text = path.read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        dest.write_text(text)
        dest.chmod(path.stat().st_mode & 0o7777)
    # the system-dockerd name makes PID 1 recognisable (`pidof system-dockerd`), as on RancherOS
    (root / "usr/bin/system-dockerd").symlink_to("../sbin/dockerd")


def _compile_python(root: Path) -> None:
    """Byte-compile the guest's Python ahead of time: every container would do it at start."""
    subprocess.run(
        [
            "python3",
            "-m",
            "compileall",
            "-q",
            "-j0",
            str(root / "usr/lib/python3.11"),
            str(root / "usr/lib/python3/dist-packages"),
            str(root / "usr/lib/ros"),
        ],
        capture_output=True,
    )
