"""Stand-in for Google Compute Engine's REST API (compute/v1) and its OAuth token endpoint.

Payload shapes follow the published Compute Engine v1 reference: instances, images,
firewalls, zonal and global operations (done at once, as a fast cloud's are), the
aggregated instance list and `serialPort` output. Calls must carry the bearer token the
token endpoint handed out for a signed service-account assertion. An instance is
PROVISIONING when made and RUNNING from its second read on.
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from standins.base import Reply, Request, StandIn, rfc3339

PROJECT = "standin-project"
CONSOLE = "SeaBIOS ...\nLinux version 6.1.0 ...\nRancherOS v1.5.8 started\n"
P = rf"/compute/v1/projects/({PROJECT})"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GceStandIn(StandIn):
    def __init__(self) -> None:
        super().__init__()
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}  # (zone, name)
        self.images: dict[str, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.hold_provisioning = False
        self.public_key: rsa.RSAPublicKey | None = None
        self.token = "ya29.standin-" + uuid.uuid4().hex
        self._ids = itertools.count(1000)
        r = self.route
        r("POST", r"/token", self._oauth)
        r("POST", rf"{P}/zones/([^/]+)/instances", self._insert_instance)
        r("GET", rf"{P}/zones/([^/]+)/instances/([^/]+)", self._get_instance)
        r("DELETE", rf"{P}/zones/([^/]+)/instances/([^/]+)", self._delete_instance)
        r("GET", rf"{P}/zones/([^/]+)/instances/([^/]+)/serialPort", self._serial)
        r("GET", rf"{P}/aggregated/instances", self._aggregated)
        r("GET", rf"{P}/zones/([^/]+)/operations/([^/]+)", self._zone_op)
        r("POST", rf"{P}/zones/([^/]+)/operations/([^/]+)/wait", self._zone_op)
        r("GET", rf"{P}/global/operations/([^/]+)", self._global_op)
        r("POST", rf"{P}/global/operations/([^/]+)/wait", self._global_op)
        for kind in ("images", "firewalls"):
            r("POST", rf"{P}/global/({kind})", self._insert_global)
            r("GET", rf"{P}/global/({kind})", self._list_global)
            r("GET", rf"{P}/global/({kind})/([^/]+)", self._get_global)
            r("DELETE", rf"{P}/global/({kind})/([^/]+)", self._delete_global)

    def authorized(self, header: str | None) -> bool:
        """The token this stand-in handed out, or a JWT the service-account key signed
        (Google's client libraries send self-signed JWTs for service accounts)."""
        if not header or not header.startswith("Bearer "):
            return False
        token = header[len("Bearer "):]
        if token == self.token:
            return True
        if self.public_key is None or token.count(".") != 2:
            return False
        signed, _, signature = token.rpartition(".")
        try:
            self.public_key.verify(_unb64(signature), signed.encode(), padding.PKCS1v15(),
                                   hashes.SHA256())
        except InvalidSignature:
            return False
        claims = json.loads(_unb64(signed.split(".")[1]))
        return claims.get("iss", "").endswith(".iam.gserviceaccount.com")

    def dispatch(self, req: Request) -> Reply:
        if req.path != "/token" and not self.authorized(req.headers.get("authorization")):
            self.requests.append(req)
            return Reply(401, {"error": {"code": 401, "message": "Request had invalid "
                                         "authentication credentials.",
                                         "status": "UNAUTHENTICATED"}})
        return super().dispatch(req)

    # what a user has -------------------------------------------------------------------

    def service_account_file(self, path: Path) -> Path:
        """A service-account key file whose token endpoint is this stand-in's."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = key.public_key()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        path.write_text(json.dumps({
            "type": "service_account", "project_id": PROJECT, "private_key_id": "k1",
            "private_key": pem, "client_email": f"roslab@{PROJECT}.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"{self.url}/token"}))
        return path

    def seed(self, kind: str, name: str, created: str = "2020-01-01T00:00:00.000-08:00",
             zone: str = "us-central1-a", **fields: Any) -> None:
        item = {"name": name, "id": str(next(self._ids)), "creationTimestamp": created,
                **fields}
        if kind == "instances":
            item.update(status="RUNNING", zone=self._zone_url(zone))
            self.instances[(zone, name)] = item
        else:
            getattr(self, kind)[name] = item

    # OAuth ---------------------------------------------------------------------------------

    def _oauth(self, req: Request) -> Reply:
        form = parse_qs(req.body.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"] \
                or not form.get("assertion"):
            return Reply(400, {"error": "invalid_grant"})
        return Reply(200, {"access_token": self.token, "expires_in": 3600,
                           "token_type": "Bearer"})

    # operations ----------------------------------------------------------------------------

    def _zone_url(self, zone: str) -> str:
        return f"{self.url}/compute/v1/projects/{PROJECT}/zones/{zone}"

    def _op(self, kind: str, target: str, zone: str | None = None,
            error: str | None = None) -> Reply:
        name = f"operation-{uuid.uuid4().hex[:12]}"
        op: dict[str, Any] = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name,
            "operationType": kind, "targetLink": target, "status": "DONE", "progress": 100,
            "insertTime": rfc3339(), "startTime": rfc3339(), "endTime": rfc3339(),
            "selfLink": f"{self.url}/operations/{name}"}
        if zone:
            op["zone"] = self._zone_url(zone)
        if error:
            op["error"] = {"errors": [{"code": "QUOTA_EXCEEDED", "message": error}]}
            op["httpErrorStatusCode"] = 403
            op["httpErrorMessage"] = "FORBIDDEN"
        self.operations[name] = op
        return Reply(200, op)

    def _zone_op(self, req: Request, project: str, zone: str, name: str) -> Reply:
        return self._get_op(name)

    def _global_op(self, req: Request, project: str, name: str) -> Reply:
        return self._get_op(name)

    def _get_op(self, name: str) -> Reply:
        if name not in self.operations:
            return self._not_found(f"operation {name}")
        return Reply(200, self.operations[name])

    def _not_found(self, what: str) -> Reply:
        return Reply(404, {"error": {"code": 404, "message": f"The resource '{what}' was not "
                                     "found", "errors": [{"reason": "notFound",
                                                          "message": "not found"}]}})

    # instances -----------------------------------------------------------------------------

    def _insert_instance(self, req: Request, project: str, zone: str) -> Reply:
        body = req.json()
        name = body["name"]
        if (zone, name) in self.instances:
            return Reply(409, {"error": {"code": 409, "message": f"The resource '{name}' "
                                         "already exists"}})
        source = body["disks"][0]["initializeParams"]["sourceImage"]
        if source.rsplit("/", 1)[-1] not in self.images:
            return Reply(400, {"error": {"code": 400, "message": f"The resource '{source}' "
                                         "was not found"}})
        self.instances[(zone, name)] = {
            **body, "id": str(next(self._ids)), "status": "PROVISIONING", "reads": 0,
            "zone": self._zone_url(zone), "creationTimestamp": rfc3339(),
            "selfLink": f"{self._zone_url(zone)}/instances/{name}"}
        return self._op("insert", name, zone)

    def _view(self, inst: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inst.items() if k != "reads"}

    def _get_instance(self, req: Request, project: str, zone: str, name: str) -> Reply:
        inst = self.instances.get((zone, name))
        if inst is None:
            return self._not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        inst["reads"] = inst.get("reads", 0) + 1
        if inst["status"] == "PROVISIONING" and inst["reads"] >= 2 and not self.hold_provisioning:
            inst["status"] = "RUNNING"
            for nic in inst.get("networkInterfaces", []):
                nic["networkIP"] = "10.128.0.2"
                for ac in nic.get("accessConfigs", []):
                    ac["natIP"] = "127.0.0.1"
        return Reply(200, self._view(inst))

    def _delete_instance(self, req: Request, project: str, zone: str, name: str) -> Reply:
        if self.instances.pop((zone, name), None) is None:
            return self._not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return self._op("delete", name, zone)

    def _serial(self, req: Request, project: str, zone: str, name: str) -> Reply:
        if (zone, name) not in self.instances:
            return self._not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return Reply(200, {"kind": "compute#serialPortOutput", "contents": CONSOLE,
                           "start": "0", "next": str(len(CONSOLE))})

    def _aggregated(self, req: Request, project: str) -> Reply:
        items: dict[str, Any] = {}
        for (zone, _name), inst in self.instances.items():
            items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(
                self._view(inst))
        return Reply(200, {"kind": "compute#instanceAggregatedList", "items": items})

    # images and firewalls ------------------------------------------------------------------

    def _insert_global(self, req: Request, project: str, kind: str) -> Reply:
        body = req.json()
        store = getattr(self, kind)
        if body["name"] in store:
            return Reply(409, {"error": {"code": 409, "message": "already exists"}})
        store[body["name"]] = {**body, "id": str(next(self._ids)),
                               "creationTimestamp": rfc3339(), "status": "READY"}
        return self._op("insert", body["name"])

    def _list_global(self, req: Request, project: str, kind: str) -> Reply:
        return Reply(200, {"items": list(getattr(self, kind).values())})

    def _get_global(self, req: Request, project: str, kind: str, name: str) -> Reply:
        item = getattr(self, kind).get(name)
        return Reply(200, item) if item else self._not_found(f"global/{kind}/{name}")

    def _delete_global(self, req: Request, project: str, kind: str, name: str) -> Reply:
        if getattr(self, kind).pop(name, None) is None:
            return self._not_found(f"global/{kind}/{name}")
        return self._op("delete", name)


def serve(tmp_path: Path, env: Any) -> GceStandIn:
    """Start one and point google-cloud-compute at it as a user would: a service-account
    key file, a private API endpoint, the runner's address for the SSH rule."""
    standin = GceStandIn().start()
    env.setenv("GOOGLE_APPLICATION_CREDENTIALS",
               str(standin.service_account_file(tmp_path / "sa.json")))
    env.setenv("ROSLAB_GCE_ENDPOINT", standin.url)
    env.setenv("ROSLAB_SSH_SOURCE", "198.51.100.7")
    # google-auth probes the GCE metadata server when it finds no credentials: keep that
    # probe on loopback (nothing listens on port 9)
    env.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    env.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    env.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    return standin
