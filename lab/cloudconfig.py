"""cloud-config: validation, and the ways the lab delivers it to a guest.

Delivery: a config drive ISO (`config-2`, OpenStack layout), a NoCloud ISO (`cidata`),
an HTTP server the guest reaches as 10.0.2.2 (`url:`), kernel cmdline keys (`cmdline`),
or a cloud's metadata service (`ec2`, `gce`, ...: the stand-ins in drivers/qemu/metadata.py).
Each is built from the exact text, so a scenario can deliberately send malformed
cloud-config (`allow_invalid=True`) and check that the OS survives it.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.errors import ConfigError

HEADER = "#cloud-config"
SCRIPT_HEADER = "#!"  # user-data that is a script: the guest runs it at boot, as root
# the clouds' metadata services, served by the lab's stand-ins (drivers/qemu/metadata.py)
METADATA_DATASOURCES = ("ec2", "gce", "digitalocean", "cloudstack", "aliyun")
DATASOURCES = ("configdrive", "nocloud", "url", "cmdline", *METADATA_DATASOURCES)
# the ones that carry the user-data text as written (cmdline carries parsed keys only)
TEXT_DATASOURCES = ("configdrive", "nocloud", "url", *METADATA_DATASOURCES)


def _add(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key, value in extra.items():
        have = out.get(key)
        if isinstance(value, list):
            out[key] = list(have or []) + [v for v in value if v not in (have or [])]
        elif isinstance(value, dict) and isinstance(have, dict):
            out[key] = _add(have, value)
        else:
            out.setdefault(key, value)
    return out


@dataclass(frozen=True)
class CloudConfig:
    text: str  # exactly what the guest receives
    # the parsed mapping; None for a user-data script, or an invalid one sent on purpose
    data: dict[str, Any] | None

    @classmethod
    def parse(cls, source: str | dict[str, Any], allow_invalid: bool = False) -> CloudConfig:
        if isinstance(source, dict):
            text = HEADER + "\n" + yaml.safe_dump(source, sort_keys=False)
            return cls(text, source)
        if source.startswith(SCRIPT_HEADER):
            return cls(source, None)
        try:
            return cls(source, validate(source))
        except ConfigError:
            if allow_invalid:
                return cls(source, None)
            raise

    @property
    def script(self) -> bool:
        """Whether this user-data is a script (`#!...`) rather than cloud-config."""
        return self.text.startswith(SCRIPT_HEADER)

    def merged(self, extra: dict[str, Any]) -> CloudConfig:
        """This config with lists in `extra` appended (the lab's SSH key goes in this way),
        maps merged key by key (the registry mirror under `rancher`); the config's own
        values win.

        A script or an invalid config is returned as it is: the scenario wants exactly
        those bytes.
        """
        if self.data is None:
            return self
        return CloudConfig.parse(_add(self.data, extra))

    def key(self) -> str:
        """Stable identity, for sharing one machine between tests asking for the same config."""
        return self.text


def validate(text: str) -> dict[str, Any]:
    first = text.lstrip("\ufeff").split("\n", 1)[0].rstrip()
    if first != HEADER:
        raise ConfigError(f"cloud-config must start with {HEADER!r} on line 1, got {first[:40]!r}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"cloud-config is not valid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"cloud-config must be a YAML mapping, got a {type(data).__name__}")
    return data


def config_drive(
    cc: CloudConfig, path: Path, kind: str = "config-2", instance: str = "roslab"
) -> Path:
    """Write `cc` as an ISO labelled `config-2` (OpenStack) or `cidata` (NoCloud) at `path`."""
    import pycdlib

    if kind == "config-2":
        files = {
            "openstack/latest/user_data": cc.text.encode(),
            "openstack/latest/meta_data.json": json.dumps(
                {"uuid": instance, "hostname": instance, "name": instance}
            ).encode(),
        }
    elif kind == "cidata":
        files = {
            "user-data": cc.text.encode(),
            "meta-data": f"instance-id: {instance}\nlocal-hostname: {instance}\n".encode(),
        }
    else:
        raise ConfigError(f"unknown config drive kind {kind!r}: known kinds are config-2, cidata")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=kind)
    made: set[str] = set()
    for rel, data in files.items():
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            d = "/".join(parts[:depth])
            if d not in made:
                made.add(d)
                iso.add_directory(_iso_name(d, directory=True), rr_name=parts[depth - 1],
                                  joliet_path="/" + d)
        iso.add_fp(io.BytesIO(data), len(data), _iso_name(rel), rr_name=parts[-1],
                   joliet_path="/" + rel)
    iso.write(str(path))
    iso.close()
    return path


def _iso_name(rel: str, directory: bool = False) -> str:
    """An ISO 9660 level-3 name for `rel`; the real name is in Rock Ridge and Joliet."""
    out = []
    for i, part in enumerate(rel.split("/")):
        clean = "".join(c if c.isalnum() else "_" for c in part.upper())
        last = i == len(rel.split("/")) - 1
        out.append(clean[:30] if directory or not last else clean[:30] + ".;1")
    return "/" + "/".join(out)


def cmdline_args(cc: CloudConfig) -> list[str]:
    """cloud-config as kernel cmdline keys: `rancher.a.b=v` for rancher.*, `cc.<key>=v` else."""
    if cc.script:
        raise ConfigError("a user-data script cannot be delivered by cmdline (it has no keys): "
                          "use a datasource that carries the text (configdrive, nocloud, url, "
                          "a cloud's metadata)")
    if cc.data is None:
        raise ConfigError("an invalid cloud-config cannot be delivered by cmdline (it has no keys)")
    args: list[str] = []

    def flat(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flat(f"{prefix}.{k}", v)
        else:
            args.append(f"{prefix}={_cmdline_value(value)}")

    for key, value in cc.data.items():
        if key == "rancher":
            flat("rancher", value)
        else:
            args.append(f"cc.{key}={_cmdline_value(value)}")
    return args


# Linux's COMMAND_LINE_SIZE on x86 and arm64; a longer line is cut off silently
CMDLINE_MAX = 2048


def _cmdline_value(value: Any) -> str:
    """A value the kernel keeps in one token and the guest reads back as the same YAML.

    Plain words go as they are. Anything else goes as compact JSON (valid YAML, with no
    space outside its strings, so the kernel does not split it) in single quotes, which a
    shell-style reader of /proc/cmdline removes while keeping the JSON's double quotes.
    """
    plain = isinstance(value, str) and value and not any(c in value for c in " \t\n'\"\\[]{}#:,")
    if plain and yaml.safe_load(value) == value:  # "true" or "42" would come back retyped
        return value
    rendered = json.dumps(value, separators=(",", ":")).replace("'", "\\u0027")
    return f"'{rendered}'"


def check_cmdline(args: list[str]) -> None:
    length = len(" ".join(args))
    if length >= CMDLINE_MAX:
        raise ConfigError(
            f"the kernel command line would be {length} bytes, over the kernel's limit of "
            f"{CMDLINE_MAX}: deliver this cloud-config by a config drive or url instead"
        )


@contextmanager
def http_server(cc: CloudConfig) -> Iterator[int]:
    """Serve `cc` at /user-data on 127.0.0.1 for the block's lifetime; yields the port."""
    body = cc.text.encode()
    meta = b"instance-id: roslab\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- name fixed by http.server
            data = {"/user-data": body, "/meta-data": meta}.get(self.path.split("?")[0])
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="roslab-cc-http", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def gce_ssh_keys(keys: list[str]) -> str:
    """GCE's `ssh-keys` metadata value: one `USER:KEY` line per key, for the user `rancher`."""
    return "".join(f"rancher:{k}\n" for k in keys)
