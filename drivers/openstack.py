"""OpenStack through openstacksdk: a server from an image, cloud-config on the config drive.

    OS_CLOUD=mycloud pytest scenarios/ --platform openstack --image rancheros-openstack.img
    OS_CLOUD=mycloud pytest scenarios/ --platform openstack --image openstack:rancheros-v1.5

The cloud and its credentials come from openstacksdk's own sources: `clouds.yaml`
(`./clouds.yaml`, `~/.config/openstack/`, `/etc/openstack/`, or `OS_CLIENT_CONFIG_FILE`),
the entry named by `OS_CLOUD`, or the `OS_AUTH_URL`/`OS_USERNAME`/... variables. A disk
image is uploaded to Glance for the run (marked, deleted after); `openstack:NAME` boots an
image the cloud already has. The server gets the cloud-config as user_data with the config
drive on (RancherOS reads `config-2`), the ownership marks as server metadata, and its
console log is read through the compute API.

Settings (a `--platform-option KEY=VALUE` or `--instance-type` first, else the variable):
instance_type / ROSLAB_OPENSTACK_FLAVOR (default m1.small), network /
ROSLAB_OPENSTACK_NETWORK (a network id; default: the project's only network, as Nova picks).
"""

from __future__ import annotations

import base64
import os
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from drivers.cloud import (
    Candidate,
    CloudDriver,
    cloud_capabilities,
    epoch,
    resource_name,
    sweep,
    wait_for,
)
from lab import gc
from lab.driver import Rehearsal
from lab.errors import ConfigError, ImageError
from lab.images import CLOUD, DISK
from lab.redact import keep_secret

# clouds.yaml auth values that are credentials (kept out of every log and report)
SECRET_AUTH_KEYS = ("password", "token", "application_credential_secret")
CREDENTIALS_HINT = ("set OS_CLOUD to an entry of clouds.yaml (./clouds.yaml, "
                    "~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml or "
                    "OS_CLIENT_CONFIG_FILE), or the OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, "
                    "OS_PROJECT_NAME variables")


