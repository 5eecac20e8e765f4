"""`ros`: the subset of RancherOS's CLI the image contract names, plus the service commands."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ros import config, lazy

# what one command needs, imported when it runs (see ros.lazy)
cloudinit = lazy("ros.cloudinit")
commands = lazy("ros.commands")
docker_api = lazy("ros.docker_api")  # http.client: ~0.2 s under TCG
config_cli = lazy("ros.config_cli")
install = lazy("ros.install")
service_cli = lazy("ros.service_cli")
services = lazy("ros.services")
tls = lazy("ros.tls")


def _version() -> str:
    return config.os_release().get("VERSION", "v0.0.0")


def _config_get(args: argparse.Namespace) -> int:
    value = config.get(config.load(), args.key)
    if value is None:
        return 0  # RancherOS prints nothing for an unset key
    if isinstance(value, (dict, list)):
        sys.stdout.write(config.dump_yaml(value, default_flow_style=False))
    elif isinstance(value, bool):
        print("true" if value else "false")
    else:
        print(value)
    return 0


def _config_export(args: argparse.Namespace) -> int:
    text = config_cli.dump(config_cli.export(args.private, args.full))
    if args.output:
        config_cli.write_file(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _config_set(args: argparse.Namespace) -> int:
    config_cli.set_value(args.key, config_cli.typed(args.value))
    return 0


def _config_merge(args: argparse.Namespace) -> int:
    data = config_cli.parse(config_cli.read_input(args.input))
    errors = config_cli.validation_errors(data)
    for line in errors:
        print(line, file=sys.stderr)
    config_cli.write_saved(config.merge(config_cli.saved(), data))
    return 0


def _config_validate(args: argparse.Namespace) -> int:
    errors = config_cli.validation_errors(config_cli.parse(config_cli.read_input(args.input)))
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


def _env(args: argparse.Namespace) -> int:
    if not args.command:
        return 0
    env = {str(k): str(v) for k, v in (config.get(config.load(), "rancher.environment")
                                       or {}).items()}
    env.update(os.environ)  # the caller's environment wins, as in RancherOS
    try:
        os.execvpe(args.command[0], args.command, env)
    except OSError as exc:
        print(f"ros env: {args.command[0]}: {exc.strerror}", file=sys.stderr)
        return 127


def _dev(args: argparse.Namespace) -> int:
    """Resolve LABEL=/UUID= to a device path (empty when none has it), as `ros dev`."""
    if not args.spec:
        return 0
    kind, eq, value = args.spec.partition("=")
    path = args.spec
    if eq and kind in ("LABEL", "UUID", "PARTUUID", "PARTLABEL"):
        link = f"/dev/disk/by-{kind.lower()}/{value}"
        path = os.path.realpath(link) if os.path.exists(link) else ""
        if not path and kind == "LABEL":
            path = cloudinit.find_label(value) or ""
    print(path)
    return 0


def _engine_version() -> str:
    try:
        user_docker = docker_api.Docker(docker_api.USER_SOCKET, timeout=10)
        return str(user_docker.request("GET", "/version")["Version"])
    except (OSError, docker_api.DockerError):
        out = subprocess.run(["dockerd", "--version"], capture_output=True, text=True).stdout
        return out.split()[2].rstrip(",") if len(out.split()) > 2 else "unknown"


def _engine_list(args: argparse.Namespace) -> int:
    # one engine: the image's own dockerd (RancherOS lists docker-<version> the same way)
    print(f"current  docker-{_engine_version().split('+')[0]}")
    return 0


CONSOLES = ["default"]  # the consoles this image can run (RancherOS also has alpine, ...)
CONSOLE_LABEL = "io.rancher.os.console"  # this image's services share one image: says which


def _console_of(container: dict | None) -> str | None:
    """The console a `console` system container runs, None when none runs. RancherOS
    reads it from the image name (rancher/os-console -> default, rancher/os-alpineconsole
    -> alpine); this image's console container carries it in a label instead."""
    if not container or not (container.get("State") or {}).get("Running"):
        return None
    conf = container.get("Config") or {}
    if (conf.get("Labels") or {}).get(CONSOLE_LABEL):
        return str(conf["Labels"][CONSOLE_LABEL])
    name = str(conf.get("Image", "")).rsplit("/", 1)[-1].split(":")[0]
    if name == "os-console":
        return "default"
    if name.startswith("os-") and name.endswith("console"):
        return name[len("os-"):-len("console")]
    return None


def _console_list(args: argparse.Namespace) -> int:
    enabled = str(config.get(config.load(), "rancher.console") or "default")
    try:
        current = _console_of(docker_api.Docker(timeout=10).inspect("console"))
    except (OSError, docker_api.DockerError) as exc:
        print(f"ros console list: cannot ask the system Docker which console runs: {exc}",
              file=sys.stderr)
        current = None
    for name in dict.fromkeys([*CONSOLES, *(c for c in (enabled, current) if c)]):
        state = "current " if name == current else "enabled " if name == enabled else "disabled"
        print(f"{state} {name}")
    return 0


def _tls_gen(args: argparse.Namespace) -> int:
    return tls.generate(args.server, args.hostname or ["localhost"], args.dir)


