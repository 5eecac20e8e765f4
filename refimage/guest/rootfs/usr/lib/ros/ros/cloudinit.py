"""cloud-config: fetch from the datasources, validate, merge, save, apply.

`cloud-init-execute -pre-console` (the cloud-init-execute service) fetches and saves,
then applies what belongs to the whole OS: bootcmd, rancher.sysctl, rancher.modules, the
hostname (and its /etc/hosts line), SSH keys, mounts, and write_files for system
containers that already run. The console service applies the other write_files and
runcmd inside the console, where the user works (as RancherOS). Invalid YAML, and keys
this image does not apply, are logged and shown on the console, and boot goes on.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import grp
import gzip
import io
import json
import os
import pwd
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

import yaml

from ros import config
from ros.docker_api import Docker, DockerError

LOG = "cloud-init-save"
BOOT_YML = f"{config.CLOUD_CONFIG_D}/boot.yml"
METADATA = config.METADATA
SCRIPT = f"{config.CONF_DIR}/cloud-config-script"


def log(msg: str) -> None:
    config.boot_log(LOG, f"{time.strftime('%H:%M:%S')} {msg}")


def _label_of(dev: str) -> str | None:
    """The ISO 9660 or FAT volume label of a block device (what blkid would say)."""
    try:
        with open(dev, "rb") as fh:
            boot = fh.read(512)
            fh.seek(32768)
            pvd = fh.read(2048)
    except OSError:
        return None
    if pvd[1:6] == b"CD001":
        return pvd[40:72].decode("ascii", "replace").strip()
    if boot[0x52:0x57] == b"FAT32":
        return boot[0x47:0x52].decode("ascii", "replace").strip()
    if boot[0x36:0x39] == b"FAT":
        return boot[0x2B:0x36].decode("ascii", "replace").strip()
    return None


def find_label(label: str) -> str | None:
    link = f"/dev/disk/by-label/{label}"
    if os.path.exists(link):
        return os.path.realpath(link)
    try:
        with open("/proc/partitions") as fh:
            names = [line.split()[3] for line in fh.read().splitlines()[2:] if line.split()]
    except OSError:
        return None
    for name in names:
        dev = f"/dev/{name}"
        if os.path.exists(dev) and (_label_of(dev) or "").lower() == label.lower():
            return dev
    return None


def _mount_label(label: str, where: str) -> str | None:
    if os.path.ismount(where):
        return where
    dev = find_label(label)
    if not dev:
        log(f"no device labelled {label}")
        return None
    os.makedirs(where, exist_ok=True)
    for fstype in ("iso9660", "vfat"):
        if (
            subprocess.run(
                ["mount", "-t", fstype, "-o", "ro", dev, where], capture_output=True
            ).returncode
            == 0
        ):
            log(f"mounted {dev} ({label}) on {where}")
            return where
    log(f"could not mount {dev} ({label})")
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def from_configdrive(where: str) -> tuple[str | None, dict]:
    mnt = _mount_label("config-2", where)
    if not mnt:
        return None, {}
    meta: dict = {}
    raw = _read(f"{mnt}/openstack/latest/meta_data.json")
    if raw:
        try:
            data = json.loads(raw)
            meta["hostname"] = data.get("hostname") or data.get("name")
            keys = data.get("public_keys") or {}
            meta["ssh_keys"] = list(keys.values()) if isinstance(keys, dict) else list(keys)
        except ValueError:
            log("openstack/latest/meta_data.json is not valid JSON")
    return _read(f"{mnt}/openstack/latest/user_data"), meta


def from_nocloud(where: str = "/media/cidata") -> tuple[str | None, dict]:
    mnt = _mount_label("cidata", where)
    if not mnt:
        return None, {}
    meta: dict = {}
    raw = _read(f"{mnt}/meta-data")
    if raw:
        try:
            data = config.load_yaml(raw) or {}
            meta["hostname"] = data.get("local-hostname")
        except yaml.YAMLError:
            log("meta-data is not valid YAML")
    return _read(f"{mnt}/user-data"), meta


def from_url(url: str, tries: int = 20) -> tuple[str | None, dict]:
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode("utf-8", errors="replace"), {}
        except OSError as exc:
            if attempt == tries - 1:
                log(f"{url}: {exc}")
            time.sleep(1)
    return None, {}


def from_cmdline() -> tuple[str | None, dict]:
    tokens = config.cmdline_tokens()
    for token in tokens:
        if token.startswith("cloud-config-url="):
            return from_url(token.partition("=")[2])
    cc = {k: v for k, v in config.cmdline_config(tokens).items() if k != "rancher"}
    if not cc:
        return None, {}
    return "#cloud-config\n" + config.dump_yaml(cc), {}


# -- cloud metadata services (RancherOS's names; `name:root` overrides the address) --------

METADATA_WAIT = 30.0  # seconds a cloud's service may take to answer before boot goes on
REQUEST_TIMEOUT = 3.0
LEASES = "/run/udhcpc"  # the network service's DHCP leases (udhcpc's default.script)


class NoService(Exception):
    """The datasource's metadata service did not answer (or was not the cloud's own)."""


def _http(url: str, headers: dict | None = None, method: str = "GET") -> bytes | None:
    """The body, or None for a 404 (the key is not set); other HTTP errors raise."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _text(url: str, headers: dict | None = None) -> str | None:
    body = _http(url, headers)
    return None if body is None else body.decode("utf-8", errors="replace")


