"""The DigitalOcean rehearsal: a stand-in for the DigitalOcean API v2 (droplets, custom
images, tags, paging).

In a rehearsal (`DigitalOceanDriver.rehearsal()`, a `Fleet` given) a custom image is
imported from its URL as DigitalOcean does (fetched by the stand-in: `NEW` until the disk is
here, then `available`), and a droplet boots it under QEMU with the `digitalocean` metadata
service (its user_data): `new` until QEMU runs, then `active` with its public IPv4 address a
loopback address whose port 22 is the guest's; a guest that cannot start or ends by itself
turns it `off`; delete powers it off. DigitalOcean keeps no console output, so neither does
the stand-in. Without a fleet (the driver's API-level tests) it only records: a droplet is
`active` at 127.0.0.1, and an image `available`, from its second read on.

Payload shapes follow the published API reference (`POST /v2/droplets` answers 202 with
a droplet in status `new`; `GET /v2/droplets/{id}`; `DELETE` answers 204; errors are
`{"id": ..., "message": ...}`; lists carry `links.pages` and `meta.total`). A droplet is
`new` when made and `active` with a public IPv4 address from its second read on; a custom
image is `NEW` and then `available`. Every call must carry the account's bearer token.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drivers.rehearsal import Fleet, Guest, reference_disk, scratch, serving
from drivers.rehearsal.base import Reply, Request, StandIn, pointed_at, rfc3339
from lab.driver import Rehearsal

TOKEN = "dop_v1_standin0123456789"
# DigitalOcean offered RancherOS as a distribution image: the matrix's cell boots it by slug
DISTRIBUTION = {"slug": "rancheros", "name": "RancherOS", "distribution": "RancherOS",
                "type": "base", "reference": "rancheros-digitalocean.img"}
IMPORT_TIMEOUT = 600.0  # fetching a custom image's URL
CHUNK = 1 << 20


class DigitalOceanStandIn(StandIn):
    def __init__(self, fleet: Fleet | None = None) -> None:
        super().__init__()
        self.fleet = fleet  # a rehearsal's: images are fetched, droplets boot
        self.droplets: dict[int, dict[str, Any]] = {}
        self.images: dict[int, dict[str, Any]] = {}
        self.hold_new = False
        self.why_off: dict[int, str] = {}  # droplets whose guest could not start or ended
        self._ids = itertools.count(3164444)
        r = self.route
        r("POST", r"/v2/droplets", self._create_droplet)
        r("GET", r"/v2/droplets", self._list_droplets)
        r("GET", r"/v2/droplets/(\d+)", self._get_droplet)
        r("DELETE", r"/v2/droplets/(\d+)", self._delete_droplet)
        r("POST", r"/v2/images", self._create_image)
        r("GET", r"/v2/images", self._list_images)
        r("GET", r"/v2/images/([^/]+)", self._get_image)
        r("DELETE", r"/v2/images/(\d+)", self._delete_image)

    def dispatch(self, req: Request) -> Reply:
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            self.requests.append(req)
            return Reply(401, {"id": "Unauthorized", "message": "Unable to authenticate you"})
        return super().dispatch(req)

    def seed(self, kind: str, name: str, created: str = "2020-01-01T00:00:00Z",
             **fields: Any) -> int:
        ident = next(self._ids)
        item = {"id": ident, "name": name, "created_at": created, "tags": [], **fields}
        if kind == "droplets":
            item.setdefault("status", "active")
        else:
            item.setdefault("status", "available")
        getattr(self, kind)[ident] = item
        return ident

    def _not_found(self) -> Reply:
        return Reply(404, {"id": "not_found",
                           "message": "The resource you were accessing could not be found."})

    def _page(self, req: Request, key: str, items: list[dict[str, Any]]) -> Reply:
        per_page = int(req.query.get("per_page", ["20"])[0])
        page = int(req.query.get("page", ["1"])[0])
        chunk = items[(page - 1) * per_page:page * per_page]
        pages = {"next": f"/v2/{key}?page={page + 1}"} if page * per_page < len(items) else {}
        return Reply(200, {key: chunk, "links": {"pages": pages}, "meta": {"total": len(items)}})

    # droplets ----------------------------------------------------------------------------

    def _create_droplet(self, req: Request) -> Reply:
        body = req.json()
        if body["image"] not in self.images and not isinstance(body["image"], str):
            return Reply(422, {"id": "unprocessable_entity",
                               "message": "You specified an invalid image for Droplet creation."})
        ident = next(self._ids)
        droplet = {"id": ident, "name": body["name"], "status": "new", "reads": 0,
                   "memory": 2048, "vcpus": 1, "disk": 50, "locked": False,
                   "created_at": rfc3339(), "size_slug": body["size"],
                   "region": {"slug": body["region"]}, "image": {"id": body["image"]},
                   "networks": {"v4": [], "v6": []}, "tags": body.get("tags", []),
                   "user_data": body.get("user_data"), "features": [], "volume_ids": []}
        self.droplets[ident] = droplet
        if self.fleet is not None:
            self._boot(droplet, body)
        return Reply(202, {"droplet": self._view(droplet), "links": {"actions": [
            {"id": next(self._ids), "rel": "create", "href": "/v2/actions/1"}]}})

    def _boot(self, droplet: dict[str, Any], body: dict[str, Any]) -> None:
        def running(guest: Guest) -> None:
            with self.lock:
                droplet["status"] = "active"
                droplet["networks"]["v4"] = [
                    {"ip_address": "10.116.0.2", "netmask": "255.255.240.0", "gateway": "",
                     "type": "private"},
                    {"ip_address": guest.address, "netmask": "255.0.0.0",
                     "gateway": "127.0.0.1", "type": "public"}]

        def ended(why: str) -> None:
            with self.lock:
                droplet.update(status="off", networks={"v4": [], "v6": []})
                self.why_off[droplet["id"]] = why

        assert self.fleet is not None
        user_data = body.get("user_data")
        self.fleet.launch(str(droplet["id"]), lambda: self._disk(body["image"]),
                          "digitalocean", user_data.encode() if user_data else None, [],
                          running, ended, hostname=body["name"])

    def _disk(self, ident: Any) -> Path:
        image = self.images.get(ident) if isinstance(ident, int) else None
        if image is not None and "reference" in image:  # the distribution image
            return reference_disk(image["reference"])
        if image is None or "disk" not in image:
            raise LookupError(f"image {ident!r} has no disk this stand-in holds (only "
                              "custom images imported here boot)")
        return Path(image["disk"])

    def _view(self, droplet: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in droplet.items() if k not in ("reads", "user_data")}

    def _list_droplets(self, req: Request) -> Reply:
        tag = req.query.get("tag_name", [None])[0]
        name = req.query.get("name", [None])[0]
        found = [self._view(d) for d in self.droplets.values()
                 if (tag is None or tag in d["tags"]) and (name is None or d["name"] == name)]
        return self._page(req, "droplets", found)

    def _get_droplet(self, req: Request, ident: str) -> Reply:
        droplet = self.droplets.get(int(ident))
        if droplet is None:
            return self._not_found()
        droplet["reads"] = droplet.get("reads", 0) + 1
        if droplet["status"] == "new" and droplet["reads"] >= 2 and not self.hold_new and \
                self.fleet is None:
            droplet["status"] = "active"
            droplet["networks"]["v4"] = [
                {"ip_address": "10.116.0.2", "netmask": "255.255.240.0", "gateway": "",
                 "type": "private"},
                {"ip_address": "127.0.0.1", "netmask": "255.255.240.0",
                 "gateway": "127.0.0.254", "type": "public"}]
        return Reply(200, {"droplet": self._view(droplet)})

    def _delete_droplet(self, req: Request, ident: str) -> Reply:
        if self.droplets.pop(int(ident), None) is None:
            return self._not_found()
        if self.fleet is not None:
            self.fleet.remove(ident)
        return Reply(204)

    # images ------------------------------------------------------------------------------

    def _create_image(self, req: Request) -> Reply:
        body = req.json()
        ident = next(self._ids)
        image = {"id": ident, "name": body["name"], "distribution": body.get("distribution"),
                 "slug": None, "public": False, "regions": [], "created_at": rfc3339(),
                 "type": "custom", "status": "NEW", "reads": 0, "tags": body.get("tags", []),
                 "description": body.get("description", ""), "url": body["url"],
                 "region": body["region"]}
        self.images[ident] = image
        if self.fleet is not None:
            threading.Thread(target=self._import, args=(image,), daemon=True,
                             name=f"import-{ident}").start()
        return Reply(202, {"image": self._image_view(image)})

    def _import(self, image: dict[str, Any]) -> None:
        """Fetch the image's URL into a file (sparse: a disk is mostly zeros)."""
        assert self.fleet is not None
        path = self.fleet.workdir.parent / "images" / f"{image['id']}.img"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(image["url"], timeout=IMPORT_TIMEOUT) as src, \
                    open(path, "wb") as disk:
                while chunk := src.read(CHUNK):
                    if chunk.count(0) == len(chunk):
                        disk.seek(len(chunk), 1)
                    else:
                        disk.write(chunk)
                disk.truncate()
        except (OSError, ValueError) as exc:
            path.unlink(missing_ok=True)
            with self.lock:
                image.update(status="deleted", error_message=f"could not fetch "
                             f"{image['url']}: {exc}")
            return
        with self.lock:
            if image["id"] in self.images:
                image.update(status="available", disk=str(path))
            else:
                path.unlink(missing_ok=True)

    def _image_view(self, image: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in image.items() if k not in ("reads", "disk", "reference")}

    def _list_images(self, req: Request) -> Reply:
        return self._page(req, "images", [self._image_view(i) for i in self.images.values()])

    def _get_image(self, req: Request, ident: str) -> Reply:
        image = self.images.get(int(ident)) if ident.isdigit() else next(
            (i for i in self.images.values() if i.get("slug") == ident), None)
        if image is None:
            return self._not_found()
        image["reads"] = image.get("reads", 0) + 1
        if image["status"] == "NEW" and image["reads"] >= 2 and self.fleet is None:
            image["status"] = "available"
        return Reply(200, {"image": self._image_view(image)})

    def _delete_image(self, req: Request, ident: str) -> Reply:
        image = self.images.pop(int(ident), None)
        if image is None:
            return self._not_found()
        if "disk" in image:  # booted droplets keep their own overlay on it: gone with them
            Path(image["disk"]).unlink(missing_ok=True)
        return Reply(204)

    def leftovers(self) -> list[str]:
        """What a run made that is still here (a rehearsal starts with nothing)."""
        left = [f"droplet {i} ({d['name']})" for i, d in self.droplets.items()]
        left += [f"image {i} ({m['name']})" for i, m in self.images.items()
                 if m.get("type") == "custom"]
        return left + (self.fleet.leftovers() if self.fleet is not None else [])


