"""`roslab gc`: remove what dead runs left on a platform, and this host's stale scratch
folders (the marks and the folders: lab/gc.py)."""

from __future__ import annotations

import argparse

from drivers import PLATFORMS, add_platform_options, clouds, driver_class, platform_option_values
from lab.gc import Garbage, parse_duration, stale_scratch


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gc = sub.add_parser("gc", help="remove what dead runs left on a platform "
                                   "(expired domains, instances, key pairs, images)")
    which = gc.add_mutually_exclusive_group(required=True)
    which.add_argument("--platform", choices=sorted(PLATFORMS))
    which.add_argument("--all-clouds", action="store_true",
                       help="every cloud platform whose SDK and credentials are here "
                            "(the others are listed as skipped, with why)")
    gc.add_argument("--older-than", default=None, type=parse_duration,
                    help="also take what roslab made longer ago than this (e.g. 5h), "
                         "expired or not")
    gc.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    add_platform_options(gc.add_argument_group("platform options: where to sweep")
                         .add_argument)
    gc.set_defaults(func=cmd_gc)


def cmd_gc(args: argparse.Namespace) -> int:
    options = platform_option_values(args)
    code = _collect_platforms(args, options)
    # then this host's scratch folders of dead runs, whichever platform they ran on
    _report("host", stale_scratch(args.dry_run), args.dry_run)
    return code


def _collect_platforms(args: argparse.Namespace, options: dict[str, object]) -> int:
    if not args.all_clouds:
        return _collect(args.platform, driver_class(args.platform), args, options)
    failed: list[str] = []
    for platform in clouds():
        cls = driver_class(platform)
        why = cls.not_ready(options)
        if why is not None:  # not configured here: nothing of it could be swept, say why
            print(f"skipped {platform}: {why}")
            continue
        try:
            _collect(platform, cls, args, options)
        except Exception as exc:  # one cloud's outage must not hide the others' garbage
            failed.append(f"{platform}: {type(exc).__name__}: {exc}")
            print(f"roslab gc: {platform} failed: {type(exc).__name__}: {exc}")
    if failed:  # what may be left behind, per cloud, at the end where a CI log shows it
        print(f"roslab gc: could not sweep {len(failed)} cloud(s); what they hold may be left:")
        for line in failed:
            print(f"  {line}")
    return 1 if failed else 0


def _collect(platform: str, cls: type, args: argparse.Namespace,
             options: dict[str, object]) -> int:
    found = cls.collect_garbage(older_than=args.older_than, dry_run=args.dry_run,
                                options=options)
    _report(platform, found, args.dry_run)
    return 0


def _report(where: str, found: list[Garbage], dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    for item in found:
        print(f"{verb} {where} {item.kind} {item.ident} (run {item.run}: {item.why})")
    print(f"roslab gc: {len(found)} {'found' if dry_run else 'removed'} on {where}")