NOT_SUPPORTED = {
    ("config", "syslinux"): "it has no syslinux global.cfg to edit",
    ("config", "images"): "its service images are built in, not pulled",
    ("config", "generate"): "it has no config templates",
    ("os", "upgrade"): "it is rebuilt by `roslab image build`, not upgraded in place",
    ("os", "list"): "it has no release index to read (offline)",
    ("engine", "switch"): "it has one engine, the image's own dockerd",
    ("engine", "enable"): "it has one engine, the image's own dockerd",
    ("engine", "create"): "it has one engine, the image's own dockerd",
    ("engine", "rm"): "it has one engine, the image's own dockerd",
    ("console", "switch"): "it has the default console only",
    ("console", "enable"): "it has the default console only",
    ("service", "create"): "services are declared in cloud-config (rancher.services)",
    ("service", "build"): "services use images the system Docker has",
    ("service", "pull"): "services use images the system Docker has (offline)",
    ("service", "kill"): "use `ros service stop`",
}


def _unsupported(group: str, name: str, why: str):  # type: ignore[no-untyped-def]
    def say(args: argparse.Namespace) -> int:
        print(f"ros {group} {name}: not supported by this image: {why}", file=sys.stderr)
        return 1
    return say


BOOT_COMMANDS = {  # the boot's own commands: (module, function), looked up when one runs
    "sysinit": (services, "sysinit"),
    "shutdown": (services, "shutdown"),
    "udev-settle": (commands, "udev_settle"),
    "udev": (commands, "udev"),
    "netconf": (commands, "netconf"),
    "console-init": (commands, "console_init"),
    "user-docker": (commands, "user_docker"),
    "preload-images": (commands, "preload_images"),
}


def main(argv: list[str]) -> int:
    if len(argv) == 1 and argv[0] in BOOT_COMMANDS:
        # each service of the boot runs one of these: skip building the whole CLI
        # (~0.2 s of argparse under TCG, on the boot's critical path)
        module, function = BOOT_COMMANDS[argv[0]]
        return int(getattr(module, function)() or 0)
    parser = argparse.ArgumentParser(prog="ros")
    parser.add_argument("-v", "--version", action="store_true")
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("config", aliases=["c"]).add_subparsers(dest="sub", required=True)
    g = c.add_parser("get")
    g.add_argument("key")
    g.set_defaults(func=_config_get)
    st = c.add_parser("set")
    st.add_argument("key")
    st.add_argument("value")
    st.set_defaults(func=_config_set)
    e = c.add_parser("export")
    e.add_argument("-o", "--output")
    e.add_argument("-f", "--full", action="store_true")
    e.add_argument("-p", "--private", action="store_true")
    e.set_defaults(func=_config_export)
    for name, fn in (("merge", _config_merge), ("validate", _config_validate)):
        m = c.add_parser(name)
        m.add_argument("-i", "--input")
        m.set_defaults(func=fn)
    o = sub.add_parser("os").add_subparsers(dest="sub", required=True)
    o.add_parser("version").set_defaults(func=lambda a: print(_version()) or 0)
    s = sub.add_parser("service", aliases=["s"]).add_subparsers(dest="sub", required=True)
    sl = s.add_parser("list")
    sl.add_argument("-a", "--all", action="store_true")
    sl.add_argument("-u", "--update", action="store_true", help="(the catalogue is local)")
    sl.set_defaults(func=lambda a: service_cli.run(a))  # imported when it runs
    for name in ("enable", "disable", "delete", "up", "start", "stop", "restart", "rm", "ps",
                 "logs"):
        sp = s.add_parser(name)
        sp.add_argument("services", nargs="*" if name in ("up", "ps", "logs") else "+")
        if name == "logs":
            sp.add_argument("-n", "--tail", type=int, default=100)
        sp.set_defaults(func=lambda a: service_cli.run(a))
    sub.add_parser("env").add_argument("command", nargs=argparse.REMAINDER)
    sub.choices["env"].set_defaults(func=_env)
    t = sub.add_parser("tls").add_subparsers(dest="sub", required=True)
    tg = t.add_parser("generate", aliases=["gen"])
    tg.add_argument("-s", "--server", action="store_true")
    tg.add_argument("-H", "--hostname", action="append")
    tg.add_argument("-d", "--dir")
    tg.set_defaults(func=_tls_gen)
    d = sub.add_parser("dev")
    d.add_argument("spec", nargs="?")
    d.set_defaults(func=_dev)
    en = sub.add_parser("engine").add_subparsers(dest="sub", required=True)
    en.add_parser("list").set_defaults(func=_engine_list)
    co = sub.add_parser("console").add_subparsers(dest="sub", required=True)
    co.add_parser("list").set_defaults(func=_console_list)
    groups = {"config": c, "os": o, "service": s, "engine": en, "console": co}
    for (group, name), why in NOT_SUPPORTED.items():
        p = groups[group].add_parser(name)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_unsupported(group, name, why))
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
    for name, (module, function) in BOOT_COMMANDS.items():
        sub.add_parser(name).set_defaults(
            func=lambda a, module=module, function=function: getattr(module, function)())
    ci = sub.add_parser("cloud-init-execute")
    ci.add_argument("-pre-console", dest="pre_console", action="store_true")
    ci.set_defaults(func=lambda a: cloudinit.pre_console() if a.pre_console
                    else cloudinit.execute())
    args = parser.parse_args(argv)
    if args.version:
        print(f"ros version {_version()}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (config_cli.ConfigError, service_cli.ServiceError) as exc:
        print(f"ros: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(
            f"ros: {exc.strerror}: {exc.filename or 'the system Docker socket'} "
            "(run ros with sudo)",
            file=sys.stderr,
        )
        return 1
