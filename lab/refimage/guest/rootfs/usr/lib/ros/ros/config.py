"""The merged configuration, in RancherOS's load order (later wins):
os-config.yml, cloud-config.d/*.yml, cloud-config.yml, kernel cmdline (rancher.*, cc.*)."""

from __future__ import annotations

import copy
import glob
import os
import shlex

import yaml

OS_CONFIG = "/usr/share/ros/os-config.yml"
CONF_DIR = "/var/lib/rancher/conf"
CLOUD_CONFIG_D = f"{CONF_DIR}/cloud-config.d"
CLOUD_CONFIG = f"{CONF_DIR}/cloud-config.yml"
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


def _yaml_file(path: str) -> dict:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def parse_value(text: str):
    try:
        return yaml.safe_load(text)
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


def cloud_config_layers() -> dict:
    merged: dict = {}
    for path in sorted(glob.glob(f"{CLOUD_CONFIG_D}/*.yml")):
        merged = merge(merged, _yaml_file(path))
    return merge(merged, _yaml_file(CLOUD_CONFIG))


def load() -> dict:
    return merge(merge(merge(_yaml_file(OS_CONFIG), cloud_config_layers()), cmdline_config()), {})


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
