"""What the system service containers run."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shlex
import signal
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


def _vlans(spec: object) -> list[tuple[int, str | None]]:
    """`vlans: 100,200:foobar` (or a list): (id, name); no name means LINK.ID."""
    items = spec if isinstance(spec, list) else str(spec or "").split(",")
    out = []
    for item in items:
        vid, _, name = str(item).strip().partition(":")
        if vid.strip().isdigit():
            out.append((int(vid), name.strip() or None))
        elif vid.strip():
            config.console_print(f"network: vlans entry {item!r} is not ID[:NAME]; ignored")
    return out


def _links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def virtual_links(ifaces: dict) -> None:
    """The links rancher.network asks for, before any is configured (RancherOS's netconf):
    a bond or bridge named by a member's `bond:`/`bridge:` (or `bridge: true` on itself),
    with `bond_opts` from its own entry; members enslaved; `vlans` on a link as LINK.ID or
    their names. The new links are then configured like any other, by name."""
    have = set(_links())
    confs = {link: interface_config(link, ifaces) or {} for link in have if link != "lo"}
    bonds, bridges, members = set(), set(), []
    for link, conf in confs.items():
        if conf.get("bond"):
            bonds.add(str(conf["bond"]))
            members.append((link, str(conf["bond"])))
        if isinstance(conf.get("bridge"), str):
            bridges.add(conf["bridge"])
            members.append((link, conf["bridge"]))
    for key, conf in ifaces.items():
        if isinstance(conf, dict) and conf.get("bridge") is True and "*" not in str(key):
            bridges.add(str(key))
        if isinstance(conf, dict) and conf.get("bond_opts") and "*" not in str(key):
            bonds.add(str(key))
    for module, wanted in (("bonding", bonds), ("bridge", bridges),
                           ("8021q", any(c.get("vlans") for c in confs.values()))):
        if wanted:  # max_bonds=0: no bond0 of the module's own
            subprocess.run(["modprobe", "-q", module, *(["max_bonds=0"] if module == "bonding"
                                                         else [])])
    for bond in sorted(bonds - have):
        _ip("link", "add", bond, "type", "bond")
        opts = (ifaces.get(bond) or {}).get("bond_opts") or {}
        # mode and friends only change while the bond is down and has no members
        for opt, value in opts.items() if isinstance(opts, dict) else []:
            try:
                with open(f"/sys/class/net/{bond}/bonding/{opt}", "w") as fh:
                    fh.write(str(value))
            except OSError as exc:
                config.console_print(f"network: {bond} bond_opts {opt}={value}: {exc}")
    for bridge in sorted(bridges - have):
        _ip("link", "add", bridge, "type", "bridge")
    for link, master in members:
        _ip("link", "set", link, "down")  # a bond takes only members that are down
        _ip("link", "set", link, "master", master)
        _ip("link", "set", link, "up")
    for link, conf in confs.items():
        for vid, name in _vlans(conf.get("vlans")):
            _ip("link", "add", "link", link, "name", name or f"{link}.{vid}", "type", "vlan",
                "id", str(vid))


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
    virtual_links(ifaces)
    for link in _links():
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
    if os.path.exists(config.VISIBLE_CMDLINE):  # this container's own /proc shows them all
        subprocess.run(["mount", "--bind", config.VISIBLE_CMDLINE, "/proc/cmdline"])
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


def _strings(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if v]
    return [v for v in str(value or "").replace(",", " ").split()]


def registry_settings(cfg: dict, engine: str) -> dict[str, list[str]]:
    """rancher.<engine>.registry_mirror and .insecure_registry (RancherOS's keys) as
    dockerd's daemon.json settings."""
    return {
        "registry-mirrors": _strings(config.get(cfg, f"rancher.{engine}.registry_mirror")),
        "insecure-registries": _strings(config.get(cfg, f"rancher.{engine}.insecure_registry")),
    }


SYSTEM_DOCKER_CONFIG = "/etc/docker/system-docker.json"  # init names it to system-dockerd


def apply_system_docker_registry(cfg: dict) -> None:
    """rancher.system_docker's registry settings for the running system Docker: written to
    its config file, which dockerd reads again on SIGHUP (it is PID 1). Cloud-config of
    this boot arrives after it started, so this runs again once cloud-init has."""
    settings = {k: v for k, v in registry_settings(cfg, "system_docker").items() if v}
    text = json.dumps(settings, sort_keys=True)
    with contextlib.suppress(OSError), open(SYSTEM_DOCKER_CONFIG) as fh:
        if fh.read().strip() == text:  # init wrote `{}`: nothing to reload
            return
    os.makedirs(os.path.dirname(SYSTEM_DOCKER_CONFIG), exist_ok=True)
    with open(f"{SYSTEM_DOCKER_CONFIG}.new", "w") as fh:
        fh.write(text)
    os.replace(f"{SYSTEM_DOCKER_CONFIG}.new", SYSTEM_DOCKER_CONFIG)
    os.kill(1, signal.SIGHUP)
    config.boot_log("sysinit", f"system-docker registry settings: {text}")


def user_docker() -> int:
    """docker: the user Docker daemon, with rancher.docker settings."""
    cfg = config.load()
    extra = config.get(cfg, "rancher.docker.extra_args") or []
    if isinstance(extra, str):
        extra = extra.split()
    for stale in ("/var/run/docker.pid", "/var/run/docker.sock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    registry = registry_settings(cfg, "docker")
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
        *[f"--registry-mirror={m}" for m in registry["registry-mirrors"]],
        *[f"--insecure-registry={r}" for r in registry["insecure-registries"]],
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
