"""`ros config set|export|merge|validate`: the saved cloud-config, as RancherOS edits it.

`set` and `merge` write /var/lib/rancher/conf/cloud-config.yml (on the state partition
when there is one); `export` prints the cloud-config files without the OS defaults
unless --full, and without private keys unless --private.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import yaml

from ros import config

# what `export` hides unless --private, and always hides (RancherOS config/types.go)
PRIVATE_KEYS = ("rancher.ssh", "rancher.docker.ca_key", "rancher.docker.ca_cert",
                "rancher.docker.server_key", "rancher.docker.server_cert")
ADDITIONAL = ("rancher.password", "rancher.autologin", "EXTRA_CMDLINE")

# characters YAML would read as structure in a one-word value; hidden while parsing
_MAGIC = {"\n": "9XsJcx6dR5EERYCC", ":": "V0Rc21pIVknMm2rr", "?": "FoPL6JLMAaJqKMJT"}


class ConfigError(Exception):
    pass


def _unhide(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unhide(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unhide(v) for v in value]
    if isinstance(value, str):
        for char, magic in _MAGIC.items():
            value = value.replace(magic, char)
    return value


def typed(text: str) -> Any:
    """A command-line value typed as RancherOS types it: YAML for ints, bools and lists
    (`[a,b]`), with newlines, colons and question marks kept in strings (a URL stays one)."""
    hidden = text
    for char, magic in _MAGIC.items():
        hidden = hidden.replace(char, magic)
    try:
        value = config.load_yaml(hidden)
    except yaml.YAMLError:
        return text
    return text if value is None else _unhide(value)


def saved() -> dict:
    return config._yaml_file(config.CLOUD_CONFIG)


class _Dumper(config.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # keys and certificates as literal blocks, line for line, as RancherOS writes them
    return dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                   style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump(data: dict) -> str:
    return yaml.dump(data, Dumper=_Dumper, default_flow_style=False, width=1 << 16)


def write_file(path: str, text: str, mode: int = 0o400) -> None:
    """Replace a file at once (a reader never sees half of it)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_saved(data: dict) -> None:
    """Write cloud-config.yml; it may hold keys, so only root reads it."""
    os.makedirs(config.CONF_DIR, exist_ok=True)
    write_file(config.CLOUD_CONFIG,
               "#cloud-config\n" + dump(data), 0o600)


def set_value(key: str, value: Any) -> None:
    """Set a dotted key in cloud-config.yml, making the maps on the way."""
    data = saved()
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])} is a {type(child).__name__}, "
                              f"not a map: cannot set {key}")
        node = child
    node[parts[-1]] = value
    write_saved(data)


def _drop(data: dict, key: str) -> None:
    *path, last = key.split(".")
    node = config.get(data, ".".join(path)) if path else data
    if isinstance(node, dict):
        node.pop(last, None)


def export(private: bool, full: bool) -> dict:
    data = config.load() if full else config.cloud_config_layers()
    for key in ADDITIONAL + (() if private else PRIVATE_KEYS):
        _drop(data, key)
    return data


def read_input(path: str | None) -> str:
    """The YAML to merge or validate: a file (-i) or stdin."""
    if path:
        with open(path) as fh:
            text = fh.read()
    else:
        text = sys.stdin.read()
    if "\r\n" in text:
        raise ConfigError("file format shouldn't contain CRLF characters")
    return text


def parse(text: str) -> dict:
    try:
        data = config.load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"a cloud-config is a map of keys, not a {type(data).__name__}")
    return data


# -- validation: the keys and types of RancherOS's config schema (config/schema.go) ----------

