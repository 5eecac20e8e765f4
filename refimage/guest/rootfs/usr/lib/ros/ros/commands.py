"""What the system service containers run."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shlex
import socket
import subprocess
import threading
import time

from ros import config, lazy

cloudinit = lazy("ros.cloudinit")
# http.client costs ~0.2 s to import under TCG; user-docker and netconf need no API
docker_api = lazy("ros.docker_api")
hostkeys = lazy("ros.hostkeys")
tls = lazy("ros.tls")

UDEVD = "/lib/systemd/systemd-udevd"


def udev_settle() -> int:
    """udev-cold: coldplug every device (loads their modules), then leave."""
    subprocess.run([UDEVD, "--daemon", "--resolve-names=never"], check=True)
    subprocess.run(["udevadm", "trigger", "--type=subsystems", "--action=add"])
    subprocess.run(["udevadm", "trigger", "--type=devices", "--action=add"])
    rc = subprocess.run(["udevadm", "settle", "--timeout=60"]).returncode
    subprocess.run(["udevadm", "control", "--exit"])
    return rc


def udev() -> int:
    os.execv(UDEVD, [UDEVD, "--resolve-names=never"])
    return 1


def _mac(link: str) -> str:
    try:
        with open(f"/sys/class/net/{link}/address") as fh:
            return fh.read().strip().lower()
    except OSError:
        return ""


def interface_config(link: str, interfaces: dict) -> dict | None:
    """The rancher.network.interfaces entry for `link`, as RancherOS picks it: a `mac=`
    match first, then the exact name, then a glob (`match:` overrides the key)."""
    exact = glob = None
    for key, conf in interfaces.items():
        if not isinstance(conf, dict):
            continue
        pattern = str(conf.get("match") or key)
        if pattern.lower().startswith("mac="):
            if pattern[4:].lower() == _mac(link):
                return conf
        elif pattern == link:
            exact = conf
        elif glob is None and fnmatch.fnmatchcase(link, pattern):
            glob = conf
    return exact or glob


def _net_commands(cmds, what: str) -> None:
    for cmd in [cmds] if isinstance(cmds, str) else cmds or []:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        proc = subprocess.run(argv, capture_output=True, text=True)
        config.boot_log("network", f"{what} $ {cmd!r} -> {proc.returncode}\n"
                                   f"{proc.stdout}{proc.stderr}")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0 and "File exists" not in proc.stderr:  # a restarted service
        msg = f"network: ip {' '.join(args)} failed: {proc.stderr.strip()}"
        config.boot_log("network", msg)
        config.console_print(msg)


def _resolv_conf(cfg: dict) -> None:
    dns = config.get(cfg, "rancher.network.dns") or {}
    servers, search = dns.get("nameservers") or [], dns.get("search") or []
    if not (servers or search):
        return
    with open("/etc/resolv.conf", "w") as fh:
        if search:
            fh.write(f"search {' '.join(str(s) for s in search)}\n")
        fh.writelines(f"nameserver {d}\n" for d in servers)
    open("/run/resolv.conf.static", "w").close()  # DHCP leases leave it alone


def _static(link: str, conf: dict) -> None:
    if conf.get("mtu"):
        _ip("link", "set", link, "mtu", str(conf["mtu"]))
    _ip("link", "set", link, "up")
    for addr in [conf.get("address"), *(conf.get("addresses") or [])]:
        if addr:
            _ip("addr", "add", str(addr), "dev", link)
    if conf.get("gateway"):
        _ip("route", "replace", "default", "via", str(conf["gateway"]), "dev", link)
    if conf.get("gateway_ipv6"):
        _ip("-6", "route", "replace", "default", "via", str(conf["gateway_ipv6"]), "dev", link)


def netconf() -> int:
    """network: pre_cmds, each interface as rancher.network.interfaces says (static
    addresses, gateway, MTU; DHCP by default), DNS, post_cmds; then stay up."""
    cfg = config.load()
    net = config.get(cfg, "rancher.network") or {}
    with open(cloudinit.NETCONF_APPLIED, "w") as fh:  # cloud-init compares the user-data's
        json.dump(net, fh, sort_keys=True, default=str)
    subprocess.run(["ip", "link", "set", "lo", "up"])
    _net_commands(net.get("pre_cmds"), "pre_cmds")
    _resolv_conf(cfg)
    ifaces = net.get("interfaces") or {}
    timeout = str(net.get("dhcp_timeout") or 10)
    children, leases = [], []
    for link in sorted(os.listdir("/sys/class/net")):
        conf = interface_config(link, ifaces) if link != "lo" else None
        if conf is None:
            continue
        _net_commands(conf.get("pre_up"), f"{link} pre_up")
        _static(link, conf)
        if conf.get("dhcp"):
            leases.append(f"{cloudinit.LEASES}/{link}.lease")
            children.append(subprocess.Popen([
                "udhcpc", "-f", "-i", link, "-t", timeout, "-T", "1", "-A", "5",
                "-s", "/usr/share/udhcpc/default.script",
                "-x", f"hostname:{os.uname().nodename}",
            ]))
        _net_commands(conf.get("post_up"), f"{link} post_up")
    # post_cmds once the DHCP interfaces have a lease (or their timeout passed)
    deadline = time.monotonic() + float(timeout) + 2
    while not all(os.path.exists(p) for p in leases) and time.monotonic() < deadline:
        time.sleep(0.2)
    _net_commands(net.get("post_cmds"), "post_cmds")
    if not children:
        while True:  # a long-running service, like RancherOS's network
            time.sleep(3600)
    for child in children:
        child.wait()
    return 0


def _respawn(argv: list[str]) -> None:
    while True:
        subprocess.run(argv)
        time.sleep(0.5)


def _serial_ttys() -> list[str]:
    ttys = []
    for token in config.cmdline_tokens():
        if token.startswith("console="):
            tty = token.split("=", 1)[1].split(",")[0]
            if (
                tty.startswith(("ttyS", "ttyAMA", "hvc", "tty"))
                and tty not in ttys
                and os.path.exists(f"/dev/{tty}")
                and tty != "tty0"
            ):
                ttys.append(tty)
    return ttys or ["ttyS0"]


def console_init() -> int:
    """console: sshd, gettys (autologin when asked), write_files and runcmd."""
    cfg = config.load()
    password = config.get(cfg, "rancher.password")
    if password is not None:
        import crypt  # deprecated module, and only a password in cloud-config needs it

        hashed = crypt.crypt(str(password), crypt.mksalt(crypt.METHOD_SHA512))
        with open("/etc/shadow") as fh:
            lines = fh.read().splitlines()
        with open("/etc/shadow", "w") as fh:
            for line in lines:
                parts = line.split(":")
                if parts[0] == "rancher":
                    parts[1] = hashed
                fh.write(":".join(parts) + "\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    hostkeys.setup(cfg)
    with contextlib.suppress(OSError):  # this container's copy of the host's file
        cloudinit.set_hosts_name(socket.gethostname())
    cloudinit.write_files(cfg)
    threading.Thread(target=_respawn, args=(["/usr/sbin/sshd", "-D", "-e"],), daemon=True).start()
    autologin = config.get(cfg, "rancher.autologin")
    auto = set(autologin if isinstance(autologin, list) else [autologin] if autologin else [])
    for tty in _serial_ttys():
        argv = ["getty", "-n", "-l", "/usr/bin/autologin"] if tty in auto else ["getty"]
        threading.Thread(
            target=_respawn, args=([*argv, "115200", tty, "vt100"],), daemon=True
        ).start()
    cloudinit.runcmd(cfg)
    rc_local()
    while True:
        time.sleep(3600)


RC_LOCAL = "/etc/rc.local"


def rc_local() -> None:
    """/etc/rc.local, when executable, after runcmd, as RancherOS's console runs it (users
    start containers there: it comes before the user Docker answers, so it waits itself)."""
    if not os.access(RC_LOCAL, os.X_OK) or not os.path.isfile(RC_LOCAL):
        return
    try:
        proc = subprocess.run([RC_LOCAL], capture_output=True, text=True)
    except OSError as exc:  # e.g. its #! names an interpreter that is not there
        config.console_print(f"console: {RC_LOCAL} could not run: {exc}")
        return
    config.boot_log("rc.local", f"{RC_LOCAL} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")


def proxy_environment(cfg: dict) -> dict[str, str]:
    """rancher.network's proxies as the variables dockerd reads (both spellings)."""
    env = config.environment(cfg)
    names = [n for key, var in config.PROXY_KEYS.items() for n in (var, key)]
    return {n: env[n] for n in names if n in env}


