"""`roslab image build`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lab.refimage.build import ensure_image


def register(sub: argparse._SubParsersAction) -> None:
    image = sub.add_parser("image", help="the reference image").add_subparsers(
        dest="image_cmd", required=True
    )
    build = image.add_parser("build", help="build the reference image from Debian packages")
    build.add_argument("--arch", default="x86_64", choices=["x86_64", "aarch64"])
    build.add_argument("--out", type=Path, help="output folder (default: the roslab cache)")
    build.add_argument("--mirror", help="Debian mirror URL (default: the host's apt source)")
    build.add_argument("--refresh", action="store_true", help="update the package lists first")
    build.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    out = ensure_image(
        args.arch,
        out=args.out,
        mirror=args.mirror,
        refresh=args.refresh,
        progress=lambda msg: print(f"[image] {msg}", flush=True),
    )
    manifest = json.loads((out / "manifest.json").read_text())
    for name, size in manifest["sizes"].items():
        print(f"{name:<16} {size / 1e6:8.1f} MB")
    print(out)
    return 0
