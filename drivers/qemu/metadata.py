"""The lab's stand-ins for the clouds' instance metadata services, served to QEMU guests.

No cloud is reachable from the lab, so for `--datasource ec2` (gce, digitalocean,
cloudstack, aliyun) the lab serves, on the guest's user-mode network, an HTTP service with
the paths, headers and token flow of that cloud's own metadata service, holding the
machine's user-data, SSH keys, hostname and address. They are stand-ins written by the lab
(each a `http.server.ThreadingHTTPServer` on 127.0.0.1), never evidence that a cloud
driver works: they prove that an image reads its cloud-config the way it must on that cloud.

How a guest reaches them (QEMU 7.2 slirp, measured): `guestfwd` only takes an address
inside the virtual network that is neither the host (10.0.2.2) nor its DNS, so the
169.254.169.254 clouds get `net=169.254.0.0/16` and Aliyun `net=100.64.0.0/10` (its real
VPC range); each guest connection runs `relay.py`, which joins it to the stand-in's
loopback port. CloudStack finds its server in the DHCP lease, which under slirp is the host
address: slirp joins a guest's 10.0.2.2:80 to the host's 127.0.0.1:80, so the CloudStack
stand-in must listen there (root or CAP_NET_BIND_SERVICE; one such machine per host at a
time).
"""

from __future__ import annotations

import errno
import http.server
import json
import secrets
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.cloudconfig import gce_ssh_keys
from lab.errors import ConfigError

RELAY = Path(__file__).with_name("relay.py")
IMDS_TOKEN_TTL_MAX = 21600  # seconds, as AWS's IMDSv2 allows
PORT_80_WAIT = 120.0  # another cloudstack machine may be finishing with 127.0.0.1:80


@dataclass(frozen=True)
class Instance:
    """What a metadata service tells an instance about itself."""

    user_data: bytes | None
    ssh_keys: list[str] = field(default_factory=list)
    hostname: str = "roslab"
    local_ipv4: str = ""
    instance_id: str = field(default_factory=lambda: "i-" + secrets.token_hex(8))


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain"


def _text(value: str | bytes | None) -> Reply:
    if value is None:
        return Reply(404, b"Not Found\n")
    return Reply(200, value if isinstance(value, bytes) else value.encode())


