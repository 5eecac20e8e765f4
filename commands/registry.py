"""`roslab registry`: what the lab's registry serves the guests (lab/registry.py): list it,
add images (`docker save` tarballs, OCI image layouts), remove them. Each command starts
a registry of its own on the lab's storage for as long as it runs; a running pytest run
serves what is added at once (they share the storage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lab.errors import ConfigError
from lab.registry import Registry, default_storage


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    reg = sub.add_parser("registry", help="list, add and remove the images the lab's "
                                          "registry serves the guests' Dockers")
    reg.add_argument("--storage", type=Path, default=None,
                     help=f"the registry's storage (default {default_storage()})")
    verbs = reg.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="the images it holds: name:tag, digest, arches")
    add = verbs.add_parser("add", help="push images into it: `docker save` tarballs "
                                       "(under their tags) or OCI image layout folders")
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    add.add_argument("--name", default=None, metavar="REPO[:TAG]",
                     help="the name of an OCI layout's image (default: its index's "
                          "annotation)")
    remove = verbs.add_parser("remove", help="remove tags (a manifest no tag names goes, "
                                             "its blobs once no run uses the registry)")
    remove.add_argument("refs", nargs="+", metavar="NAME[:TAG]")
    reg.set_defaults(func=cmd_registry)


def cmd_registry(args: argparse.Namespace) -> int:
    if args.verb == "add":  # bad input is named before anything starts
        missing = [str(p) for p in args.paths if not p.exists()]
        if missing:
            raise ConfigError(f"no such file or folder: {', '.join(missing)}")
    with Registry(args.storage) as registry:
        if args.verb == "list":
            entries = registry.images()
            for e in entries:
                print(f"{e.ref:40} {e.digest}  {','.join(e.arches)}")
            if not entries:
                print(f"(empty: {registry.storage}; a pytest run adds the lab's own images)")
        elif args.verb == "add":
            for path in args.paths:
                pushed = registry.add_oci_layout(path, args.name) if path.is_dir() \
                    else registry.add_docker_archive(path)
                print(f"{path}: added {', '.join(pushed)}")
        else:
            for ref in args.refs:
                registry.remove(ref)
                print(f"removed {ref}")
    if args.verb == "remove" and not registry.collect_garbage():
        print("(its blobs go at the next `roslab registry remove` that no run overlaps)")
    return 0
