"""The merged configuration, in RancherOS's load order (later wins):
os-config.yml, cloud-config.d/*.yml (boot.yml is the datasource's user-data),
cloud-config.yml, the kernel cmdline (rancher.*, cc.*), then the datasource's metadata
(its SSH keys join ssh_authorized_keys)."""

from __future__ import annotations

import copy
import glob
import os
import re
import shlex

import yaml

OS_CONFIG = "/usr/share/ros/os-config.yml"
CONF_DIR = "/var/lib/rancher/conf"
CLOUD_CONFIG_D = f"{CONF_DIR}/cloud-config.d"
CLOUD_CONFIG = f"{CONF_DIR}/cloud-config.yml"
METADATA = f"{CONF_DIR}/metadata"
OS_RELEASE = "/etc/os-release"


def merge(base: dict, over: dict) -> dict:
    """Deep merge: maps merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# libyaml's parser: every service reads the config, and the pure-Python one costs each
# of them ~0.15 s under TCG on the boot's critical path
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml(stream):
    """yaml.safe_load, with libyaml when present."""
    return yaml.load(stream, Loader=SafeLoader)  # noqa: S506 - a safe loader


def dump_yaml(data, stream=None, **options):
    """yaml.safe_dump, with libyaml when present."""
    return yaml.dump(data, stream, Dumper=SafeDumper, **options)


def _yaml_file(path: str) -> dict:
    try:
        with open(path) as fh:
            data = load_yaml(fh)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def parse_value(text: str):
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def cmdline_tokens(path: str = "/proc/cmdline") -> list[str]:
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return []
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


# keys a cmdline may repeat, each adding a value (an ISO autologins on several consoles)
REPEATABLE = {"rancher.autologin"}


def cmdline_config(tokens: list[str] | None = None) -> dict:
    """rancher.a.b=v sets rancher.a.b; cc.k=v sets the top-level key k."""
    out: dict = {}
    repeated: dict[str, list] = {}
    for token in cmdline_tokens() if tokens is None else tokens:
        if token == "--":
            break
        key, eq, value = token.partition("=")
        if not eq:
            continue
        if key.startswith("cc."):
            key = key[3:]
        elif not key.startswith("rancher."):
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            if key in REPEATABLE:
                repeated.setdefault(key, []).append(parse_value(value))
                node[parts[-1]] = repeated[key]
            else:
                node[parts[-1]] = parse_value(value)
    return out


INIT_YML = f"{CLOUD_CONFIG_D}/init.yml"  # the kernel arguments after `--` (RancherOS's name)
VISIBLE_CMDLINE = "/run/ros/cmdline"  # /proc/cmdline without them, mounted over it


def hidden_args(tokens: list[str]) -> list[str]:
    """The kernel arguments after `--`: the kernel hands them to init, and RancherOS keeps
    them out of /proc/cmdline (secrets may be among them)."""
    return tokens[tokens.index("--") + 1:] if "--" in tokens else []


def save_hidden_cmdline(path: str = "/proc/cmdline") -> int:
    """PID 1, before any service: the arguments after `--` as root's cloud-config.d/init.yml
    (their rancher.*/cc.* keys, and rancher.environment.EXTRA_CMDLINE: init's command line,
    as RancherOS sets it), and the command line without them in VISIBLE_CMDLINE."""
    with open(path) as fh:
        text = fh.read().strip()
    hidden = hidden_args(cmdline_tokens(path))
    if not hidden:
        return 0
    cfg = merge(cmdline_config(hidden),
                {"rancher": {"environment": {"EXTRA_CMDLINE": " ".join(["/init", *hidden])}}})
    os.makedirs(CLOUD_CONFIG_D, exist_ok=True)
    fd = os.open(INIT_YML, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        dump_yaml(cfg, fh, default_flow_style=False)
    visible = text.split(" -- ", 1)[0] if " -- " in f" {text} " else text
    os.makedirs(os.path.dirname(VISIBLE_CMDLINE), exist_ok=True)
    with open(VISIBLE_CMDLINE, "w") as fh:
        fh.write(("" if visible == "--" else visible) + "\n")
    return 0


def cloud_config_layers() -> dict:
    merged: dict = {}
    for path in sorted(glob.glob(f"{CLOUD_CONFIG_D}/*.yml")):
        merged = merge(merged, _yaml_file(path))
    return merge(merged, _yaml_file(CLOUD_CONFIG))


def _with_metadata(cfg: dict) -> dict:
    """The datasource's SSH keys (saved by cloud-init) join ssh_authorized_keys."""
    keys = [str(k) for k in _yaml_file(METADATA).get("ssh_keys") or [] if k]
    have = cfg.get("ssh_authorized_keys")
    have = [str(k) for k in have] if isinstance(have, list) else []
    if keys:
        cfg["ssh_authorized_keys"] = have + [k for k in keys if k not in have]
    return cfg


def load() -> dict:
    layers = merge(merge(_yaml_file(OS_CONFIG), cloud_config_layers()), cmdline_config())
    return _with_metadata(layers)


# rancher.network.<key> -> the variables RancherOS exports for it (both spellings)
PROXY_KEYS = {"http_proxy": "HTTP_PROXY", "https_proxy": "HTTPS_PROXY", "no_proxy": "NO_PROXY"}


def environment(cfg: dict | None = None) -> dict[str, str]:
    """rancher.environment, with rancher.network's proxies added as RancherOS adds them:
    what services' `${VAR}` and valueless `environment` entries, and `ros env`, see."""
    cfg = load() if cfg is None else cfg
    env = get(cfg, "rancher.environment")
    out = {str(k): "" if v is None else str(v) for k, v in env.items()} \
        if isinstance(env, dict) else {}
    for key, var in PROXY_KEYS.items():
        value = get(cfg, f"rancher.network.{key}")
        if value:
            for name in (var, key):
                out.setdefault(name, str(value))
    return out


_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def substitute(value, env: dict[str, str]):
    """Compose-style interpolation of every string in `value`: `${VAR}` and `$VAR` from
    `env` (unset: empty, as compose does), `$$` for a literal `$`."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: "$" if m.group(0) == "$$"
                        else env.get(m.group(1) or m.group(2), ""), value)
    if isinstance(value, dict):
        return {k: substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, env) for v in value]
    return value


def get(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def os_release() -> dict[str, str]:
    out = {}
    try:
        with open(OS_RELEASE) as fh:
            for line in fh:
                k, _, v = line.strip().partition("=")
                out[k] = v.strip('"')
    except OSError:
        pass
    return out


def console_print(msg: str) -> None:
    """A line for the person at the serial console."""
    try:
        with open("/dev/console", "w") as fh:
            fh.write(msg.rstrip("\n") + "\n")
    except OSError:
        print(msg, flush=True)


def boot_log(name: str, msg: str) -> None:
    os.makedirs("/var/log/boot", exist_ok=True)
    with open(f"/var/log/boot/{name}.log", "a") as fh:
        fh.write(msg.rstrip("\n") + "\n")
