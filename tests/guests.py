"""Tiny test guests: the Debian cloud kernel and a busybox initramfs whose /init is a script.

They boot to /init in ~3-4 s under TCG, so the lab's own tests can panic, hang, log in
and run commands on a real kernel and a real serial console without the reference
image. Cached under `<roslab cache>/testguests/` keyed by the .deb versions and scripts.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path

from lab.cache import cache_root
from refimage.debs import Apt, extract

MODULES = [  # insmod order: dependencies first (a virtio disk and ISO 9660 for config drives)
    "drivers/virtio/virtio.ko", "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko", "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko", "drivers/block/virtio_blk.ko", "drivers/cdrom/cdrom.ko",
    "fs/isofs/isofs.ko",
]

COMMON = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
"""

SCRIPTS = {
    # init exits: the kernel panics with "Attempted to kill init"
    "panic": COMMON + "echo 'tiny: init is about to crash'\nexit 1\n",
    # init never reaches a prompt
    "hang": COMMON + "echo 'tiny: hanging on purpose'\nexec sleep 100000\n",
    # a getty-like login (password from rancher.password=) then a shell on ttyS0
    "shell": COMMON + r"""
for m in /lib/modules/*.ko; do insmod "$m" 2>/dev/null; done
mkdir -p /media/config-2
sleep 0.5
mount -t iso9660 -o ro /dev/vda /media/config-2 2>/dev/null
pw=$(sed -n 's/.*rancher\.password=\([^ ]*\).*/\1/p' /proc/cmdline)
hostname tiny
echo 'Tiny v0.0.1 started'
while true; do
  printf 'tiny login: '; read -r user
  printf 'Password: '; read -r given
  [ "$user" = rancher ] && [ "$given" = "$pw" ] && break
  echo 'Login incorrect'
done
exec setsid cttyhack sh
""",
    # an autologin shell whose first prompt a kernel line follows on the same line, as
    # the reference image's user Docker loading br_netfilter does in some boots
    "cut-prompt": COMMON + r"""
hostname tiny
echo 'Tiny v0.0.1 started'
echo '(sleep 0.2; echo "roslab-test: a kernel line after the prompt" > /dev/kmsg) &' > /env
ENV=/env exec setsid cttyhack sh
""",
}


def _cpio_entry(out: io.BytesIO, name: str, mode: int, data: bytes = b"", rdev: int = 0,
                ino: int = 0) -> None:
    """One newc cpio header + name + data, 4-byte aligned."""
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(name) + 1, 0]
    out.write(b"070701" + "".join(f"{f:08X}" for f in fields).encode())
    out.write(name.encode() + b"\0")
    out.write(b"\0" * (-out.tell() % 4))
    out.write(data)
    out.write(b"\0" * (-out.tell() % 4))


def make_initramfs(busybox: Path, modules: list[Path], init: str) -> bytes:
    out = io.BytesIO()
    entries: list[tuple[str, int, bytes, int]] = [
        (d, stat.S_IFDIR | 0o755, b"", 0)
        for d in ("bin", "dev", "proc", "sys", "tmp", "media", "lib", "lib/modules")
    ]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5 << 8) | 1))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes(), 0))
    for applet in ("sh", "mount", "insmod", "sleep", "sed", "cat", "mkdir", "setsid",
                   "cttyhack", "hostname", "stty", "echo", "printf", "uname", "poweroff", "date"):
        entries.append((f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox", 0))
    for i, module in enumerate(modules):  # numbered: /init loads them in glob order
        entries.append((f"lib/modules/{i:02d}-{module.name}", stat.S_IFREG | 0o644,
                        module.read_bytes(), 0))
    entries.append(("init", stat.S_IFREG | 0o755, init.encode(), 0))
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        _cpio_entry(out, name, mode, data, rdev, ino)
    _cpio_entry(out, "TRAILER!!!", 0)
    return out.getvalue()


def build_guests(arch: str = "x86_64") -> dict[str, Path]:
    """{kind: image folder} for every tiny guest, built once and cached."""
    pkgs = Apt(arch).fetch(["linux-image-cloud-amd64", "busybox-static"])
    kernel_pkg = next(p for p in pkgs if p.name.startswith("linux-image-6"))
    busybox_pkg = next(p for p in pkgs if p.name == "busybox-static")
    digest = hashlib.sha256(
        repr((kernel_pkg.version, busybox_pkg.version, SCRIPTS, MODULES)).encode()
        + Path(__file__).read_bytes()
    ).hexdigest()[:12]
    root = cache_root() / "testguests" / f"{arch}-{digest}"
    if not (root / "done").exists():
        work = Path(tempfile.mkdtemp(prefix="roslab-testguest-"))
        try:
            extract(kernel_pkg.path, work / "k")
            extract(busybox_pkg.path, work / "b")
            kernel = next((work / "k/boot").glob("vmlinuz-*"))
            moddir = next((work / "k/lib/modules").iterdir()) / "kernel"
            modules = [moddir / m for m in MODULES]
            busybox = work / "b/bin/busybox"
            staging = root.with_name(root.name + f".tmp{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            shutil.copy(kernel, staging / "vmlinuz")
            for kind, script in SCRIPTS.items():
                (staging / kind).mkdir()
                (staging / kind / "vmlinuz").symlink_to("../vmlinuz")
                (staging / kind / "initrd").write_bytes(make_initramfs(busybox, modules, script))
            (staging / "done").touch()
            try:
                staging.rename(root)  # atomic: two xdist workers may build at once
            except OSError:
                shutil.rmtree(staging)  # the other one won; its guests are the same
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {kind: root / kind for kind in SCRIPTS}