class OpenStackDriver(CloudDriver):
    name = "openstack"
    sdk_module = "openstack"
    sdk_package = "openstacksdk"
    capabilities = cloud_capabilities("configdrive", (CLOUD, DISK))
    has_console_log = True
    running_states: ClassVar[tuple[str, ...]] = ("ACTIVE",)
    # a server that shuts off before it is ACTIVE will not become so by itself
    failed_states: ClassVar[tuple[str, ...]] = ("ERROR", "SHUTOFF")

    # connection --------------------------------------------------------------------------

    @classmethod
    def sdk(cls) -> Any:
        super().sdk()  # the package itself, or a clear error naming it
        import openstack.config
        import openstack.connection
        import openstack.exceptions

        return openstack

    @classmethod
    def _config(cls) -> Any:
        sdk = cls.sdk()
        from keystoneauth1.exceptions import ClientException  # openstacksdk's auth library

        try:
            region = sdk.config.OpenStackConfig().get_one(cloud=os.environ.get("OS_CLOUD"))
        except (sdk.exceptions.ConfigException, ClientException) as exc:
            raise ConfigError(f"platform openstack: {exc}; {CREDENTIALS_HINT}") from None
        auth = region.config.get("auth", {})
        if not auth.get("auth_url"):
            raise ConfigError(f"platform openstack: no cloud configured; {CREDENTIALS_HINT}")
        for key in SECRET_AUTH_KEYS:
            if auth.get(key):
                keep_secret(str(auth[key]), f"OpenStack {key}")
        return region

    @classmethod
    def check_credentials(cls, options: dict[str, Any]) -> None:
        cls._config()

    @classmethod
    def _connect(cls) -> Any:
        return cls.sdk().connection.Connection(config=cls._config())

    # launch ------------------------------------------------------------------------------

    def _launch(self, spec: Any) -> None:
        exc = self.sdk().exceptions
        base = resource_name()
        marks = gc.owner_marks()
        flavor_name = self.option("instance_type", "ROSLAB_OPENSTACK_FLAVOR", "m1.small")
        flavor = self.api.compute.find_flavor(flavor_name, ignore_missing=True)
        if flavor is None:
            raise ConfigError(f"openstack: no flavor {flavor_name!r} "
                              "(set ROSLAB_OPENSTACK_FLAVOR to one `openstack flavor list` shows)")
        if spec.image.kind == CLOUD:
            image = self.api.image.find_image(spec.image.ref, ignore_missing=True)
            if image is None:
                raise ImageError(f"openstack has no image {spec.image.ref!r} "
                                 "(`openstack image list` shows what it has)")
            image_id = image.id
        else:
            image_id = self._create(
                "image", base,
                lambda: self.api.image.create_image(
                    name=base, filename=str(spec.image.path), disk_format=spec.image.disk_format,
                    container_format="bare", wait=True, timeout=self.boot_wait,
                    allow_duplicates=True, **marks).id,
                lambda name: [i.id for i in self.api.image.images(name=name)],
                self._delete_image)
        network = self.option("network", "ROSLAB_OPENSTACK_NETWORK")
        networks = [{"uuid": network}] if network else None
        user_data = spec.cloud_config.text if spec.cloud_config is not None else ""
        try:
            self.instance = self._create(
                "instance", base,
                lambda: self.api.compute.create_server(
                    name=base, image_id=image_id, flavor_id=flavor.id, config_drive=True,
                    user_data=base64.b64encode(user_data.encode()).decode(),
                    metadata=marks, **({"networks": networks} if networks else {})).id,
                lambda name: [s.id for s in self.api.compute.servers(name=f"^{name}$")],
                self._delete_instance)
        except exc.HttpException as err:
            raise ConfigError(f"openstack refused the server: {err}") from None

    def _server(self) -> Any:
        exc = self.sdk().exceptions
        try:
            return self.api.compute.get_server(self.instance)
        except exc.NotFoundException:
            return None

    def _status(self) -> str | None:
        server = self._server()
        return server.status if server is not None else None

    def _address_now(self) -> str | None:
        server = self._server()
        if server is None:
            return None
        fixed = None
        for addrs in (server.addresses or {}).values():
            for addr in addrs:
                if addr.get("version") != 4:
                    continue
                if addr.get("OS-EXT-IPS:type") == "floating":
                    return addr["addr"]
                fixed = fixed or addr["addr"]
        return server.access_ipv4 or fixed

    def console_text(self) -> str | None:
        if self.instance is None:
            return None
        out = self.api.compute.get_server_console_output(self.instance)
        return out.get("output", "") if isinstance(out, dict) else str(out)

    # delete ------------------------------------------------------------------------------

    def _delete_instance(self, instance: str) -> None:
        _delete_server(self.api, instance, self.delete_wait, self.poll_interval)

    def _delete_image(self, image: str) -> None:
        self.api.image.delete_image(image, ignore_missing=True)

    @classmethod
    def rehearsal(cls) -> AbstractContextManager[Rehearsal]:
        """The Keystone, Nova and Glance stand-in whose servers boot under QEMU
        (drivers/rehearsal/openstack.py)."""
        from drivers.rehearsal.openstack import rehearsal

        return rehearsal()

    @classmethod
    def reference_artifact(cls, options: dict[str, Any]) -> str | None:
        """The reference build's OpenStack disk (`roslab image build --disks`): uploaded to
        Glance for the run."""
        return "rancheros-openstack.img"

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[gc.Garbage]:
        conn = cls._connect()
        candidates = [
            Candidate("server", s.id, dict(s.metadata or {}), epoch(s.created_at),
                      lambda s=s: _delete_server(conn, s.id, cls.delete_wait,
                                                 cls.poll_interval))
            for s in conn.compute.servers(details=True)]
        candidates += [
            Candidate("image", i.id, {k: str(v) for k, v in (i.properties or {}).items()},
                      epoch(i.created_at),
                      lambda i=i: conn.image.delete_image(i.id, ignore_missing=True))
            for i in conn.image.images()]
        return sweep(candidates, older_than, dry_run)


def _delete_server(conn: Any, server: str, timeout: float, interval: float) -> None:
    """Delete and wait until Nova no longer has it (its disk and address go with it)."""
    from openstack import exceptions

    conn.compute.delete_server(server, ignore_missing=True)

    def gone() -> bool:
        try:
            conn.compute.get_server(server)
        except exceptions.NotFoundException:
            return True
        return False

    wait_for(gone, timeout, f"openstack server {server} deleted", interval)
