"""The GCE rehearsal: a stand-in for Google Compute Engine's REST API (compute/v1), the
Cloud Storage JSON API (storage/v1) calls an upload makes, and the OAuth token endpoint.

In a rehearsal (`GceDriver.rehearsal()`, a `Fleet` given) an instance boots: the image's
raw disk (the tarball uploaded to Cloud Storage) under QEMU with the `gce` metadata service
(the instance's `user-data` and `ssh-keys` metadata); it is PROVISIONING until QEMU runs,
then RUNNING with its NAT address a loopback address whose port 22 is the guest's; a guest
that cannot start or ends by itself makes it TERMINATED, the status message naming why and
the console's tail; `serialPort` is the guest's serial console; delete powers it off.
Without a fleet (the driver's API-level tests) it only records: an instance is RUNNING at
127.0.0.1 from its second read on.

Payload shapes follow the published Compute Engine v1 reference: instances, images,
firewalls, zonal and global operations (done at once, as a fast cloud's are), the
aggregated instance list and `serialPort` output. Calls must carry the bearer token the
token endpoint handed out for a signed service-account assertion. An instance is
PROVISIONING when made and RUNNING from its second read on. An image made from a raw disk
in Cloud Storage (`rawDisk.source`) fails, as GCE's does, when that object does not exist.

Cloud Storage, as google-cloud-storage uses it (JSON API reference): media and multipart
uploads (`/upload/storage/v1/b/B/o?uploadType=multipart`), resumable ones (a POST that
opens a session at the `Location` it answers, then PUTs with `Content-Range`; 308 until the
last byte), the `ifGenerationMatch=0` precondition, an object's crc32c/md5Hash (checked
against what the client sent, returned for it to check), get, delete and list with
`prefix`. Objects keep their custom `metadata`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import google_crc32c
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from drivers.rehearsal import Fleet, Guest, scratch, serving
from drivers.rehearsal.base import Reply, Request, StandIn, rfc3339
from lab.driver import Rehearsal

PROJECT = "standin-project"
CONSOLE = "SeaBIOS ...\nLinux version 6.1.0 ...\nRancherOS v1.5.8 started\n"
P = rf"/compute/v1/projects/({PROJECT})"
RELEASE_BUCKET, RELEASE_OBJECT = "roslab-images", "rancheros-gce.tar.gz"  # already uploaded
STORAGE_URL = "https://storage.googleapis.com/"  # how an image names its raw disk's object
REHEARSAL_BUCKET = "roslab-rehearsal"  # where a rehearsed run uploads its tarball


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hashes(data: bytes) -> dict[str, str]:
    """An object's checksums as Cloud Storage reports them (base64 of the digests)."""
    return {"crc32c": base64.b64encode(google_crc32c.Checksum(data).digest()).decode(),
            "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode()}


@dataclass
class StoredObject:
    resource: dict[str, Any]  # what the JSON API answers for it
    data: bytes


@dataclass
class UploadSession:
    bucket: str
    metadata: dict[str, Any]  # the object resource the client sent when it opened it
    content_type: str
    data: bytearray


class GceStandIn(StandIn):
    def __init__(self, fleet: Fleet | None = None) -> None:
        super().__init__()
        self.fleet = fleet  # a rehearsal's: instances boot
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}  # (zone, name)
        self.images: dict[str, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.buckets: dict[str, dict[str, StoredObject]] = {RELEASE_BUCKET: {}}
        self.sessions: dict[str, UploadSession] = {}  # resumable uploads, by upload_id
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
        r("POST", r"/upload/storage/v1/b/([^/]+)/o", self._upload)
        r("PUT", r"/upload/storage/v1/b/([^/]+)/o", self._upload_chunk)
        r("GET", r"/storage/v1/b/([^/]+)/o", self._list_objects)
        r("GET", r"/storage/v1/b/([^/]+)/o/(.+)", self._get_object)
        r("DELETE", r"/storage/v1/b/([^/]+)/o/(.+)", self._delete_object)

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
            error: str | None = None, code: str = "QUOTA_EXCEEDED") -> Reply:
        name = f"operation-{uuid.uuid4().hex[:12]}"
        op: dict[str, Any] = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name,
            "operationType": kind, "targetLink": target, "status": "DONE", "progress": 100,
            "insertTime": rfc3339(), "startTime": rfc3339(), "endTime": rfc3339(),
            "selfLink": f"{self.url}/operations/{name}"}
        if zone:
            op["zone"] = self._zone_url(zone)
        if error:
            op["error"] = {"errors": [{"code": code, "message": error}]}
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
        inst = self.instances[(zone, name)] = {
            **body, "id": str(next(self._ids)), "status": "PROVISIONING", "reads": 0,
            "zone": self._zone_url(zone), "creationTimestamp": rfc3339(),
            "selfLink": f"{self._zone_url(zone)}/instances/{name}"}
        if self.fleet is not None:
            self._boot(inst, zone, name, source.rsplit("/", 1)[-1])
        return self._op("insert", name, zone)

    def _boot(self, inst: dict[str, Any], zone: str, name: str, image: str) -> None:
        items = {i["key"]: i.get("value", "") for i in
                 inst.get("metadata", {}).get("items", [])}
        # `ssh-keys` is `USER:KEY` lines; the guest's metadata service serves them back so
        keys = [line.split(":", 1)[1] for line in items.get("ssh-keys", "").splitlines()
                if ":" in line]

        def running(guest: Guest) -> None:
            with self.lock:
                inst["status"] = "RUNNING"
                for nic in inst.get("networkInterfaces", []):
                    nic["networkIP"] = "10.128.0.2"
                    for ac in nic.get("accessConfigs", []):
                        ac["natIP"] = guest.address

        def ended(why: str) -> None:
            with self.lock:
                inst.update(status="TERMINATED", statusMessage=why)
                for nic in inst.get("networkInterfaces", []):
                    for ac in nic.get("accessConfigs", []):
                        ac.pop("natIP", None)

        assert self.fleet is not None
        user_data = items.get("user-data")
        self.fleet.launch(_ident(zone, name), lambda: self._disk(image), "gce",
                          user_data.encode() if user_data else None, keys, running, ended,
                          hostname=name)

    def _disk(self, image: str) -> Path:
        """The image's raw disk: the tarball it was made from, as a file the guest boots."""
        assert self.fleet is not None
        path = self.fleet.workdir.parent / "images" / f"{image}.tar.gz"
        if not path.exists():
            source = self.images.get(image, {}).get("rawDisk", {}).get("source", "")
            stored = self.stored(source)
            if stored is None:
                raise LookupError(f"image {image} has no raw disk this stand-in holds (only "
                                  "images made from a tarball uploaded here boot)")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(stored.data)
        return path

    def _view(self, inst: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inst.items() if k != "reads"}

    def _get_instance(self, req: Request, project: str, zone: str, name: str) -> Reply:
        inst = self.instances.get((zone, name))
        if inst is None:
            return self._not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        inst["reads"] = inst.get("reads", 0) + 1
        if inst["status"] == "PROVISIONING" and inst["reads"] >= 2 and \
                not self.hold_provisioning and self.fleet is None:
            inst["status"] = "RUNNING"
            for nic in inst.get("networkInterfaces", []):
                nic["networkIP"] = "10.128.0.2"
                for ac in nic.get("accessConfigs", []):
                    ac["natIP"] = "127.0.0.1"
        return Reply(200, self._view(inst))

    def _delete_instance(self, req: Request, project: str, zone: str, name: str) -> Reply:
        if self.instances.pop((zone, name), None) is None:
            return self._not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        if self.fleet is not None:
            self.fleet.remove(_ident(zone, name))
        return self._op("delete", name, zone)

    def _serial(self, req: Request, project: str, zone: str, name: str) -> Reply:
        if (zone, name) not in self.instances:
            return self._not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        text = CONSOLE if self.fleet is None else self.fleet.console(_ident(zone, name)) or ""
        return Reply(200, {"kind": "compute#serialPortOutput", "contents": text,
                           "start": "0", "next": str(len(text))})

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
        source = body.get("rawDisk", {}).get("source")
        if source is not None and self.stored(source) is None:
            return self._op("insert", body["name"], error=f"The resource '{source}' was not "
                            "found", code="RESOURCE_NOT_FOUND")
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
        if kind == "images" and self.fleet is not None:  # booted guests keep their own copy
            (self.fleet.workdir.parent / "images" / f"{name}.tar.gz").unlink(missing_ok=True)
        return self._op("delete", name)

    def leftovers(self) -> list[str]:
        """What a run made that is still here (a rehearsal starts with nothing)."""
        left = [f"instance {zone}/{name}" for zone, name in self.instances]
        left += [f"image {name}" for name in self.images]
        left += [f"firewall {name}" for name in self.firewalls]
        left += [f"object gs://{bucket}/{name}" for bucket, objects in self.buckets.items()
                 for name in objects]
        return left + (self.fleet.leftovers() if self.fleet is not None else [])


    # Cloud Storage -------------------------------------------------------------------------

    def stored(self, url: str) -> StoredObject | None:
        """The object a `https://storage.googleapis.com/BUCKET/NAME` URL names, if any."""
        bucket, _, name = url.removeprefix(STORAGE_URL).partition("/")
        return self.buckets.get(bucket, {}).get(name) if url.startswith(STORAGE_URL) else None

    def put_object(self, bucket: str, name: str, data: bytes,
                   metadata: dict[str, str] | None = None,
                   content_type: str = "application/octet-stream") -> dict[str, Any]:
        generation = str(next(self._ids))
        resource = {
            "kind": "storage#object", "id": f"{bucket}/{name}/{generation}", "name": name,
            "bucket": bucket, "generation": generation, "metageneration": "1",
            "contentType": content_type, "size": str(len(data)), **_hashes(data),
            "timeCreated": rfc3339(), "updated": rfc3339(), "storageClass": "STANDARD",
            "selfLink": f"{self.url}/storage/v1/b/{bucket}/o/{name}",
            "mediaLink": f"{self.url}/download/storage/v1/b/{bucket}/o/{name}?alt=media"}
        if metadata:
            resource["metadata"] = dict(metadata)
        self.buckets[bucket][name] = StoredObject(resource, data)
        return resource

    def _storage_error(self, status: int, message: str) -> Reply:
        return Reply(status, {"error": {"code": status, "message": message,
                                        "errors": [{"message": message}]}})

    def _no_bucket(self, bucket: str) -> Reply:
        return self._storage_error(404, f"The specified bucket {bucket} does not exist.")

    def _store(self, req: Request, bucket: str, resource: dict[str, Any], data: bytes,
               content_type: str, sent_hash: dict[str, str]) -> Reply:
        """Make the object (the upload's last step): preconditions, then the checksum the
        client computed against the bytes that arrived."""
        name = resource.get("name") or req.query.get("name", [""])[0]
        if not name:
            return self._storage_error(400, "Required: object name")
        if req.query.get("ifGenerationMatch") == ["0"] and name in self.buckets[bucket]:
            return self._storage_error(412, "At least one of the pre-conditions you "
                                       "specified did not hold.")
        actual = _hashes(data)
        for key, value in sent_hash.items():
            if actual.get(key) != value:
                return self._storage_error(400, f"Provided {key} \"{value}\" doesn't match "
                                           f"calculated {key} \"{actual[key]}\".")
        return Reply(200, self.put_object(bucket, name, data, resource.get("metadata"),
                                          resource.get("contentType") or content_type))

    def _upload(self, req: Request, bucket: str) -> Reply:
        if bucket not in self.buckets:
            return self._no_bucket(bucket)
        kind = req.query.get("uploadType", [""])[0]
        ctype = req.headers.get("content-type", "application/octet-stream")
        if kind == "media":
            return self._store(req, bucket, {}, req.body, ctype, {})
        if kind == "multipart":
            m = re.search(r'boundary="?([^";]+)"?', ctype)
            if not m:
                return self._storage_error(400, "multipart upload without a boundary")
            parts = req.body.split(b"--" + m.group(1).encode())[1:-1]
            if len(parts) != 2:
                return self._storage_error(400, f"multipart upload of {len(parts)} parts")
            (meta_head, meta), (data_head, data) = (
                p.removeprefix(b"\r\n").removesuffix(b"\r\n").split(b"\r\n\r\n", 1)
                for p in parts)
            resource = json.loads(meta)
            sent = {k: resource.pop(k) for k in ("crc32c", "md5Hash") if k in resource}
            data_type = re.search(rb"content-type: *([^\r\n]+)", data_head, re.I)
            return self._store(req, bucket, resource, data, data_type.group(1).decode()
                               if data_type else ctype, sent)
        if kind == "resumable":
            upload_id = uuid.uuid4().hex
            self.sessions[upload_id] = UploadSession(
                bucket, req.json() or {},
                req.headers.get("x-upload-content-type", "application/octet-stream"),
                bytearray())
            location = f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=resumable" \
                       f"&upload_id={upload_id}"
            if req.query.get("ifGenerationMatch"):
                location += f"&ifGenerationMatch={req.query['ifGenerationMatch'][0]}"
            return Reply(200, b"", {"Location": location})
        return self._storage_error(400, f"unknown uploadType {kind!r}")

    def _upload_chunk(self, req: Request, bucket: str) -> Reply:
        upload_id = req.query.get("upload_id", [""])[0]
        session = self.sessions.get(upload_id)
        if session is None or session.bucket != bucket:
            return self._storage_error(404, "No such upload session.")
        m = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)",
                         req.headers.get("content-range", ""))
        if m is None:
            return self._storage_error(400, "Content-Range missing or malformed")
        if m.group(1) is not None:
            if int(m.group(1)) != len(session.data) or \
                    int(m.group(2)) - int(m.group(1)) + 1 != len(req.body):
                return self._storage_error(400, "Content-Range does not follow what arrived")
            session.data += req.body
        total = m.group(3)
        if total == "*" or len(session.data) < int(total):
            return Reply(308, b"", {"Range": f"bytes=0-{len(session.data) - 1}"}
                         if session.data else {})
        del self.sessions[upload_id]
        sent = dict(part.split("=", 1) for part in
                    req.headers.get("x-goog-hash", "").replace(" ", "").split(",") if part)
        return self._store(req, bucket, session.metadata, bytes(session.data),
                           session.content_type, {{"md5": "md5Hash"}.get(k, k): v
                                                  for k, v in sent.items()})

    def _get_object(self, req: Request, bucket: str, name: str) -> Reply:
        if bucket not in self.buckets:
            return self._no_bucket(bucket)
        stored = self.buckets[bucket].get(unquote(name))
        if stored is None:
            return self._storage_error(404, f"No such object: {bucket}/{unquote(name)}")
        return Reply(200, stored.resource)

    def _delete_object(self, req: Request, bucket: str, name: str) -> Reply:
        if bucket not in self.buckets:
            return self._no_bucket(bucket)
        if self.buckets[bucket].pop(unquote(name), None) is None:
            return self._storage_error(404, f"No such object: {bucket}/{unquote(name)}")
        return Reply(204, b"")

    def _list_objects(self, req: Request, bucket: str) -> Reply:
        if bucket not in self.buckets:
            return self._no_bucket(bucket)
        prefix = req.query.get("prefix", [""])[0]
        items = [o.resource for name, o in sorted(self.buckets[bucket].items())
                 if name.startswith(prefix)]
        return Reply(200, {"kind": "storage#objects", "items": items})


