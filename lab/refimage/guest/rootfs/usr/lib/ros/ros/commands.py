"""What the system service containers run."""

from __future__ import annotations

import contextlib
import crypt
import fnmatch
import os
import subprocess
import threading
import time

from ros import cloudinit, config, hostkeys, tls
from ros.docker_api import USER_SOCKET, Docker, DockerError

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


def netconf() -> int:
    """network: bring interfaces up as rancher.network says (DHCP by default); stay up."""
    cfg = config.load()
    subprocess.run(["ip", "link", "set", "lo", "up"])
    dns = config.get(cfg, "rancher.network.dns.nameservers")
    if dns:
        with open("/etc/resolv.conf", "w") as fh:
            fh.writelines(f"nameserver {d}\n" for d in dns)
        open("/run/resolv.conf.static", "w").close()
    ifaces = config.get(cfg, "rancher.network.interfaces") or {}
    links = sorted(os.listdir("/sys/class/net"))
    children = []
    for link in links:
        if link == "lo":
            continue
        conf = next((c for pat, c in ifaces.items() if fnmatch.fnmatch(link, pat)), None)
        if not isinstance(conf, dict):
            continue
        subprocess.run(["ip", "link", "set", link, "up"])
        for addr in [conf.get("address"), *(conf.get("addresses") or [])]:
            if addr:
                subprocess.run(["ip", "addr", "add", str(addr), "dev", link])
        if conf.get("gateway"):
            subprocess.run(["ip", "route", "replace", "default", "via", str(conf["gateway"])])
        if conf.get("dhcp"):
            timeout = str(config.get(cfg, "rancher.network.dhcp_timeout") or 10)
            children.append(
                subprocess.Popen(
                    [
                        "udhcpc",
                        "-f",
                        "-i",
                        link,
                        "-t",
                        timeout,
                        "-T",
                        "1",
                        "-A",
                        "5",
                        "-s",
                        "/usr/share/udhcpc/default.script",
                        "-x",
                        f"hostname:{os.uname().nodename}",
                    ]
                )
            )
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
    while True:
        time.sleep(3600)


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
        "--log-opt",
        "max-size=25m",
        "--log-opt",
        "max-file=2",
        *[str(a) for a in extra],
        *tls.dockerd_args(cfg),
    ]
    os.execvpe("dockerd", argv, env)
    return 1


def preload_images() -> int:
    """preload-user-images: load the image tarballs into the user Docker."""
    docker = Docker(USER_SOCKET, timeout=300)
    if not docker.wait_ready(180):
        print("the user Docker did not answer in 180 s")
        return 1
    folder = "/var/lib/rancher/preload/docker"
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith((".tar", ".tar.gz", ".tgz")):
            try:
                docker.load(os.path.join(folder, name))
                print(f"loaded {name}")
            except DockerError as exc:
                print(f"could not load {name}: {exc}")
                return 1
    return 0
