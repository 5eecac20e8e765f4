"""The OpenStack rehearsal: a stand-in for an OpenStack cloud, Keystone v3 tokens with a
service catalog, Nova (compute v2.1: flavors, servers, console output) and Glance (image
v2: create, upload).

In a rehearsal (`OpenStackDriver.rehearsal()`, a `Fleet` given) a server boots the disk
uploaded to Glance under QEMU, its user_data on a config drive (`config-2`) when it asks
for one: BUILD until QEMU runs, then ACTIVE with a floating address on loopback whose port
22 is the guest's; a guest that cannot start makes it ERROR (its `fault` naming why and the
console's tail), one that ends by itself SHUTOFF; `os-getConsoleOutput` is the guest's
serial console; delete powers it off. Without a fleet (the driver's API-level tests) it only
records: a server is ACTIVE at 127.0.0.1 from its second read on.

Payload shapes follow the published API references (identity v3 `POST /v3/auth/tokens`,
compute v2.1 servers/flavors/`os-getConsoleOutput`, image v2 images and `/file`).
A server is BUILD when created and ACTIVE from its second read on, so waits really wait.
"""

from __future__ import annotations

import base64
import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from drivers.rehearsal import Fleet, Guest, scratch, serving
from drivers.rehearsal.base import Reply, Request, StandIn, pointed_at, rfc3339
from lab.driver import Rehearsal

CONSOLE = "Linux version 6.1.0 ...\nRancherOS v1.5.8 started\nlogin: "
SUFFIXES = {"raw": ".img", "qcow2": ".qcow2", "vhd": ".vhd"}  # Glance's disk_format