def proxy_exports() -> int:
    """`export NAME=VALUE` lines of the proxies, for PID 1's shell before system-dockerd."""
    for name, value in proxy_environment(config.load()).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def user_docker() -> int:
    """docker: the user Docker daemon, with rancher.docker settings."""
    cfg = config.load()
    extra = config.get(cfg, "rancher.docker.extra_args") or []
    if isinstance(extra, str):
        extra = extra.split()
    for stale in ("/var/run/docker.pid", "/var/run/docker.sock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    env = dict(os.environ, DOCKER_RAMDISK="true")
    env.update(proxy_environment(cfg))
    env.update(
        {str(k): str(v) for k, v in (config.get(cfg, "rancher.docker.environment") or {}).items()}
        if isinstance(config.get(cfg, "rancher.docker.environment"), dict)
        else {}
    )
    argv = [
        "dockerd",
        "--host=unix:///var/run/docker.sock",
        "--group=docker",
        "--data-root=/var/lib/docker",
        "--exec-root=/var/run/docker",
        "--pidfile=/var/run/docker.pid",
        "--storage-driver=overlay2",
        "--add-runtime=crun=/usr/bin/crun",
        "--default-runtime=crun",
        "--log-opt",
        "max-size=25m",
        "--log-opt",
        "max-file=2",
        *[str(a) for a in extra],
        *tls.dockerd_args(cfg),
    ]
    os.execvpe("dockerd", argv, env)
    return 1


PRELOAD = "/var/lib/rancher/preload"


def preload_images() -> int:
    """preload-user-images: load the image tarballs into the user Docker."""
    docker = docker_api.Docker(docker_api.USER_SOCKET, timeout=300)
    if not docker.wait_ready(180):
        print("the user Docker did not answer in 180 s")
        return 1
    return 1 if load_preloaded(docker, f"{PRELOAD}/docker") else 0


def load_preloaded(docker: docker_api.Docker, folder: str) -> list[str]:
    """Load every image tarball (.tar, .tar.gz, .tgz) in `folder`; returns the failures,
    each said on the console and in the boot log (the boot goes on)."""
    failed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith((".tar", ".tar.gz", ".tgz")):
            try:
                docker.load(os.path.join(folder, name))
                config.boot_log("preload", f"loaded {folder}/{name}")
            except docker_api.DockerError as exc:
                failed.append(name)
                msg = f"ros: could not preload {folder}/{name}: {exc}"
                config.boot_log("preload", msg)
                config.console_print(msg)
    return failed
