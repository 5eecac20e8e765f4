"""`roslab doctor`: is this host ready to run a platform's machines, and what to install."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from drivers import (
    DEFAULT_PLATFORM,
    PLATFORMS,
    add_platform_options,
    driver_class,
    platform_option_values,
)
from lab import registry
from lab.cache import cache_root
from lab.driver import Check
from lab.images import ARCHES


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    doctor = sub.add_parser("doctor", help="check what a platform needs on this host (the "
                                           "emulators, KVM, libvirt, disk space) and say "
                                           "what to install")
    doctor.add_argument("--arch", default="x86_64", choices=ARCHES)
    doctor.add_argument("--platform", default=DEFAULT_PLATFORM, choices=sorted(PLATFORMS),
                        help="whose problems count; the other platforms that run machines "
                             "on this host are listed for information")
    add_platform_options(doctor.add_argument_group("platform options").add_argument)
    doctor.set_defaults(func=cmd_doctor)


def host_checks() -> list[Check]:
    """Disk space where the images are cached and where machines run."""
    cache = cache_root()
    probe = cache if cache.exists() else Path.home()
    free = shutil.disk_usage(probe).free / 2**30
    tmp = tempfile.gettempdir()
    tmp_free = shutil.disk_usage(tmp).free / 2**30
    return [Check(free > 4, f"free disk at {probe}: {free:.1f} GiB", "free at least 4 GiB"),
            Check(tmp_free > 1, f"free disk in {tmp}: {tmp_free:.1f} GiB", "free at least 1 GiB")]


def cmd_doctor(args: argparse.Namespace) -> int:
    options = platform_option_values(args)
    problems = 0

    def show(checks: list[Check], counts: bool) -> None:
        nonlocal problems
        for c in checks:
            required = c.required and counts
            problems += not c.ok and required
            mark = "ok" if c.ok else "!!" if required else "--"
            print(f"[{mark}] {c.what}" + (f"\n     -> {c.fix}" if c.fix and not c.ok else ""))

    cls = driver_class(args.platform)
    show(cls.doctor(options, args.arch), counts=True)
    show(host_checks(), counts=True)
    if cls.host_address_for_guest("default", options) is not None:  # its guests reach here
        show([registry.doctor_check()], counts=True)
    for name in PLATFORMS:
        cls = driver_class(name)
        if name == args.platform or not cls.runs_on_host:
            continue
        checks = cls.doctor(options, args.arch)
        if checks:
            print(f"{name} (info: only --platform {name} needs it; `roslab doctor --platform "
                  f"{name}` counts it):")
            show(checks, counts=False)
    print("ready" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0
