"""DigitalOcean through pydo: a droplet with the cloud-config as user_data and the
ownership marks as tags; no console API, so checks that need one are not applicable.

    DIGITALOCEAN_TOKEN=... pytest scenarios/ --platform digitalocean --image digitalocean:123456
    ... --image digitalocean:https://example.org/rancheros-digitalocean.img   # custom image

Credentials: DIGITALOCEAN_TOKEN (or doctl's DIGITALOCEAN_ACCESS_TOKEN), a read-write API
token. Settings (`--region`, `--instance-type` first, else the variable):
ROSLAB_DIGITALOCEAN_REGION (nyc3), ROSLAB_DIGITALOCEAN_SIZE (s-1vcpu-2gb);
ROSLAB_DIGITALOCEAN_ENDPOINT (the API's base URL, for a proxy or a private endpoint).
An image URL is imported as a custom image for the run (tagged, deleted after).

Tags: DigitalOcean tags are flat names (letters, digits, `:`, `-`, `_`), so each mark is one
tag `KEY:VALUE`: `created-by:roslab`, `roslab-run-id:RUN`, `roslab-expires:EPOCH`.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from drivers.cloud import (
    Candidate,
    CloudDriver,
    cloud_capabilities,
    epoch,
    resource_name,
    secret_env,
    sweep,
    wait_for,
)
from lab import gc
from lab.driver import Rehearsal
from lab.errors import ConfigError, ImageError, PlatformError

TOKEN_VARS = ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
NO_CONSOLE_API = ("DigitalOcean's API has no console output or serial console (its web "
                  "console is a browser session), so the lab reaches droplets by SSH only")
PAGE = 200


def mark_tags(marks: dict[str, str]) -> list[str]:
    return [f"{k}:{re.sub(r'[^A-Za-z0-9_-]', '-', v)}" for k, v in marks.items()]


def tag_marks(tags: list[str]) -> dict[str, str]:
    return dict(t.split(":", 1) for t in tags if ":" in t)


class DigitalOceanDriver(CloudDriver):
    name = "digitalocean"
    sdk_module = "pydo"
    sdk_package = "pydo"
    capabilities = cloud_capabilities("digitalocean", console=NO_CONSOLE_API,
                                      console_log=NO_CONSOLE_API)
    running_states: ClassVar[tuple[str, ...]] = ("active",)
    # a droplet that powers off before it is active will not become so by itself
    failed_states: ClassVar[tuple[str, ...]] = ("archive", "off")

    def __init__(self) -> None:
        super().__init__()
        self.region = ""

    @classmethod
    def _token(cls) -> str:
        for var in TOKEN_VARS:
            if os.environ.get(var):
                return secret_env(var)
        raise ConfigError("platform digitalocean: no API token; set DIGITALOCEAN_TOKEN "
                          "(or DIGITALOCEAN_ACCESS_TOKEN) to a read-write token")

    @classmethod
    def check_credentials(cls, options: dict[str, Any]) -> None:
        cls._token()

    @classmethod
    def _connect(cls) -> Any:
        pydo = cls.sdk()
        endpoint = os.environ.get("ROSLAB_DIGITALOCEAN_ENDPOINT", "https://api.digitalocean.com")
        return pydo.Client(token=cls._token(), endpoint=endpoint)

    # launch ------------------------------------------------------------------------------

    def _launch(self, spec: Any) -> None:
        from azure.core.exceptions import HttpResponseError  # pydo's HTTP layer

        base = resource_name()
        self.region = self.option("region", "ROSLAB_DIGITALOCEAN_REGION", "nyc3") or ""
        tags = mark_tags(gc.owner_marks())
        image = self._image(spec.image.ref, base, tags)
        user_data = spec.cloud_config.text if spec.cloud_config is not None else ""
        body = {"name": base, "region": self.region, "image": image, "tags": tags,
                "size": self.option("instance_type", "ROSLAB_DIGITALOCEAN_SIZE", "s-1vcpu-2gb"),
                "user_data": user_data}
        try:
            # retry_total=0: a POST retried after a lost answer would make a second droplet
            self.instance = self._create(
                "instance", base,
                lambda: str(self.api.droplets.create(body=body, retry_total=0)
                            ["droplet"]["id"]),
                lambda name: [str(d["id"]) for d in
                              self.api.droplets.list(name=name)["droplets"]],
                self._delete_instance)
        except HttpResponseError as err:
            raise ConfigError(f"digitalocean refused the droplet: {_reason(err)}") from None

    def _image(self, ref: str, base: str, tags: list[str]) -> Any:
        """An image id or slug the account has, or a custom image imported from a URL."""

        if not ref.startswith(("http://", "https://")):
            found = _found(self.api.images.get(image_id=ref), "image")
            if found is None:
                raise ImageError(f"digitalocean has no image {ref!r} (`doctl compute image "
                                 "list` shows what the account has)")
            return found["id"]
        ident = self._create(
            "image", base,
            lambda: str(self.api.images.create_custom(body={
                "name": base, "url": ref, "region": self.region, "distribution": "Unknown",
                "description": "roslab run image", "tags": tags}, retry_total=0)
                ["image"]["id"]),
            lambda name: [str(i["id"]) for i in _all(self.api.images.list, "images",
                                                     private=True) if i["name"] == name],
            self._delete_image)

        def available() -> bool:
            image = _found(self.api.images.get(image_id=int(ident)), "image")
            status = image["status"] if image else "deleted"
            if status == "deleted" or status == "error":
                raise ImageError(f"digitalocean could not import {ref}: image {status}")
            return status == "available"

        wait_for(available, self.boot_wait, f"digitalocean custom image from {ref} available",
                 self.poll_interval)
        return int(ident)

    def _droplet(self) -> dict[str, Any] | None:
        return _found(self.api.droplets.get(droplet_id=int(self.instance or 0)), "droplet")

    def _status(self) -> str | None:
        droplet = self._droplet()
        return droplet["status"] if droplet else None

    def _address_now(self) -> str | None:
        droplet = self._droplet()
        if droplet is None:
            return None
        v4 = droplet.get("networks", {}).get("v4", [])
        public = [n["ip_address"] for n in v4 if n.get("type") == "public"]
        private = [n["ip_address"] for n in v4 if n.get("type") == "private"]
        return (public or private or [None])[0]

    # delete ------------------------------------------------------------------------------

    def _delete_instance(self, instance: str) -> None:
        _destroy(self.api, "droplet", instance, self.delete_wait, self.poll_interval)

    def _delete_image(self, image: str) -> None:
        _destroy(self.api, "image", image, self.delete_wait, self.poll_interval)

    @classmethod
    def rehearsal(cls) -> AbstractContextManager[Rehearsal]:
        """The DigitalOcean API stand-in whose droplets boot under QEMU
        (drivers/rehearsal/digitalocean.py)."""
        from drivers.rehearsal.digitalocean import rehearsal

        return rehearsal()

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[gc.Garbage]:
        client = cls._connect()
        wait, interval = cls.delete_wait, cls.poll_interval
        owner = f"{gc.OWNER_KEY}:{gc.OWNER}"
        candidates = [
            Candidate("droplet", str(d["id"]), tag_marks(d.get("tags") or []),
                      epoch(d.get("created_at")),
                      lambda d=d: _destroy(client, "droplet", str(d["id"]), wait, interval))
            for d in _all(client.droplets.list, "droplets", tag_name=owner)]
        candidates += [
            Candidate("image", str(i["id"]), tag_marks(i.get("tags") or []),
                      epoch(i.get("created_at")),
                      lambda i=i: _destroy(client, "image", str(i["id"]), wait, interval))
            for i in _all(client.images.list, "images", private=True)]
        return sweep(candidates, older_than, dry_run)


def _all(list_call: Any, key: str, **query: Any) -> list[dict[str, Any]]:
    """Every page of a DigitalOcean list."""
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        reply = list_call(per_page=PAGE, page=page, **query)
        items += reply.get(key, [])
        if not reply.get("links", {}).get("pages", {}).get("next"):
            return items
        page += 1


def _destroy(client: Any, kind: str, ident: str, timeout: float, interval: float) -> None:
    """Delete a droplet or image and wait until the API no longer has it."""
    ops = client.droplets if kind == "droplet" else client.images
    arg = "droplet_id" if kind == "droplet" else "image_id"
    (ops.destroy if kind == "droplet" else ops.delete)(**{arg: int(ident)})  # 404: gone already

    def gone() -> bool:
        return _found(ops.get(**{arg: int(ident)}), kind) is None

    wait_for(gone, timeout, f"digitalocean {kind} {ident} deleted", interval)


def _found(reply: Any, key: str) -> dict[str, Any] | None:
    """The object of a `get`, or None when the API answered 404 (pydo returns that answer's
    body, `{"id": "not_found", ...}`, rather than raising)."""
    if isinstance(reply, dict) and key not in reply and reply.get("id") not in (None, "not_found"):
        # another error answer (too_many_requests, server_error): not "gone"
        raise PlatformError(f"DigitalOcean answered {reply.get('id')}: {reply.get('message')}")
    return reply.get(key) if isinstance(reply, dict) else None


def _reason(err: Any) -> str:
    """The API's own message (`{"id": ..., "message": ...}`), never the request headers."""
    try:
        return str(err.response.json().get("message") or err.reason)
    except Exception:  # a body that is not JSON: the status line says enough
        return str(err.reason)
