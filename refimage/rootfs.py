"""Stage the reference OS root from Debian packages, without running maintainer scripts.

What maintainer scripts would have done (users, alternatives links, busybox applets) is
done here explicitly, so the result depends only on the package versions and the guest
files in `guest/`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from lab.errors import BuildError
from refimage.debs import Package, extract

# What the OS is made of. Dependencies come with them; SKIP drops the ones only
# maintainer scripts or package management need.
USERLAND = [
    "busybox-static",  # shell and core tools, getty/login, udhcpc, crond, logger
    "docker.io",  # dockerd twice (system and user), docker client, containerd, runc
    "crun",  # the OCI runtime both Dockers use: a C program, it starts containers faster than runc
    "openssh-server",
    "sudo",
    "udev",
    "acpid",
    "rsyslog",
    "openntpd",
    "kmod",
    "python3",  # the ros CLI, the service starter and cloud-init are Python
    "python3-yaml",
    "openssl",  # `ros tls gen`: the user Docker's CA, server and client certificates
    # the state partition and `ros install`: ext4, the FAT boot partition, syslinux
    "e2fsprogs",
    "dosfstools",
    "mtools",
    # what users' scripts and RancherOS's own test cases expect in the console (and in
    # the network container, the same image): `#!/bin/bash`, `parted -s DEV print`,
    # `blkid`, and GNU coreutils (printenv, nohup, install, ...: busybox has none of them)
    "bash",
    "parted",
    "util-linux",  # blkid, lsblk, wipefs
    "coreutils",
]
# `ros install`'s boot loader: BIOS machines only
INSTALLER = {"x86_64": ["syslinux"], "aarch64": []}
# The kernel of vmlinuz and the initrd: Debian's cloud flavour, built for virtual machines.
# On arm64 the generic kernel has hundreds more drivers, buses and modules, and the guest's
# udev coldplug handles an event for each (2.8 s more at boot under TCG).
KERNEL = {"x86_64": "linux-image-cloud-amd64", "aarch64": "linux-image-cloud-arm64"}
# The Pi's SD card boots the generic arm64 kernel, the one with the Raspberry Pi's SD
# hosts, mini-UART and device trees (RancherOS, too, shipped its Pi image with its own).
PI_KERNEL = "linux-image-arm64"
# The Pi 3 device tree the SD image boots with (QEMU's raspi3b models this board).
PI_DTB = "broadcom/bcm2837-rpi-3-b.dtb"
BOOTLOADER = ["isolinux", "syslinux-common"]

SKIP = {
    "perl",
    "perl-base",
    "perl-modules-5.36",
    "libperl5.36",
    "dpkg",
    "debconf",
    "adduser",
    "usrmerge",
    "init-system-helpers",
    "sysvinit-utils",
    "ucf",
    "sensible-utils",
    "runit-helper",
    "lsb-base",
    "tar",
    "cpio",
    "logsave",
    "libfile-find-rule-perl",
    "libnumber-compare-perl",
    "libtext-glob-perl",
    "initramfs-tools",
    "initramfs-tools-core",
    "klibc-utils",
    "libklibc",
    "linux-base",
    "passwd",
    "libsemanage2",
    "libsemanage-common",
    "libsepol2",
    "libdb5.3",
    "libgdbm6",
    "libgdbm-compat4",
    "tzdata",
    "readline-common",
    "procps",
    "libproc2-0",
    "dmsetup",
}
# Files of the docker.io/containerd packages the OS never runs (they are big).
DROP_FILES = [
    "usr/bin/ctr",
    "usr/bin/dnet",
    "usr/sbin/ovrouter",
    "usr/bin/containerd-stress",
    "usr/bin/containerd-shim",
    "usr/bin/containerd-shim-runc-v1",
    "usr/bin/tini",
    "usr/sbin/sudo_logsrvd",
    "usr/sbin/sudo_sendlog",
    "usr/bin/sudoreplay",
    "usr/bin/cvtsudoers",
    "bin/systemd-hwdb",
]
DROP_DIRS = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/fish",
    "usr/share/bug",
    "usr/share/docker.io",
    "lib/systemd/system",
    "usr/lib/systemd/system",
    "etc/init.d",
    "etc/systemd",
    "usr/share/openssh",
    "etc/cron.daily",
    "etc/logrotate.d",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/unittest",
    "usr/lib/python3.11/config-3.11-x86_64-linux-gnu",
    "usr/lib/python3.11/config-3.11-aarch64-linux-gnu",
    "usr/lib/python3.11/distutils",
    "usr/lib/python3.11/asyncio",
    "usr/lib/python3.11/sqlite3",
    "usr/lib/python3.11/xmlrpc",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/aarch64-linux-gnu/gconv",
    "usr/lib/udev/hwdb.d",  # source of hwdb.bin, which nothing here compiles or reads
    "usr/lib/systemd/network",
    "lib/systemd/network",  # .link files would rename eth0
]
# The engine binaries: kept in the OS root, left out of the service image and
# bind-mounted into the containers that need them (as RancherOS's command-volumes).
ENGINE_FILES = [
    "usr/sbin/dockerd",
    "usr/bin/docker",
    "usr/bin/containerd",
    "usr/bin/containerd-shim-runc-v2",
    "usr/sbin/runc",
    "usr/bin/crun",
    "usr/sbin/docker-proxy",
    "usr/bin/tini-static",
]

# Modules the OS loads: storage and network for QEMU/clouds, overlay for Docker,
# netfilter and bridge for the user Docker, input/button for acpid.
MODULE_DIRS = [
    "kernel/fs/overlayfs",
    "kernel/fs/isofs",
    "kernel/fs/fat",
    "kernel/fs/nls",
    "kernel/drivers/cdrom",
    "kernel/drivers/scsi",
    "kernel/drivers/ata",
    "kernel/drivers/mmc",  # the Pi's SD card (sdhost, sdhci-iproc)
    "kernel/fs/ext4",  # the Pi image's root partition
    # what rancher.modules can name, as on RancherOS (its docs' example: btrfs)
    "kernel/fs/btrfs",
    "kernel/fs/xfs",
    "kernel/drivers/block",
    "kernel/drivers/virtio",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/veth.ko",
    "kernel/drivers/net/dummy.ko",  # rancher.network pre_cmds may make dummy links
    "kernel/drivers/net/bonding",  # rancher.network: bond, vlans (bridge is below)
    "kernel/net/8021q",
    "kernel/drivers/net/vmxnet3",
    "kernel/drivers/char/hw_random",
    "kernel/drivers/input",
    "kernel/drivers/acpi",
    "kernel/net/netfilter",
    "kernel/net/ipv4/netfilter",
    "kernel/net/ipv6",
    "kernel/net/bridge",
    "kernel/net/802",
    "kernel/net/llc",
    "kernel/lib",
    "kernel/crypto",
    "kernel/net/sched",
]

ROOT_DIRS = [
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "root",
    "home/rancher",
    "media",
    "mnt",
    "opt",
    "var/lib/rancher/conf/cloud-config.d",
    "var/lib/rancher/preload/docker",
    "var/lib/rancher/preload/system-docker",
    "var/lib/system-docker",
    "var/lib/user-docker",
    "var/log/boot",
    "var/spool/cron/crontabs",
    "var/empty",
    "etc/docker",
    "usr/share/ros/images",
]

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin
ntpd:x:101:101::/var/empty:/usr/sbin/nologin
syslog:x:102:102::/home/syslog:/usr/sbin/nologin
rancher:x:1100:1100:rancher:/home/rancher:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """root:x:0:
daemon:x:1:
tty:x:5:
disk:x:6:
adm:x:4:syslog
sudo:x:27:rancher
ntpd:x:101:
syslog:x:102:
rancher:x:1100:
docker:x:1101:rancher
nogroup:x:65534:
"""
SHADOW_USERS = ["root", "daemon", "sshd", "ntpd", "syslog", "rancher", "nobody"]


def stage_userland(
    root: Path, packages: list[Package], busybox_list: list[str], log: Callable[[str], None]
) -> None:
    """Unpack `packages` into `root` and turn it into a bootable OS tree."""
    for sub in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    for pkg in packages:
        if pkg.name in SKIP:
            continue
        extract(pkg.path, root)
    for rel in DROP_FILES:
        (root / rel).unlink(missing_ok=True)
    kept = _keep_gconv(root)
    for rel in DROP_DIRS:
        shutil.rmtree(root / rel, ignore_errors=True)
    for rel, data in kept.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    _alternatives(root)
    _busybox_applets(root, busybox_list)
    for rel in ROOT_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    # /var/run is /run, as the image contract's socket paths assume
    shutil.rmtree(root / "var/run", ignore_errors=True)
    (root / "var/run").symlink_to("../run")
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/shadow").write_text("".join(f"{u}:*:19000:0:99999:7:::\n" for u in SHADOW_USERS))
    os.chmod(root / "etc/shadow", 0o640)
    os.chown(root / "home/rancher", 1100, 1100)
    log(f"staged userland from {len(packages)} packages")


# mtools (ros install's FAT writer) converts names to code page 850 through iconv
GCONV_KEEP = ["IBM850.so", "gconv-modules", "gconv-modules.cache",
              "gconv-modules.d/gconv-modules-extra.conf"]


def _keep_gconv(root: Path) -> dict[str, bytes]:
    """The few iconv modules kept from the gconv folders DROP_DIRS removes."""
    kept = {}
    for folder in ("usr/lib/x86_64-linux-gnu/gconv", "usr/lib/aarch64-linux-gnu/gconv"):
        for name in GCONV_KEEP:
            if (root / folder / name).is_file():
                kept[f"{folder}/{name}"] = (root / folder / name).read_bytes()
    return kept


def _alternatives(root: Path) -> None:
    """The links update-alternatives would make, for the legacy backend: RancherOS's
    Dockers used it, and the user dockerd makes ~60 iptables calls before it answers,
    each ~90 ms under TCG with nft (it reads the whole ruleset) and far less with legacy."""
    sbin = root / "usr/sbin"
    for name in (
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ):
        target = sbin / name
        target.unlink(missing_ok=True)
        target.symlink_to("xtables-legacy-multi")


def _busybox_applets(root: Path, applets: list[str]) -> None:
    """Link busybox applets that no package provides (busybox --install -s, done offline)."""
    skip = {
        "busybox",
        "linuxrc",
        "init",
        "dpkg",
        "dpkg-deb",
        "rpm",
        "rpm2cpio",
        "udhcpd",
        "modprobe",
        "insmod",
        "rmmod",
        "lsmod",
        "depmod",
        "modinfo",
    }  # kmod provides these
    for name in applets:
        if name in skip or name.startswith("["):
            continue
        if any(
            (root / d / name).exists() or (root / d / name).is_symlink()
            for d in ("usr/bin", "usr/sbin")
        ):
            continue
        (root / "usr/bin" / name).symlink_to("busybox")
    for name in ("sh", "[", "[["):
        link = root / "usr/bin" / name
        if not link.exists():
            link.symlink_to("busybox")
    for name in ("modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"):
        link = root / "usr/sbin" / name
        if not link.exists():
            link.symlink_to("../bin/kmod")


def kernel_package(packages: list[Package], meta: str) -> Package:
    """The versioned kernel package the metapackage `meta` brought (linux-image-cloud-arm64:
    linux-image-6.1.0-50-cloud-arm64)."""
    flavour = re.escape(meta.removeprefix("linux-image-"))
    for p in packages:
        if re.fullmatch(rf"linux-image-\d[\d.]*-\d+-{flavour}", p.name):
            return p
    raise BuildError(f"the kernel package of {meta} was not among the resolved packages")


def stage_kernel(kernel_deb: Package, kdir: Path, root: Path) -> tuple[Path, str]:
    """Unpack the kernel package into kdir; copy the chosen modules (with their
    dependencies) into root.

    Returns the vmlinuz path and the kernel release.
    """
    shutil.rmtree(kdir, ignore_errors=True)
    extract(kernel_deb.path, kdir)
    releases = sorted(p.name for p in (kdir / "lib/modules").iterdir())
    if len(releases) != 1:
        raise BuildError(f"{kernel_deb.name}: expected one kernel release, found {releases}")
    release = releases[0]
    src = kdir / "lib/modules" / release
    _depmod(kdir, release)  # the package's postinst would have made modules.dep
    deps = module_deps(src)
    wanted: set[str] = set()
    for pattern in MODULE_DIRS:
        for mod in deps:
            if mod == pattern or mod.startswith(pattern.rstrip("/") + "/"):
                wanted.add(mod)
    closure = set()
    todo = list(wanted)
    while todo:
        mod = todo.pop()
        if mod in closure:
            continue
        closure.add(mod)
        todo.extend(deps.get(mod, []))
    dest = root / "usr/lib/modules" / release
    for mod in closure:
        (dest / mod).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / mod, dest / mod)
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (src / meta).exists():
            shutil.copy2(src / meta, dest / meta)
    _depmod(root, release)
    vmlinuz = kdir / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.exists():  # arm64 packages name it the same; keep the check for clarity
        raise BuildError(f"{kernel_deb.name} has no boot/vmlinuz-{release}")
    return vmlinuz, release


def _depmod(base: Path, release: str) -> None:
    proc = subprocess.run(["depmod", "-b", str(base), release], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"depmod failed for {release}: {proc.stderr.strip()}")


def module_deps(moddir: Path) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    return deps
