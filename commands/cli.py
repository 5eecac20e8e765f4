"""The `roslab` command. Each subcommand lives in its own module with a `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from types import FrameType

from lab.errors import LabError

DESCRIPTION = ("roslab boots RancherOS-style images on QEMU, libvirt, clouds and "
               "physical boxes, and measures and checks them. Build the reference image, "
               "boot an image and attach its console, check this host, bench boot times, "
               "sweep what dead runs left, run the nightly matrix, and read every run's "
               "results back (history, dashboard).")

# Modules that add subcommands; each defines register(subparsers) and sets `func` on its parser.
COMMAND_MODULES = [
    "commands.image",  # roslab image build
    "commands.boot",  # roslab boot
    "commands.doctor",  # roslab doctor
    "commands.bench",  # roslab bench, bench compare, bench report
    "commands.gc",  # roslab gc
    "commands.registry",  # roslab registry list, add, remove
    "commands.mutants",  # roslab mutants
    "commands.matrix",  # roslab matrix plan, emit, run, report
    "commands.history",  # roslab history test, cell, milestone, flakes, import
    "commands.dashboard",  # roslab dashboard
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roslab", description=DESCRIPTION,
                                     epilog="`roslab COMMAND --help` for each; the scenarios "
                                            "run with `pytest scenarios/ --platform P`.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM cleans up like Ctrl-C: no stray QEMU, temp dir or half-built image
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabError as exc:
        print(f"roslab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("roslab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