def _until_answered(url: str, headers: dict | None = None) -> bytes | None:
    """GET `url` until the service answers at all (the network may still be coming up),
    for at most METADATA_WAIT seconds; an HTTP error status counts as an answer."""
    deadline = time.monotonic() + METADATA_WAIT
    while True:
        try:
            return _http(url, headers)
        except urllib.error.HTTPError as exc:
            raise NoService(f"{url} answered HTTP {exc.code} {exc.reason}") from exc
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            if time.monotonic() >= deadline:
                raise NoService(f"no answer from {url} within {METADATA_WAIT:.0f} s "
                                f"({reason})") from exc
            time.sleep(1)


def _imds_token(root: str, ttl_header: str, token_header: str) -> dict:
    """IMDSv2-style session token headers; {} where the service has no tokens (IMDSv1)."""
    try:
        token = _http(f"{root}latest/api/token", {ttl_header: "21600"}, method="PUT")
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 404, 405):
            return {}
        raise
    return {token_header: token.decode().strip()} if token else {}


def _indexed_keys(base: str, headers: dict) -> list[str]:
    """Keys listed as `0=name` (EC2) or `0/` (Aliyun) under public-keys/."""
    listing = _text(f"{base}public-keys/", headers) or ""
    keys = []
    for line in listing.splitlines():
        index = line.split("=")[0].strip("/")
        key = _text(f"{base}public-keys/{index}/openssh-key", headers) if index else None
        if key:
            keys.append(key.strip())
    return keys


def from_ec2(root: str) -> tuple[str | None, dict]:
    root = root or "http://169.254.169.254/"
    try:
        _until_answered(f"{root}latest/meta-data/")
    except NoService as exc:
        if "HTTP 401" not in str(exc):  # IMDSv2 only: there, and wants a token
            raise
    headers = _imds_token(root, "X-aws-ec2-metadata-token-ttl-seconds",
                          "X-aws-ec2-metadata-token")
    base = f"{root}latest/meta-data/"
    meta = {"hostname": _text(f"{base}hostname", headers),
            "local_ipv4": _text(f"{base}local-ipv4", headers),
            "ssh_keys": _indexed_keys(base, headers)}
    return _text(f"{root}latest/user-data", headers), meta


