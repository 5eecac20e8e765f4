"""`roslab boot`: boot an image and attach its console."""

from __future__ import annotations

import argparse
import os
import select
import sys
import tempfile
import termios
import tty
from pathlib import Path
from typing import Any

from drivers import DEFAULT_PLATFORM, PLATFORMS, add_platform_options, platform_option_values
from drivers.machines import make_machine, start_registry
from lab.cloudconfig import DATASOURCES
from lab.errors import LabError
from lab.images import ARCHES

DETACH = b"\x1d"  # Ctrl-]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    boot = sub.add_parser("boot", help="boot an image and attach its console (Ctrl-] stops)")
    boot.add_argument("--platform", default=DEFAULT_PLATFORM, choices=sorted(PLATFORMS))
    boot.add_argument("--image", type=Path, default=None,
                      help="folder with vmlinuz+initrd, .iso, disk or Pi SD .zip "
                           "(default: reference image)")
    boot.add_argument("--arch", default="x86_64", choices=ARCHES)
    boot.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    boot.add_argument("--cloud-config", type=Path, default=None, help="a #cloud-config file")
    boot.add_argument("--datasource", default="default", choices=("default", *DATASOURCES),
                      help="how the cloud-config reaches the guest (default: the board's "
                           "first choice, a config drive where there is one)")
    add_platform_options(boot.add_argument_group("platform options").add_argument)
    boot.set_defaults(func=cmd_boot)


def _say(message: str) -> None:
    print(f"roslab: {message}", file=sys.stderr)


def cmd_boot(args: argparse.Namespace) -> int:
    cc = args.cloud_config.read_text() if args.cloud_config else None
    options = platform_option_values(args)
    # the lab's registry, the machine's Dockers' mirror, for as long as the machine runs
    registry = start_registry(args.platform, args.datasource, options, _say)
    try:
        if registry is not None:
            _say(f"the lab's registry serves at {registry.url} (`roslab registry list`)")
        return _boot(args, cc, options, registry.port if registry else None)
    finally:
        if registry is not None:
            registry.stop()


def _boot(args: argparse.Namespace, cc: str | None, options: dict[str, Any],
          registry_port: int | None) -> int:
    with tempfile.TemporaryDirectory(prefix="roslab-boot-") as work, make_machine(
        args.platform, args.image, args.arch, cc, args.datasource, Path(work), args.accel,
        progress=_say, platform_options=options, registry_port=registry_port,
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
