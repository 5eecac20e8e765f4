"""`roslab boot` (boot and attach the console) and `roslab doctor` (is this host ready)."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import tempfile
import termios
import tty
from pathlib import Path

from drivers import PLATFORMS, labgrid
from drivers.machines import make_machine
from lab.cache import cache_root
from lab.cloudconfig import DATASOURCES
from lab.errors import LabError
from lab.images import ARCHES, Image

DETACH = b"\x1d"  # Ctrl-]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    boot = sub.add_parser("boot", help="boot an image and attach its console (Ctrl-] stops)")
    boot.add_argument("--platform", default="qemu", choices=sorted(PLATFORMS))
    boot.add_argument("--image", type=Path, default=None,
                      help="folder with vmlinuz+initrd, .iso, disk or Pi SD .zip "
                           "(default: reference image)")
    boot.add_argument("--arch", default="x86_64", choices=ARCHES)
    boot.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    boot.add_argument("--cloud-config", type=Path, default=None, help="a #cloud-config file")
    boot.add_argument("--datasource", default="default", choices=("default", *DATASOURCES),
                      help="how the cloud-config reaches the guest (default: the board's "
                           "first choice, a config drive where there is one)")
    boot.set_defaults(func=cmd_boot)
    boot.add_argument("--hw", default=None, help="libvirt hardware profile (default, vmware)")
    boot.add_argument("--libvirt-uri", default=None, help="libvirt connection (qemu:///system)")
    labgrid.add_cli_options(boot)
    doctor = sub.add_parser("doctor", help="check QEMU, KVM, disk space and libvirt; "
                                           "say what to install")
    doctor.add_argument("--arch", default="x86_64", choices=ARCHES)
    doctor.add_argument("--platform", default="qemu", choices=("qemu", "libvirt", "labgrid"),
                        help="libvirt, labgrid: that platform's problems count (else info)")
    doctor.add_argument("--libvirt-uri", default=None, help="libvirt connection (qemu:///system)")
    labgrid.add_cli_options(doctor)
    doctor.set_defaults(func=cmd_doctor)


def cmd_boot(args: argparse.Namespace) -> int:
    cc = args.cloud_config.read_text() if args.cloud_config else None
    with tempfile.TemporaryDirectory(prefix="roslab-boot-") as work, make_machine(
        args.platform, args.image, args.arch, cc, args.datasource, Path(work), args.accel,
        progress=lambda m: print(f"roslab: {m}", file=sys.stderr),
        platform_options={"hw": args.hw, "libvirt_uri": args.libvirt_uri,
                          **labgrid.cli_options(args)},
    ) as machine:
        if not machine.capabilities.console:  # before anything is launched (and paid for)
            why = machine.capabilities.lacks("console")
            raise LabError(f"roslab boot attaches a console; {why}")
        print(f"roslab: booting {machine.image.path} ({machine.info['accel']}); "
              "Ctrl-] detaches and stops the machine", file=sys.stderr)
        machine.driver.prepare(machine.spec)
        machine.timeline.t0 = machine.driver.start()
        _attach(machine.driver.console_stream())
    return 0


def _attach(stream) -> None:  # noqa: ANN001 -- any socket-like console stream
    """Raw terminal <-> console until Ctrl-] or the machine stops."""
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    try:
        if saved is not None:
            tty.setraw(stdin)
        while True:
            ready, _, _ = select.select([stream, stdin], [], [])
            if stream in ready:
                data = stream.recv(65536)
                if not data:
                    return
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if not data or DETACH in data:
                    return
                stream.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        print("\r\nroslab: detached; stopping the machine", file=sys.stderr)


def cmd_doctor(args: argparse.Namespace) -> int:
    from drivers.qemu import QEMU_BINARY, QemuDriver, kvm_usable, qemu_version

    problems = 0

    def line(ok: bool, what: str, fix: str = "", required: bool = True) -> None:
        nonlocal problems
        problems += not ok and required
        mark = "ok" if ok else "!!" if required else "--"
        print(f"[{mark}] {what}" + (f"\n     -> {fix}" if fix and not ok else ""))

    for arch, name in QEMU_BINARY.items():
        package = "qemu-system-x86" if arch == "x86_64" else "qemu-system-arm"
        line(shutil.which(name) is not None or arch != args.arch, f"{name}",
             f"apt-get install {package}")
    if shutil.which(QEMU_BINARY["x86_64"]):
        version = qemu_version("x86_64")
        line(version >= (10, 0), f"QEMU {'.'.join(map(str, version))}: x86 guests under TCG run "
             "on one host thread (multi-threaded TCG can hang them)",
             "QEMU 10 or later boots them 1.4x as fast (on Debian 12, ./setup takes it from "
             "bookworm-backports)", required=False)
    line(shutil.which("qemu-img") is not None, "qemu-img (disk overlays)",
         "apt-get install qemu-utils")
    sd_tools = ("mkfs.vfat", "mcopy", "mdir", "mke2fs")
    line(all(shutil.which(t) for t in sd_tools) or args.arch != "aarch64",
         "dosfstools, mtools, e2fsprogs (Raspberry Pi SD images)",
         "apt-get install dosfstools mtools e2fsprogs")
    usable, why = kvm_usable()
    line(True, f"KVM device: {why}")
    image = None
    with contextlib.suppress(LabError, ImportError):
        from refimage.build import default_out

        if default_out(args.arch).exists():
            image = Image.open(default_out(args.arch))
    if image is None:
        print("     (no reference image built yet: `roslab image build`; KVM not probed)")
        # an unprobed KVM is not a working one (a guest can hang at 100% sys): say so
        accel, why = (("kvm if a guest runs on it, else tcg", "not probed yet") if usable
                      else ("tcg", "no usable KVM device"))
    else:
        with tempfile.TemporaryDirectory(prefix="roslab-doctor-") as scratch:
            accel, why = QemuDriver().resolve_accel("auto", image, Path(scratch))
    line(True, f"accelerator: {accel} ({why})")
    cache = cache_root()
    probe = cache if cache.exists() else Path.home()
    free = shutil.disk_usage(probe).free / 2**30
    line(free > 4, f"free disk at {probe}: {free:.1f} GiB", "free at least 4 GiB")
    tmp_free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    line(tmp_free > 1, f"free disk in {tempfile.gettempdir()}: {tmp_free:.1f} GiB",
         "free at least 1 GiB")
    from drivers.libvirt import DEFAULT_URI, doctor_checks

    if args.platform != "libvirt":
        print("libvirt (info: only --platform libvirt needs it; `roslab doctor --platform "
              "libvirt` counts it):")
    for ok, what, fix in doctor_checks(args.libvirt_uri or DEFAULT_URI):
        line(ok, what, fix, required=args.platform == "libvirt")
    if args.platform == "labgrid":
        print("labgrid:")
        for ok, what, fix in labgrid.doctor_checks(labgrid.cli_options(args)):
            line(ok, what, fix)
    print("ready" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0