def from_gce(root: str) -> tuple[str | None, dict]:
    # the name resolves through /etc/hosts, as on Google's own images
    root = root or "http://metadata.google.internal/"
    flavor = {"Metadata-Flavor": "Google"}
    base = f"{root}computeMetadata/v1/"
    req = urllib.request.Request(base, headers=flavor)
    _until_answered(base, flavor)
    with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as resp:
        if resp.headers.get("Metadata-Flavor") != "Google":
            raise NoService(f"{base} answered without Metadata-Flavor: Google (not GCE's)")
    attr = f"{base}instance/attributes/"
    lines: list[str] = []
    sources = [f"{attr}ssh-keys", f"{attr}sshKeys"]
    if (_text(f"{attr}block-project-ssh-keys", flavor) or "").strip().lower() != "true":
        sources += [f"{base}project/attributes/ssh-keys", f"{base}project/attributes/sshKeys"]
    for url in sources:
        lines += (_text(url, flavor) or "").splitlines()
    # each line is USER:KEY
    keys = [line.partition(":")[2].strip() for line in lines if ":" in line]
    hostname = (_text(f"{base}instance/hostname", flavor) or "").split(".")[0] or None
    user_data = _text(f"{attr}user-data", flavor)
    if user_data is None:
        user_data = _text(f"{attr}startup-script", flavor)
    return user_data, {"hostname": hostname, "ssh_keys": keys,
                       "local_ipv4": _text(f"{base}instance/network-interfaces/0/ip", flavor)}


def from_digitalocean(root: str) -> tuple[str | None, dict]:
    root = root or "http://169.254.169.254/"
    body = _until_answered(f"{root}metadata/v1.json")
    try:
        doc = json.loads(body or b"{}")
    except ValueError as exc:
        raise NoService(f"{root}metadata/v1.json is not JSON") from exc
    private = (doc.get("interfaces") or {}).get("private") or [{}]
    meta = {"hostname": doc.get("hostname"), "ssh_keys": list(doc.get("public_keys") or []),
            "local_ipv4": (private[0].get("ipv4") or {}).get("ip_address")}
    return _text(f"{root}metadata/v1/user-data"), meta


def _dhcp_server() -> str:
    """The DHCP server of the first lease the network service got (CloudStack's router)."""
    deadline = time.monotonic() + METADATA_WAIT
    while time.monotonic() < deadline:
        for name in sorted(os.listdir(LEASES)) if os.path.isdir(LEASES) else []:
            lease = dict(line.partition("=")[::2] for line in
                         (_read(f"{LEASES}/{name}") or "").splitlines())
            if lease.get("serverid"):
                return lease["serverid"].strip()
        time.sleep(1)
    raise NoService(f"no DHCP lease with a server address in {LEASES} within "
                    f"{METADATA_WAIT:.0f} s")


def from_cloudstack(root: str) -> tuple[str | None, dict]:
    root = root or f"http://{_dhcp_server()}/"
    base = f"{root}latest/meta-data/"
    _until_answered(base)
    keys = (_text(f"{base}public-keys") or "").splitlines()
    meta = {"hostname": _text(f"{base}local-hostname"), "local_ipv4": _text(f"{base}local-ipv4"),
            "ssh_keys": [k.strip() for k in keys if k.strip()]}
    return _text(f"{root}latest/user-data"), meta


def from_aliyun(root: str) -> tuple[str | None, dict]:
    root = root or "http://100.100.100.200/"
    version = "2016-01-01"  # the API version RancherOS reads
    base = f"{root}{version}/meta-data/"
    try:
        _until_answered(base)
    except NoService as exc:
        if "HTTP 401" not in str(exc):  # hardened mode: tokens required
            raise
    headers = _imds_token(root, "X-aliyun-ecs-metadata-token-ttl-seconds",
                          "X-aliyun-ecs-metadata-token")
    meta = {"hostname": _text(f"{base}hostname", headers),
            "local_ipv4": _text(f"{base}private-ipv4", headers),
            "ssh_keys": _indexed_keys(base, headers)}
    return _text(f"{root}{version}/user-data", headers), meta


CLOUDS = {"ec2": from_ec2, "gce": from_gce, "digitalocean": from_digitalocean,
          "cloudstack": from_cloudstack, "aliyun": from_aliyun}