def _tree(tree: dict[str, Any], path: str) -> Reply:
    """Walk a nested dict the way IMDS-style services list them: a folder lists its
    entries (sub-folders with a trailing slash), a leaf is its text."""
    node: Any = tree
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, dict) or part not in node:
            return _text(None)
        node = node[part]
    if isinstance(node, dict):
        return _text("\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items()))
    return _text(node)


class Cloud:
    """One cloud's metadata service: where the guest finds it and what it answers."""

    name = ""
    guest_address = ""  # where the guest connects ("" for CloudStack: the DHCP server)
    guest_port = 80
    network = ""  # the slirp `net=` that puts guest_address inside the virtual network

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for tests

    def answer(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        raise NotImplementedError


class _TokenFlow:
    """IMDSv2-style session tokens: PUT /latest/api/token with a TTL header, then the token
    in a header on every GET (`required`), or tokens optional but checked when sent."""

    def __init__(self, ttl_header: str, token_header: str, required: bool) -> None:
        self.ttl_header, self.token_header, self.required = ttl_header, token_header, required
        self.tokens: dict[str, float] = {}

    def put(self, headers: dict[str, str]) -> Reply:
        if "x-forwarded-for" in headers:  # IMDS refuses tokens to anything behind a proxy
            return Reply(403, b"Forbidden\n")
        try:
            ttl = int(headers.get(self.ttl_header.lower(), ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= IMDS_TOKEN_TTL_MAX:
            return Reply(400, f"Bad Request: {self.ttl_header} must be 1-{IMDS_TOKEN_TTL_MAX}\n"
                         .encode())
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + ttl
        return Reply(200, token.encode(), {self.ttl_header: str(ttl)})

    def gate(self, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        """The answer to anything but a GET the token admits (None: serve the GET)."""
        if method == "PUT":
            return self.put(headers) if path == "/latest/api/token" else Reply(405)
        if method != "GET":
            return Reply(405)
        return self.refuses(headers)

    def refuses(self, headers: dict[str, str]) -> Reply | None:
        token = headers.get(self.token_header.lower())
        if token is None:
            return Reply(401, b"Unauthorized\n") if self.required else None
        if self.tokens.get(token, 0.0) < time.monotonic():
            return Reply(401, b"Unauthorized\n")
        return None


class Ec2(Cloud):
    """EC2's instance metadata service (IMDS), tokens required as on IMDSv2-only instances."""

    name = "ec2"
    guest_address = "169.254.169.254"
    network = "169.254.0.0/16"

    def __init__(self, instance: Instance, tokens_required: bool = True) -> None:
        super().__init__(instance)
        self.tokens = _TokenFlow("X-aws-ec2-metadata-token-ttl-seconds",
                                 "X-aws-ec2-metadata-token", tokens_required)

    def meta_data(self) -> dict[str, Any]:
        i = self.instance
        keys = {f"{n}=roslab-{n}": {"openssh-key": k + "\n"} for n, k in enumerate(i.ssh_keys)}
        return {
            "hostname": i.hostname, "instance-id": i.instance_id, "local-hostname": i.hostname,
            "local-ipv4": i.local_ipv4, "instance-type": "roslab.qemu",
            "placement": {"availability-zone": "roslab-1a"},
            # listed as "0=name"; fetched by index
            "public-keys": {k.split("=")[0]: v for k, v in keys.items()},
        }

    def answer(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        refused = self.tokens.gate(method, path, headers)
        if refused is not None:
            return refused
        if path in ("/", ""):
            return _text("latest")
        if path.rstrip("/") == "/latest":
            return _text("dynamic\nmeta-data\nuser-data")
        if path == "/latest/user-data":
            return _text(self.instance.user_data)
        if path.rstrip("/") == "/latest/meta-data/public-keys":
            return _text("\n".join(f"{n}=roslab-{n}" for n in range(len(self.instance.ssh_keys))))
        if path.startswith("/latest/meta-data"):
            return _tree(self.meta_data(), path.removeprefix("/latest/meta-data"))
        return _text(None)


class Gce(Cloud):
    """GCE's metadata server: `Metadata-Flavor: Google` required both ways."""

    name = "gce"
    guest_address = "169.254.169.254"  # metadata.google.internal, as GCE's DNS and hosts say
    network = "169.254.0.0/16"

    def answer(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        flavor = {"Metadata-Flavor": "Google"}
        if method != "GET":
            return Reply(405, headers=flavor)
        if path in ("/", ""):
            return Reply(200, b"computeMetadata/\n", flavor)
        if "x-forwarded-for" in headers:
            return Reply(403, b"Request denied: X-Forwarded-For\n", flavor)
        if headers.get("metadata-flavor") != "Google":
            return Reply(403, b"Missing required header: Metadata-Flavor: Google\n", flavor)
        i = self.instance
        attributes: dict[str, Any] = {"ssh-keys": gce_ssh_keys(i.ssh_keys)}
        if i.user_data is not None:
            attributes["user-data"] = i.user_data
        tree = {"computeMetadata": {"v1": {
            "instance": {
                "attributes": attributes, "hostname": f"{i.hostname}.c.roslab.internal",
                "id": i.instance_id, "name": i.hostname, "zone": "projects/0/zones/roslab-1a",
                "network-interfaces": {"0": {"ip": i.local_ipv4}},
            },
            "project": {"attributes": {}, "project-id": "roslab"},
        }}}
        reply = _tree(tree, path)
        return Reply(reply.status, reply.body, flavor)


class DigitalOcean(Cloud):
    """DigitalOcean's droplet metadata: /metadata/v1.json and /metadata/v1/<key>."""

    name = "digitalocean"
    guest_address = "169.254.169.254"
    network = "169.254.0.0/16"

    def document(self) -> dict[str, Any]:
        i = self.instance
        return {
            "droplet_id": int(i.instance_id.removeprefix("i-"), 16) % 10**9,
            "hostname": i.hostname, "public_keys": list(i.ssh_keys), "region": "roslab1",
            "interfaces": {"private": [{"ipv4": {"ip_address": i.local_ipv4}, "type": "private"}]},
            "user_data": (i.user_data or b"").decode(errors="replace"),
        }

    def answer(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        if method != "GET":
            return Reply(405)
        doc = self.document()
        if path == "/metadata/v1.json":
            return Reply(200, json.dumps(doc).encode(), content_type="application/json")
        flat = {"id": str(doc["droplet_id"]), "hostname": doc["hostname"],
                "region": doc["region"], "public-keys": "\n".join(doc["public_keys"]),
                "user-data": self.instance.user_data}
        if path.rstrip("/") == "/metadata/v1":
            return _text("\n".join(k for k, v in flat.items() if v is not None))
        return _text(flat.get(path.removeprefix("/metadata/v1/")))


class CloudStack(Cloud):
    """CloudStack's virtual router: /latest/user-data and /latest/meta-data/<key>."""

    name = "cloudstack"
    guest_address = ""  # the DHCP lease's server: the host, 10.0.2.2, under slirp

    def answer(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        if method != "GET":
            return Reply(405)
        i = self.instance
        meta = {"availability-zone": "roslab-1", "instance-id": i.instance_id,
                "local-hostname": i.hostname, "local-ipv4": i.local_ipv4, "vm-id": i.instance_id,
                "service-offering": "roslab.qemu", "public-keys": "\n".join(i.ssh_keys)}
        if path == "/latest/user-data":
            return _text(i.user_data)
        if path.rstrip("/") == "/latest/meta-data":
            return _text("\n".join(meta))
        return _text(meta.get(path.removeprefix("/latest/meta-data/")))


class Aliyun(Cloud):
    """Alibaba Cloud ECS metadata at 100.100.100.200, versions `latest` and `2016-01-01`;
    hardened-mode tokens (X-aliyun-ecs-metadata-token) optional, checked when sent."""

    name = "aliyun"
    guest_address = "100.100.100.200"
    network = "100.64.0.0/10"
    versions = ("latest", "2016-01-01")

    def __init__(self, instance: Instance, tokens_required: bool = False) -> None:
        super().__init__(instance)
        self.tokens = _TokenFlow("X-aliyun-ecs-metadata-token-ttl-seconds",
                                 "X-aliyun-ecs-metadata-token", tokens_required)

    def answer(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        refused = self.tokens.gate(method, path, headers)
        if refused is not None:
            return refused
        version, _, rest = path.strip("/").partition("/")
        if version not in self.versions:
            return _text("\n".join(self.versions)) if not version else _text(None)
        if rest.rstrip("/") == "user-data":
            return _text(self.instance.user_data)
        i = self.instance
        keys = {str(n): {"openssh-key": k + "\n"} for n, k in enumerate(i.ssh_keys)}
        meta = {"hostname": i.hostname, "instance-id": i.instance_id,
                "private-ipv4": i.local_ipv4, "region-id": "roslab-1", "public-keys": keys}
        if rest.startswith("meta-data"):
            return _tree(meta, rest.removeprefix("meta-data"))
        return _tree({"meta-data": {}, "user-data": ""}, rest) if not rest else _text(None)


CLOUDS: dict[str, type[Cloud]] = {c.name: c for c in (Ec2, Gce, DigitalOcean, CloudStack, Aliyun)}


def _handler(cloud: Cloud) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = f"roslab-{cloud.name}-metadata-stand-in"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = self.path.split("?")[0]
            reply = cloud.answer(self.command, path, headers)
            cloud.requests.append((self.command, path, reply.status))
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_PUT = do_POST = _serve  # noqa: N815 -- names fixed by http.server

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler


class MetadataServer:
    """A cloud's stand-in served on 127.0.0.1 (port 0: any free one) until `stop()`."""

    def __init__(self, cloud: Cloud, port: int = 0, wait_for_port: float = 0.0) -> None:
        self.cloud = cloud
        deadline = time.monotonic() + wait_for_port
        while True:
            try:
                self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                              _handler(cloud))
                break
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                    time.sleep(1)
                    continue
                raise ConfigError(_bind_error(cloud, port, exc)) from exc
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name=f"roslab-{cloud.name}-metadata", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()

    def __enter__(self) -> MetadataServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind_error(cloud: Cloud, port: int, exc: OSError) -> str:
    why = {errno.EADDRINUSE: "it is in use (another cloudstack machine, or another server)",
           errno.EACCES: "binding a port below 1024 needs root or CAP_NET_BIND_SERVICE"}
    return (f"the {cloud.name} metadata stand-in cannot listen on 127.0.0.1:{port}: "
            f"{why.get(exc.errno or 0, exc.strerror)}")


def guestfwd(cloud: Cloud, port: int, python: str = sys.executable) -> str:
    """The slirp netdev options that route the guest's metadata address to `port`."""
    if not cloud.guest_address:
        return ""  # CloudStack: slirp's own host address forwards to 127.0.0.1:80
    # QEMU runs the command per guest connection, its stdin/stdout joined to the guest;
    # a comma would end the netdev option, so it is doubled
    command = " ".join(shlex.quote(a) for a in (python, "-I", str(RELAY), str(port)))
    return (f"net={cloud.network},guestfwd=tcp:{cloud.guest_address}:{cloud.guest_port}"
            f"-cmd:{command.replace(',', ',,')}")


def serve(name: str, instance: Instance) -> tuple[MetadataServer, str]:
    """Start `name`'s stand-in for a QEMU guest: (server, slirp netdev options)."""
    cloud = CLOUDS[name](instance)
    if cloud.guest_address:
        server = MetadataServer(cloud)
    else:  # the guest will come to 10.0.2.2:80, which slirp joins to 127.0.0.1:80
        server = MetadataServer(cloud, port=80, wait_for_port=PORT_80_WAIT)
    return server, guestfwd(cloud, server.port)

