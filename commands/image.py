"""`roslab image build`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refimage.build import ensure_image
from refimage.disks import ensure_disks


def register(sub: argparse._SubParsersAction) -> None:
    image = sub.add_parser("image", help="the reference image").add_subparsers(
        dest="image_cmd", required=True
    )
    build = image.add_parser("build", help="build the reference image from Debian packages")
    build.add_argument("--arch", default="x86_64", choices=["x86_64", "aarch64"])
    build.add_argument("--out", type=Path, help="output folder (default: the roslab cache)")
    build.add_argument("--mirror", help="Debian mirror URL (default: the host's apt source)")
    build.add_argument("--refresh", action="store_true", help="update the package lists first")
    build.add_argument("--disks", action="store_true",
                       help="also the clouds' disk images (rancheros-openstack.img, "
                            "-digitalocean.img, -gce.tar.gz, -aliyun.vhd, -cloudstack.img, "
                            "-aws.img; "
                            "x86_64), made with the guest's ros install")
    build.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    out = ensure_image(
        args.arch,
        out=args.out,
        mirror=args.mirror,
        refresh=args.refresh,
        progress=lambda msg: print(f"[image] {msg}", flush=True),
    )
    if args.disks:
        ensure_disks(out, progress=lambda msg: print(f"[image] {msg}", flush=True))
    manifest = json.loads((out / "manifest.json").read_text())
    for name, size in manifest["sizes"].items():
        used = (out / name).stat().st_blocks * 512
        print(f"{name:<28} {size / 1e6:8.1f} MB" + (f" ({used / 1e6:.1f} MB allocated)"
                                                     if used < size * 0.9 else ""))
    print(out)
    return 0