def from_cloud(kind: str, root: str) -> tuple[str | None, dict]:
    """A cloud's user-data and metadata; a service that does not answer is named on the
    console and skipped, within METADATA_WAIT seconds (plus a few requests)."""
    started = time.monotonic()
    if root and not root.endswith("/"):
        root += "/"
    try:
        return CLOUDS[kind](root)
    except (NoService, OSError, ValueError) as exc:
        msg = (f"cloud-init: datasource {kind} failed after {time.monotonic() - started:.0f} s,"
               f" going on without it: {exc}")
        log(msg)
        config.console_print(msg)
        return None, {}


def fetch(ds: str) -> tuple[str | None, dict]:
    kind, _, arg = ds.partition(":")
    if kind in CLOUDS:
        return from_cloud(kind, arg)
    if kind == "configdrive":
        return from_configdrive(arg or "/media/config-2")
    if kind == "nocloud":
        return from_nocloud(arg or "/media/cidata")
    if kind == "url":
        return from_url(arg)
    if kind == "cmdline":
        return from_cmdline()
    log(f"unknown datasource {ds!r}: skipped")
    return None, {}


def parse(text: str, source: str) -> dict | None:
    """A cloud-config mapping, or None (logged and shown on the console) when invalid."""
    if not text.lstrip().startswith("#cloud-config"):
        if text.startswith("#!"):
            return None
        _invalid(source, "it does not start with #cloud-config")
        return None
    try:
        data = config.load_yaml(text)
    except yaml.YAMLError as exc:
        _invalid(source, " ".join(str(exc).split()))
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        _invalid(source, f"it is a YAML {type(data).__name__}, not a mapping")
        return None
    return data


def _invalid(source: str, why: str) -> None:
    msg = f"cloud-init: Failed to parse cloud-config from {source}, not saving: {why}"
    log(msg)
    config.console_print(msg)


def save() -> dict:
    """Fetch every datasource, merge what is valid, write boot.yml and the merged file."""
    cfg = config.load()
    sources = config.get(cfg, "rancher.cloud_init.datasources") or []
    if isinstance(sources, str):
        sources = [sources]
    merged: dict = {}
    meta: dict = {"ssh_keys": []}
    for ds in sources:
        text, md = fetch(str(ds))
        for key in ("hostname", "local_ipv4"):
            if md.get(key):
                meta.setdefault(key, str(md[key]).strip())
        meta["ssh_keys"] += [k for k in md.get("ssh_keys") or [] if k]
        if text is None:
            continue
        log(f"{ds}: {len(text)} bytes of user data")
        if text.startswith("#!"):
            with open(SCRIPT, "w") as fh:
                fh.write(text)
            os.chmod(SCRIPT, 0o700)
            continue
        data = parse(text, str(ds))
        if data is not None:
            merged = config.merge(merged, data)
    os.makedirs(config.CLOUD_CONFIG_D, exist_ok=True)
    with open(BOOT_YML, "w") as fh:
        config.dump_yaml(merged, fh, default_flow_style=False)
    with open(METADATA, "w") as fh:
        config.dump_yaml(meta, fh)
    full = config.merge(config.cloud_config_layers(), {})
    with open(config.CLOUD_CONFIG, "w") as fh:
        fh.write("#cloud-config\n")
        config.dump_yaml(full, fh, default_flow_style=False)
    log(f"saved: keys {sorted(merged)}")
    return meta


HOST_ROOT = "/proc/1/root"  # PID 1's root, the host's (cloud-init-execute shares its PIDs)
LOOPBACK_NAME = "127.0.1.1"  # the address a machine's own name resolves to (Debian's)