def environment(standin: DigitalOceanStandIn) -> dict[str, str]:
    """How a user points pydo at it: a token, a base URL, the endpoint's certificate
    trusted through REQUESTS_CA_BUNDLE."""
    return {"REQUESTS_CA_BUNDLE": str(standin.ca_file), "DIGITALOCEAN_TOKEN": TOKEN,
            "ROSLAB_DIGITALOCEAN_ENDPOINT": standin.url}


def serve(tmp_path: Path, env: Any) -> DigitalOceanStandIn:
    """Start one over TLS (API sequences only) and point pydo at it (`env`: pytest's
    monkeypatch)."""
    standin = DigitalOceanStandIn().start(tls_dir=tmp_path / "tls")
    return pointed_at(standin, environment(standin), env)


@contextlib.contextmanager
def rehearsal() -> Iterator[Rehearsal]:
    """The stand-in over TLS on 127.0.0.1 with droplets that boot; on exit every guest is
    powered off, the server stopped and its folder removed."""
    with scratch("digitalocean") as (fleet, folder):
        standin = DigitalOceanStandIn(fleet).start(tls_dir=folder / "tls")
        standin.seed("images", **DISTRIBUTION)
        with serving(standin, fleet, "the DigitalOcean API stand-in", "droplets",
                     environment(standin), "digitalocean") as rehearsal:
            yield rehearsal