class OpenStackStandIn(StandIn):
    def __init__(self, fleet: Fleet | None = None) -> None:
        super().__init__()
        self.fleet = fleet  # a rehearsal's: servers boot
        self.servers: dict[str, dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.uploads: dict[str, bytes] = {}
        self.user_data: dict[str, str] = {}  # server name -> decoded user_data
        self.flavors = [{"id": "2", "name": "m1.small", "ram": 2048, "vcpus": 1, "disk": 20}]
        self.token = uuid.uuid4().hex
        self.hold_build = False  # servers stay in BUILD (a cloud that never delivers)
        r = self.route
        r("GET", r"/identity", self._versions_identity)
        r("GET", r"/identity/v3", self._version_identity)
        r("POST", r"/identity/v3/auth/tokens", self._token)
        r("GET", r"/compute", self._versions_compute)
        r("GET", r"/compute/v2.1", self._version_compute)
        r("GET", r"/compute/v2.1/flavors(?:/detail)?", self._flavors)
        r("GET", r"/compute/v2.1/flavors/([^/]+)", self._flavor)
        r("POST", r"/compute/v2.1/servers", self._create_server)
        r("GET", r"/compute/v2.1/servers(?:/detail)?", self._list_servers)
        r("GET", r"/compute/v2.1/servers/([^/]+)", self._get_server)
        r("DELETE", r"/compute/v2.1/servers/([^/]+)", self._delete_server)
        r("POST", r"/compute/v2.1/servers/([^/]+)/action", self._server_action)
        r("GET", r"/image", self._versions_image)
        r("GET", r"/image/v2", self._versions_image)
        r("POST", r"/image/v2/images", self._create_image)
        r("GET", r"/image/v2/images", self._list_images)
        r("GET", r"/image/v2/images/([^/]+)", self._get_image)
        r("PUT", r"/image/v2/images/([^/]+)/file", self._upload)
        r("DELETE", r"/image/v2/images/([^/]+)", self._delete_image)

    # what a user writes ----------------------------------------------------------------------

    def clouds_yaml(self, path: Path, name: str = "standin") -> Path:
        path.write_text(yaml.safe_dump({"clouds": {name: {
            "auth": {"auth_url": f"{self.url}/identity/v3", "username": "demo",
                     "password": "secret-password", "project_name": "demo",
                     "user_domain_name": "Default", "project_domain_name": "Default"},
            "region_name": "RegionOne", "identity_api_version": 3}}}))
        return path

    # identity ------------------------------------------------------------------------------

    def _versions_identity(self, req: Request) -> Reply:
        return Reply(300, {"versions": {"values": [self._identity_version()]}})

    def _version_identity(self, req: Request) -> Reply:
        return Reply(200, {"version": self._identity_version()})

    def _identity_version(self) -> dict[str, Any]:
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": f"{self.url}/identity/v3/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.identity-v3+json"}]}

    def _token(self, req: Request) -> Reply:
        auth = req.json()["auth"]["identity"]["password"]["user"]
        if auth.get("password") != "secret-password":
            return Reply(401, {"error": {"code": 401, "message": "The request you have made "
                                         "requires authentication.", "title": "Unauthorized"}})

        def endpoints(kind: str, name: str, path: str) -> dict[str, Any]:
            return {"type": kind, "name": name, "id": uuid.uuid4().hex, "endpoints": [
                {"id": uuid.uuid4().hex, "interface": iface, "region": "RegionOne",
                 "region_id": "RegionOne", "url": f"{self.url}{path}"}
                for iface in ("public", "internal", "admin")]}

        token = {"token": {
            "methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z",
            "issued_at": rfc3339(), "audit_ids": [uuid.uuid4().hex[:22]],
            "user": {"id": "u1", "name": "demo", "domain": {"id": "default", "name": "Default"}},
            "project": {"id": "p1", "name": "demo",
                        "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "r1", "name": "member"}],
            "catalog": [endpoints("identity", "keystone", "/identity/v3"),
                        endpoints("compute", "nova", "/compute/v2.1"),
                        endpoints("image", "glance", "/image")]}}
        return Reply(201, token, {"X-Subject-Token": self.token})

    # compute -----------------------------------------------------------------------------

    def _compute_version(self) -> dict[str, Any]:
        return {"id": "v2.1", "status": "CURRENT", "version": "2.79", "min_version": "2.1",
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/"}]}

    def _versions_compute(self, req: Request) -> Reply:
        return Reply(200, {"versions": [self._compute_version()]})

    def _version_compute(self, req: Request) -> Reply:
        return Reply(200, {"version": self._compute_version()})

    def _flavors(self, req: Request) -> Reply:
        return Reply(200, {"flavors": self.flavors})

    def _flavor(self, req: Request, ident: str) -> Reply:
        for flavor in self.flavors:
            if flavor["id"] == ident:
                return Reply(200, {"flavor": flavor})
        return self._not_found("Flavor", ident)

    def _not_found(self, what: str, ident: str) -> Reply:
        return Reply(404, {"itemNotFound": {"code": 404,
                                            "message": f"{what} {ident} could not be found."}})

    def _create_server(self, req: Request) -> Reply:
        body = req.json()["server"]
        if body.get("imageRef") not in self.images:
            return Reply(400, {"badRequest": {"code": 400,
                                              "message": "Can not find requested image"}})
        sid = str(uuid.uuid4())
        self.user_data[body["name"]] = base64.b64decode(body.get("user_data", "")).decode()
        self.servers[sid] = {
            "id": sid, "name": body["name"], "status": "BUILD", "reads": 0,
            "metadata": body.get("metadata", {}), "config_drive": body.get("config_drive"),
            "image": {"id": body["imageRef"]}, "flavor": {"id": body["flavorRef"]},
            "created": rfc3339(), "updated": rfc3339(), "tenant_id": "p1", "user_id": "u1",
            "addresses": {}, "accessIPv4": "", "accessIPv6": "", "links": [],
            "OS-EXT-STS:vm_state": "building", "key_name": None,
        }
        if self.fleet is not None:
            self._boot(self.servers[sid], body)
        return Reply(202, {"server": {"id": sid, "links": [], "adminPass": "x",
                                      "OS-DCF:diskConfig": "MANUAL",
                                      "security_groups": [{"name": "default"}]}})

    def _boot(self, server: dict[str, Any], body: dict[str, Any]) -> None:
        def running(guest: Guest) -> None:
            with self.lock:
                server.update(status="ACTIVE", addresses={"private": [
                    {"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS:type": "fixed"},
                    {"addr": guest.address, "version": 4, "OS-EXT-IPS:type": "floating"}]})
                server["OS-EXT-STS:vm_state"] = "active"

        def ended(why: str) -> None:
            with self.lock:
                # Nova: a server that never ran is ERROR with its fault; one that ran, SHUTOFF
                failed = server["status"] == "BUILD"
                server.update(status="ERROR" if failed else "SHUTOFF", addresses={})
                server["OS-EXT-STS:vm_state"] = "error" if failed else "stopped"
                if failed:
                    server["fault"] = {"code": 500, "message": why, "created": rfc3339()}

        assert self.fleet is not None
        user_data = base64.b64decode(body.get("user_data", "")) or None
        self.fleet.launch(server["id"], lambda: self._disk(body["imageRef"]),
                          "configdrive" if body.get("config_drive") and user_data else "none",
                          user_data, [], running, ended, hostname=body["name"])

    def _disk(self, iid: str) -> Path:
        assert self.fleet is not None
        image = self.images.get(iid, {})
        path = self.fleet.workdir.parent / "images" / \
            f"{iid}{SUFFIXES.get(image.get('disk_format', ''), '.img')}"
        if not path.exists():
            raise LookupError(f"image {iid} has no disk this stand-in holds (only images "
                              "uploaded here boot)")
        return path

    def _view(self, server: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in server.items() if k != "reads"}

    def _list_servers(self, req: Request) -> Reply:
        name = req.query.get("name", [None])[0]
        found = [self._view(s) for s in self.servers.values()
                 if name is None or re.search(name, s["name"])]
        return Reply(200, {"servers": found})

    def _get_server(self, req: Request, sid: str) -> Reply:
        server = self.servers.get(sid)
        if server is None:
            return self._not_found("Instance", sid)
        server["reads"] += 1
        if server["status"] == "BUILD" and server["reads"] >= 2 and not self.hold_build and \
                self.fleet is None:
            server["status"] = "ACTIVE"
            server["OS-EXT-STS:vm_state"] = "active"
            server["addresses"] = {"private": [
                {"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS:type": "fixed"},
                {"addr": "127.0.0.1", "version": 4, "OS-EXT-IPS:type": "floating"}]}
        return Reply(200, {"server": self._view(server)})

    def _delete_server(self, req: Request, sid: str) -> Reply:
        if self.servers.pop(sid, None) is None:
            return self._not_found("Instance", sid)
        if self.fleet is not None:
            self.fleet.remove(sid)
        return Reply(204)

    def _server_action(self, req: Request, sid: str) -> Reply:
        if sid not in self.servers:
            return self._not_found("Instance", sid)
        action = req.json()
        if "os-getConsoleOutput" in action:
            if self.fleet is None:
                return Reply(200, {"output": CONSOLE})
            lines = (self.fleet.console(sid) or "").splitlines(keepends=True)
            length = (action["os-getConsoleOutput"] or {}).get("length")
            return Reply(200, {"output": "".join(lines[-int(length):] if length else lines)})
        return Reply(400, {"badRequest": {"code": 400, "message": "unknown action"}})

    # image -------------------------------------------------------------------------------

    def _versions_image(self, req: Request) -> Reply:
        return Reply(300, {"versions": [
            {"id": "v2.16", "status": "CURRENT",
             "links": [{"rel": "self", "href": f"{self.url}/image/v2/"}]}]})

    def seed_image(self, name: str, **properties: str) -> str:
        """An image the cloud already has (not the run's: uploaded by someone)."""
        return self._create_image(Request("POST", "", {}, {}, b""), name=name, status="active",
                                  disk_format="qcow2", container_format="bare",
                                  **properties).body["id"]

    def seed_server(self, name: str, created: str, **metadata: str) -> str:
        """A server some other run (or person) made."""
        sid = str(uuid.uuid4())
        self.servers[sid] = {"id": sid, "name": name, "status": "ACTIVE", "reads": 0,
                             "metadata": metadata, "created": created, "updated": created,
                             "addresses": {}, "image": {"id": ""}, "flavor": {"id": "2"},
                             "tenant_id": "p1", "user_id": "u1", "links": []}
        return sid

    def _create_image(self, req: Request, **seeded: Any) -> Reply:
        body = req.json() if req.body else seeded
        iid = str(uuid.uuid4())
        image = {"id": iid, "status": "queued", "visibility": "private", "tags": [],
                 "created_at": rfc3339(), "updated_at": rfc3339(), "size": None,
                 "self": f"/v2/images/{iid}", "file": f"/v2/images/{iid}/file",
                 "schema": "/v2/schemas/image", "protected": False, "owner": "p1",
                 "min_disk": 0, "min_ram": 0, **body}
        self.images[iid] = image
        return Reply(201, image)

    def _list_images(self, req: Request) -> Reply:
        name = req.query.get("name", [None])[0]
        found = [i for i in self.images.values() if name is None or i["name"] == name]
        return Reply(200, {"images": found, "first": "/v2/images", "schema": "/v2/schemas/images"})

    def _get_image(self, req: Request, iid: str) -> Reply:
        if iid not in self.images:
            return Reply(404, f"No image found with ID {iid}")
        return Reply(200, self.images[iid])

    def _upload(self, req: Request, iid: str) -> Reply:
        if iid not in self.images:
            return Reply(404, f"No image found with ID {iid}")
        if self.fleet is None:
            self.uploads[iid] = req.body
        else:  # a disk: kept as a file for the guests to boot, not in memory
            path = self.fleet.workdir.parent / "images" / \
                f"{iid}{SUFFIXES.get(self.images[iid].get('disk_format', ''), '.img')}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(req.body)
        self.images[iid].update(status="active", size=len(req.body))
        return Reply(204)

    def _delete_image(self, req: Request, iid: str) -> Reply:
        image = self.images.pop(iid, None)
        if image is None:
            return Reply(404, f"No image found with ID {iid}")
        if self.fleet is not None:  # booted guests keep their own overlay on it
            for path in (self.fleet.workdir.parent / "images").glob(f"{iid}.*"):
                path.unlink(missing_ok=True)
        return Reply(204)

    def leftovers(self) -> list[str]:
        """What a run made that is still here (a rehearsal starts with nothing)."""
        left = [f"server {sid} ({s['name']})" for sid, s in self.servers.items()]
        left += [f"image {iid} ({i.get('name')})" for iid, i in self.images.items()]
        return left + (self.fleet.leftovers() if self.fleet is not None else [])


def environment(standin: OpenStackStandIn, folder: Path) -> dict[str, str]:
    """How a user points openstacksdk at it: a clouds.yaml and the entry's name."""
    return {"OS_CLIENT_CONFIG_FILE": str(standin.clouds_yaml(folder / "clouds.yaml")),
            "OS_CLOUD": "standin"}


def serve(tmp_path: Path, env: Any) -> OpenStackStandIn:
    """Start one (API sequences only) and point openstacksdk at it (`env`: pytest's
    monkeypatch)."""
    standin = OpenStackStandIn().start()
    return pointed_at(standin, environment(standin, tmp_path), env)


@contextlib.contextmanager
def rehearsal() -> Iterator[Rehearsal]:
    """The stand-in on 127.0.0.1 with servers that boot; on exit every guest is powered
    off, the server stopped and its folder removed."""
    with scratch("openstack") as (fleet, folder):
        standin = OpenStackStandIn(fleet).start()
        with serving(standin, fleet, "the OpenStack stand-in (Keystone, Nova, Glance)",
                     "servers", environment(standin, folder), "configdrive") as rehearsal:
            yield rehearsal
