"""`ros`: the subset of RancherOS's CLI the image contract names, plus the service commands."""

from __future__ import annotations

import argparse
import sys

import yaml

from ros import cloudinit, commands, config, install, services


def _version() -> str:
    return config.os_release().get("VERSION", "v0.0.0")


def _config_get(args: argparse.Namespace) -> int:
    value = config.get(config.load(), args.key)
    if value is None:
        return 0  # RancherOS prints nothing for an unset key
    if isinstance(value, (dict, list)):
        sys.stdout.write(yaml.safe_dump(value, default_flow_style=False))
    elif isinstance(value, bool):
        print("true" if value else "false")
    else:
        print(value)
    return 0


def _config_export(args: argparse.Namespace) -> int:
    data = config.load() if args.full else config.cloud_config_layers()
    sys.stdout.write(yaml.safe_dump(data, default_flow_style=False))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ros")
    parser.add_argument("-v", "--version", action="store_true")
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("config", aliases=["c"]).add_subparsers(dest="sub", required=True)
    g = c.add_parser("get")
    g.add_argument("key")
    g.set_defaults(func=_config_get)
    e = c.add_parser("export")
    e.add_argument("--full", action="store_true")
    e.add_argument("--private", action="store_true")
    e.set_defaults(func=_config_export)
    o = sub.add_parser("os").add_subparsers(dest="sub", required=True)
    o.add_parser("version").set_defaults(func=lambda a: print(_version()) or 0)
    s = sub.add_parser("service", aliases=["s"]).add_subparsers(dest="sub", required=True)
    s.add_parser("list").set_defaults(func=lambda a: services.service_list())
    i = sub.add_parser("install", help="install to a disk that boots by itself")
    i.add_argument("-d", "--device", required=True)
    i.add_argument("-c", "--cloud-config", dest="cloud_config")
    i.add_argument("-a", "--append", default="")
    i.add_argument("-i", "--image", dest="source", help="installation source: folder or device")
    i.add_argument("-t", "--install-type", dest="install_type", default="generic")
    i.add_argument("-f", "--force", action="store_true")
    i.add_argument("--no-reboot", dest="no_reboot", action="store_true")
    i.set_defaults(func=lambda a: install.install(a.device, a.cloud_config, a.append, a.source,
                                                  a.install_type, a.force, a.no_reboot))
    simple = {
        "sysinit": services.sysinit,
        "shutdown": services.shutdown,
        "udev-settle": commands.udev_settle,
        "udev": commands.udev,
        "netconf": commands.netconf,
        "console-init": commands.console_init,
        "user-docker": commands.user_docker,
        "preload-images": commands.preload_images,
    }
    for name, fn in simple.items():
        sub.add_parser(name).set_defaults(func=lambda a, fn=fn: fn())
    ci = sub.add_parser("cloud-init-execute")
    ci.add_argument("-pre-console", dest="pre_console", action="store_true")
    ci.set_defaults(func=lambda a: cloudinit.pre_console())
    args = parser.parse_args(argv)
    if args.version:
        print(f"ros version {_version()}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except PermissionError as exc:
        print(
            f"ros: {exc.strerror}: {exc.filename or 'the system Docker socket'} "
            "(run ros with sudo)",
            file=sys.stderr,
        )
        return 1