STRINGS = "list_of_strings"
DOCKER = {
    "engine": str, "tls": bool, "tls_args": STRINGS, "args": STRINGS, "extra_args": STRINGS,
    "server_cert": str, "server_key": str, "ca_cert": str, "ca_key": str,
    "environment": STRINGS, "storage_context": str, "exec": bool, "bridge": str, "bip": str,
    "config_file": str, "containerd": str, "debug": bool, "exec_root": str, "group": str,
    "graph": str, "host": list, "live_restore": bool, "log_driver": str, "log_opts": dict,
    "pid_file": str, "registry_mirror": str, "restart": bool, "selinux_enabled": bool,
    "storage_driver": str, "userland_proxy": bool, "insecure_registry": STRINGS,
}
NETWORK = {
    "pre_cmds": STRINGS, "dhcp_timeout": int, "dns": dict, "interfaces": dict,
    "post_cmds": STRINGS, "http_proxy": str, "https_proxy": str, "no_proxy": str,
    "wifi_networks": dict, "modem_networks": dict,
}
RANCHER = {
    "console": str, "environment": dict, "cloud_init_services": dict, "services": dict,
    "bootstrap": dict, "autoformat": dict, "bootstrap_docker": DOCKER,
    "cloud_init": {"datasources": STRINGS}, "debug": bool, "rm_usr": bool,
    "no_sharedroot": bool, "log": bool, "force_console_rebuild": bool, "recovery": bool,
    "disable": STRINGS, "services_include": dict, "modules": STRINGS, "network": NETWORK,
    "repositories": dict,
    "ssh": {"keys": dict, "daemon": bool, "port": int, "listen_address": str},
    "state": {"directory": str, "fstype": str, "dev": str, "wait": bool, "required": bool,
              "autoformat": STRINGS, "mdadm_scan": bool, "cryptsetup": bool, "lvm_scan": bool,
              "rngd": bool, "script": str, "oem_fstype": str, "oem_dev": str,
              "boot_fstype": str, "boot_dev": str},
    "system_docker": DOCKER,
    "upgrade": {"url": str, "image": str, "rollback": str, "policy": str},
    "docker": DOCKER, "registry_auths": dict,
    "defaults": {"hostname": str, "docker": dict, "network": NETWORK,
                 "system_docker_logs": str},
    "resize_device": str, "sysctl": dict, "restart_services": list,
    "hypervisor_service": bool, "shutdown_timeout": int, "http_load_retries": int,
    "preload_wait": bool,
}
FILE = {"encoding": str, "container": str, "content": str, "owner": str, "path": str,
        "permissions": str}
SCHEMA = {
    "ssh_authorized_keys": STRINGS, "write_files": [FILE], "hostname": str, "mounts": list,
    "rancher": RANCHER, "runcmd": list, "bootcmd": list,
}
TYPE_NAMES = {str: "string", bool: "boolean", int: "integer", dict: "object", list: "array"}


def _type_of(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (str, "string"), (dict, "object"),
                       (list, "array")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _check(value: Any, schema: Any, where: str, errors: list[str]) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            errors.append(f"{where}: Invalid type. Expected: object, given: {_type_of(value)}")
            return
        for key, sub in value.items():
            if key not in schema:
                errors.append(f"{where}: Additional property {key} is not allowed")
            else:
                _check(sub, schema[key], f"{key}" if where == "(root)" else f"{where}.{key}",
                       errors)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            errors.append(f"{where}: Invalid type. Expected: array, given: {_type_of(value)}")
            return
        for i, item in enumerate(value):
            _check(item, schema[0], f"{where}.{i}", errors)
    elif schema == STRINGS:
        if not isinstance(value, list):
            errors.append(f"{where}: Invalid type. Expected: array, given: {_type_of(value)}")
        else:
            errors.extend(f"{where}.{i}: Invalid type. Expected: string, given: {_type_of(v)}"
                          for i, v in enumerate(value) if not isinstance(v, str))
    elif value is not None and not (isinstance(value, schema) and
                                    not (schema is int and isinstance(value, bool))):
        errors.append(f"{where}: Invalid type. Expected: {TYPE_NAMES[schema]}, "
                      f"given: {_type_of(value)}")


def validation_errors(data: dict) -> list[str]:
    """What RancherOS's schema says is wrong: unknown keys, values of the wrong type."""
    errors: list[str] = []
    _check(data, SCHEMA, "(root)", errors)
    return errors