def _ident(zone: str, name: str) -> str:
    return f"{zone}-{name}"


def environment(standin: GceStandIn, folder: Path) -> dict[str, str]:
    """How a user points google-cloud-compute and google-cloud-storage at it: a
    service-account key file, private API endpoints (Compute Engine, Cloud Storage)."""
    return {
        "GOOGLE_APPLICATION_CREDENTIALS": str(standin.service_account_file(folder / "sa.json")),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "ROSLAB_GCE_ENDPOINT": standin.url, "ROSLAB_GCS_ENDPOINT": standin.url,
        # google-auth probes the GCE metadata server when it finds no credentials: keep
        # that probe on loopback (nothing listens on port 9)
        "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
    }


def serve(tmp_path: Path, env: Any) -> GceStandIn:
    """Start one (API sequences only) and point the SDKs at it (`env`: pytest's
    monkeypatch), with a release tarball already uploaded and the runner's address."""
    standin = GceStandIn().start()
    standin.put_object(RELEASE_BUCKET, RELEASE_OBJECT, b"a release tarball, uploaded before")
    for name, value in environment(standin, tmp_path).items():
        env.setenv(name, value)
    env.setenv("ROSLAB_SSH_SOURCE", "198.51.100.7")
    env.delenv("GOOGLE_CLOUD_PROJECT", raising=False)  # the key file's project
    return standin


@contextlib.contextmanager
def rehearsal() -> Iterator[Rehearsal]:
    """The stand-in on 127.0.0.1 with instances that boot and a bucket to upload to; on
    exit every guest is powered off, the server stopped and its folder removed."""
    with scratch("gce") as (fleet, folder):
        standin = GceStandIn(fleet)
        standin.buckets = {REHEARSAL_BUCKET: {}}
        standin.start()
        # the runner reaches the instances from loopback, not from the internet
        with serving(standin, fleet, "the GCE stand-in (Compute Engine, Cloud Storage)",
                     "instances",
                     {**environment(standin, folder), "ROSLAB_GCE_BUCKET": REHEARSAL_BUCKET},
                     "gce", options={"ssh_from": "127.0.0.0/8"}) as rehearsal:
            yield rehearsal