def set_hosts_name(name: str, hosts: str = "/etc/hosts") -> None:
    """`127.0.1.1 NAME` in `hosts`, replacing an older name's line."""
    lines = [line for line in (_read(hosts) or "").splitlines()
             if line.split()[:1] != [LOOPBACK_NAME]]
    lines.append(f"{LOOPBACK_NAME} {name}")
    with open(hosts, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def _hostname(name: str) -> None:
    subprocess.run(["hostname", name], check=False)
    # the host's file, which containers made from now on copy, and this container's own
    for hosts in {f"{HOST_ROOT}/etc/hosts", "/etc/hosts"}:
        try:
            set_hosts_name(name, hosts)
        except OSError as exc:
            log(f"could not name {name} in {hosts}: {exc}")
    log(f"hostname set to {name}")


def dhcp_hostname(wait: float) -> str | None:
    """The host name a DHCP server offered (option 12), from the network service's leases,
    waiting up to `wait` seconds for a first lease."""
    deadline = time.monotonic() + wait
    while True:
        leases = sorted(glob.glob(f"{LEASES}/*.lease"))
        for path in leases:
            lease = dict(line.partition("=")[::2] for line in (_read(path) or "").splitlines())
            if lease.get("hostname", "").strip():
                return lease["hostname"].strip()
        if leases or time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def _authorized_keys(keys: list[str]) -> None:
    user = pwd.getpwnam("rancher")
    ssh_dir = os.path.join(user.pw_dir, ".ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    path = os.path.join(ssh_dir, "authorized_keys")
    existing = (_read(path) or "").splitlines()
    lines = existing + [k.strip() for k in keys if k.strip() and k.strip() not in existing]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    for p in (ssh_dir, path):
        os.chown(p, user.pw_uid, user.pw_gid)
    os.chmod(path, 0o600)
    log(f"{len(keys)} authorized key(s) for rancher")


# RancherOS keys this image reads but does not act on: said, never fatal
UNSUPPORTED = ("rancher.resize_device",)
# top-level keys this image applies; others are said, never fatal (RancherOS ignores them)
APPLIED = {"hostname", "ssh_authorized_keys", "write_files", "runcmd", "bootcmd", "mounts",
           "rancher"}


def _say(msg: str) -> None:
    log(msg)
    config.console_print(msg)


def _not_applied(cfg: dict, user: dict) -> None:
    for key in UNSUPPORTED:
        if config.get(cfg, key) is not None:
            _say(f"cloud-init: {key} is not supported by this image; ignored")
    for key in sorted(set(user) - APPLIED):
        _say(f"cloud-init: {key} is not a key this image applies; ignored")


def _commands(entries, what: str) -> None:
    """bootcmd/runcmd entries in order: a string runs in sh, a list is an argv."""
    for entry in entries or []:
        argv = ["sh", "-c", entry] if isinstance(entry, str) else [str(a) for a in entry]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except OSError as exc:
            _say(f"cloud-init: {what} entry {entry!r} could not run: {exc}")
            continue
        config.boot_log(what, f"$ {entry!r} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")


def sysctl(cfg: dict) -> None:
    settings = config.get(cfg, "rancher.sysctl") or {}
    for key, value in settings.items() if isinstance(settings, dict) else []:
        path = "/proc/sys/" + str(key).replace(".", "/")
        try:
            with open(path, "w") as fh:
                fh.write(str(value))
            log(f"sysctl {key} = {value}")
        except OSError as exc:
            _say(f"cloud-init: rancher.sysctl {key}={value} failed: {exc}")


def modules(cfg: dict) -> None:
    for name in config.get(cfg, "rancher.modules") or []:
        argv = ["modprobe", *str(name).split()]  # "name arg=value" passes module options
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            _say(f"cloud-init: rancher.modules {name!r} failed: {proc.stderr.strip()}")
        else:
            log(f"module {name} loaded")


def _host_mount_points() -> set[str]:
    try:
        with open("/proc/1/mounts") as fh:  # the host's namespace (its PIDs are ours)
            return {line.split()[1] for line in fh if len(line.split()) > 1}
    except OSError:
        return set()


def _device(dev: str) -> str:
    """LABEL=.. and UUID=.. as the device they name (RancherOS resolves them too)."""
    if not dev.startswith(("LABEL=", "UUID=")):
        return dev
    proc = subprocess.run(["blkid", "-l", "-o", "device", "-t", dev], capture_output=True,
                          text=True)
    return proc.stdout.strip() or dev


def mounts(cfg: dict) -> None:
    """mounts: [device, mount point, fstype, options] as RancherOS takes them (an empty
    fstype or `auto` lets mount find it, empty options are the defaults; a bind mount is
    [dir, dir, "", bind]; swap: [device, none, swap, ...]), made in the host's mount
    namespace; /mnt, /media, /home and /opt reach the console and the user Docker (shared
    mounts). A mount point already mounted is left alone: `cloud-init-execute` runs again."""
    host = ["nsenter", "-t", "1", "-m", "--"]
    mounted = _host_mount_points()
    for entry in config.get(cfg, "mounts") or []:
        fields = ["" if f is None else str(f) for f in entry] if isinstance(entry, list) else []
        if len(fields) != 4:
            _say(f"cloud-init: mounts entry {entry!r} is not [device, mount point, "
                 "fstype, options]; ignored")
            continue
        dev, where, fstype, opts = fields
        dev = _device(dev)
        if fstype == "auto":
            fstype = ""
        if fstype != "swap" and os.path.normpath(where) in mounted:
            log(f"{where} is mounted already; left alone")
            continue
        if fstype == "swap":
            argv = [*host, "swapon", dev]
        else:
            subprocess.run([*host, "mkdir", "-p", where])
            argv = [*host, "mount", *(["-t", fstype] if fstype else []),
                    *(["-o", opts] if opts else []), dev, where]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            _say(f"cloud-init: mounts entry {entry!r} failed: {proc.stderr.strip()}")
        else:
            log(f"mounted {dev} on {where} ({fstype or 'auto'})")


def _hostname_choice(cfg: dict, meta: dict) -> str | None:
    """The user's cloud-config, else the datasource's metadata, else the DHCP server's
    offer, else the default (os-config.yml's)."""
    user = config.merge(config.cloud_config_layers(), config.cmdline_config())
    if user.get("hostname"):
        return str(user["hostname"])
    if meta.get("hostname"):
        return str(meta["hostname"])
    # a first lease may still be on its way; a machine with no NIC has none to wait for
    nics = [n for n in os.listdir("/sys/class/net") if n != "lo"]
    wait = float(config.get(cfg, "rancher.network.dhcp_timeout") or 10) if nics else 0
    offered = dhcp_hostname(wait)
    if offered:
        log(f"hostname {offered} offered by DHCP")
    return offered or config.get(cfg, "hostname")


NETCONF_APPLIED = "/run/ros-netconf.json"  # the rancher.network the network service runs with


def _network_follows(cfg: dict) -> None:
    """The network service started before the user-data was read: restart it when
    rancher.network differs from what it applied (RancherOS reads user-data first)."""
    try:
        with open(NETCONF_APPLIED) as fh:
            applied = json.load(fh)
    except (OSError, ValueError):
        return  # no network service here
    net = config.get(cfg, "rancher.network") or {}
    if applied == json.loads(json.dumps(net, default=str)):
        return
    log("rancher.network differs from what the network service applied: restarting it")
    try:
        Docker().restart("network")
    except (DockerError, OSError) as exc:
        _say(f"cloud-init: could not restart the network service for rancher.network: {exc}")
        return
    # leases the restarted service gets (its DHCP host name) replace the old ones
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(NETCONF_APPLIED) and \
            os.path.getmtime(NETCONF_APPLIED) <= os.path.getmtime(BOOT_YML):
        time.sleep(0.2)


def pre_console() -> int:
    meta = save()
    cfg = config.load()
    # before the network service restarts: a pre_up hook may be one of these files
    _files_into_running_containers(cfg)
    _network_follows(cfg)
    _commands(config.get(cfg, "bootcmd"), "bootcmd")
    user = config.merge(config.cloud_config_layers(), {})
    _not_applied(cfg, user)
    sysctl(cfg)
    modules(cfg)
    name = _hostname_choice(cfg, meta)
    if name:
        _hostname(name)
    keys = config.get(cfg, "ssh_authorized_keys") or []
    if keys:
        _authorized_keys([str(k) for k in keys])
    mounts(cfg)
    return 0


def execute() -> int:
    """`cloud-init-execute` run by hand (`sudo cloud-init-execute`): apply the saved
    cloud-config again without fetching it or rerunning bootcmd (the boot's cloud-init did
    both): sysctl, modules, SSH keys, mounts (a disk formatted since boot mounts now)."""
    cfg = config.load()
    sysctl(cfg)
    modules(cfg)
    keys = config.get(cfg, "ssh_authorized_keys") or []
    if keys:
        _authorized_keys([str(k) for k in keys])
    mounts(cfg)
    return 0


def _decode(content: str, encoding: str | None) -> bytes:
    enc = (encoding or "").lower()
    data = content.encode() if isinstance(content, str) else bytes(content)
    if enc in ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        data = base64.b64decode(data)
    if enc.startswith(("gz", "gzip")):
        data = gzip.decompress(data)
    return data


def _file_entries(cfg: dict, container: str) -> list[dict]:
    """write_files entries for `container` (no `container:` means the console's)."""
    return [e for e in config.get(cfg, "write_files") or []
            if isinstance(e, dict) and str(e.get("container") or "console") == container]


def _owner(owner: str) -> tuple[int, int]:
    user, _, group = owner.partition(":")
    uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    if not group:
        return uid, pwd.getpwuid(uid).pw_gid
    return uid, int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def _file(entry: dict) -> tuple[str, bytes, int, int, int, str]:
    """path, content, mode, uid, gid, and a description of one write_files entry."""
    data = _decode(entry.get("content", ""), entry.get("encoding"))
    perms = entry.get("permissions", "0644")
    owner = str(entry.get("owner", "root:root"))
    uid, gid = _owner(owner)
    return (entry["path"], data, int(str(perms), 8), uid, gid,
            f"{len(data)} bytes, {perms}, {owner}")


def _entry_failed(entry: dict, exc: Exception) -> None:
    _say(f"cloud-init: write_files entry {entry!r} failed: {exc}")


def replace_file(path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write `path` as a new file renamed over the old one, as RancherOS's cloud-init does:
    an entry for /usr/bin/test replaces that link to busybox, not busybox itself (writing
    through it would turn every applet, the console's shell among them, into the file)."""
    folder = os.path.dirname(path) or "/"
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write_files-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_files(cfg: dict) -> None:
    for entry in _file_entries(cfg, "console"):
        try:
            path, data, mode, uid, gid, what = _file(entry)
            replace_file(path, data, mode, uid, gid)
            log(f"wrote {path} ({what})")
        except (KeyError, OSError, ValueError, TypeError) as exc:
            _entry_failed(entry, exc)


def write_container_files(docker: Docker, cfg: dict, name: str) -> None:
    """write_files with `container: NAME`: into that system container (created or running),
    through the system Docker's archive API; missing folders are made, existing ones kept."""
    for entry in _file_entries(cfg, name):
        try:
            path, data, mode, uid, gid, what = _file(entry)
            parent = os.path.dirname(os.path.normpath(path))
            missing = []
            while parent != "/" and not docker.path_exists(name, parent):
                missing.insert(0, parent)
                parent = os.path.dirname(parent)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for folder in missing:
                    info = tarfile.TarInfo(os.path.relpath(folder, parent))
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                info = tarfile.TarInfo(os.path.relpath(path, parent))
                info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
            docker.put_archive(name, parent, buf.getvalue())
            log(f"wrote {path} in container {name} ({what})")
        except (KeyError, OSError, ValueError, TypeError, DockerError) as exc:
            _entry_failed(entry, exc)


def _files_into_running_containers(cfg: dict) -> None:
    """Containers that started before the user-data was read get their files now."""
    wanted = {str(e["container"]) for e in config.get(cfg, "write_files") or []
              if isinstance(e, dict) and e.get("container") not in (None, "console")}
    if not wanted:
        return
    docker = Docker()
    for name in sorted(wanted):
        if docker.inspect(name) is not None:
            write_container_files(docker, cfg, name)


def runcmd(cfg: dict) -> None:
    """Run each runcmd entry in order, as RancherOS does at console start."""
    _commands(config.get(cfg, "runcmd"), "runcmd")
    if os.path.exists(SCRIPT):
        subprocess.run([SCRIPT])
