"""Apache CloudStack through apache-libcloud: a virtual machine from a template with the
cloud-config as user data and the ownership marks as resource tags.

    CLOUDSTACK_ENDPOINT=https://cloud.example.org/client/api CLOUDSTACK_KEY=... \\
    CLOUDSTACK_SECRET=... pytest scenarios/ --platform cloudstack --image cloudstack:TEMPLATE

Credentials: CLOUDSTACK_ENDPOINT (the API URL), CLOUDSTACK_KEY and CLOUDSTACK_SECRET (the
account's API and secret keys; the names the `cs` client and Ansible's modules use).
Settings (`--platform-option zone=...`, `--instance-type` first, else the variable):
ROSLAB_CLOUDSTACK_ZONE (name or id; default the first zone listed),
ROSLAB_CLOUDSTACK_OFFERING (service offering name or id; default the first),
ROSLAB_CLOUDSTACK_EXPUNGE=1 to expunge at delete (needs the right; else destroyed VMs
are expunged by the cloud after its expunge delay, and cost nothing meanwhile).

CloudStack's API has no console log, so checks that need one are not applicable.
Tags are added right after the VM is deployed (deployVirtualMachine takes none): if that
fails, the VM is destroyed before the error is raised.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from drivers.cloud import (
    Candidate,
    cloud_capabilities,
    epoch,
    resource_name,
    secret_env,
    sweep,
    wait_for,
)
from drivers.libcloud import LibcloudDriver
from lab import gc
from lab.driver import Rehearsal
from lab.errors import ConfigError, ImageError

CREDENTIAL_VARS = ("CLOUDSTACK_ENDPOINT", "CLOUDSTACK_KEY", "CLOUDSTACK_SECRET")
NO_CONSOLE_API = ("CloudStack's API has no console output (its console is a browser "
                  "session), so the lab reaches the VM by SSH only")


class CloudStackDriver(LibcloudDriver):
    name = "cloudstack"
    credential_vars = CREDENTIAL_VARS
    credentials_are = "the API URL and the account's API and secret keys"
    capabilities = cloud_capabilities("cloudstack", console=NO_CONSOLE_API,
                                      console_log=NO_CONSOLE_API)
    # libcloud's NodeState names (it maps Running, Destroyed, Error... onto them); the VM is
    # deployed started, so Stopped means it powered off
    running_states: ClassVar[tuple[str, ...]] = ("running",)
    failed_states: ClassVar[tuple[str, ...]] = ("terminated", "stopped")

    @classmethod
    def _libcloud(cls, get_driver: Any) -> Any:
        from libcloud.compute.providers import Provider

        url = os.environ["CLOUDSTACK_ENDPOINT"]
        driver = get_driver(Provider.CLOUDSTACK)(
            os.environ["CLOUDSTACK_KEY"], secret_env("CLOUDSTACK_SECRET"), url=url,
            secure=url.startswith("https://"))
        driver.connection.poll_interval = cls.poll_interval  # async jobs (deploy, destroy)
        return driver

    @classmethod
    def rehearsal(cls) -> AbstractContextManager[Rehearsal]:
        """The CloudStack API stand-in whose VMs boot under QEMU
        (drivers/rehearsal/cloudstack.py)."""
        from drivers.rehearsal.cloudstack import rehearsal

        return rehearsal()

    # launch ------------------------------------------------------------------------------

    def _launch(self, spec: Any) -> None:
        base = resource_name()
        zone = _pick(self.api.list_locations(), self.option("zone", "ROSLAB_CLOUDSTACK_ZONE"),
                     "zone", "ROSLAB_CLOUDSTACK_ZONE")
        size = _pick(self.api.list_sizes(),
                     self.option("instance_type", "ROSLAB_CLOUDSTACK_OFFERING"),
                     "service offering", "ROSLAB_CLOUDSTACK_OFFERING")
        images = [i for i in self.api.list_images(location=zone)
                  if spec.image.ref in (i.id, i.name)]
        if not images:
            raise ImageError(f"cloudstack has no template {spec.image.ref!r} in zone "
                             f"{zone.name} (`cmk list templates templatefilter=executable`)")
        user_data = spec.cloud_config.text if spec.cloud_config is not None else None
        try:
            self.instance = self._create(
                "instance", base,
                lambda: self.api.create_node(
                    name=base, size=size, image=images[0], location=zone,
                    ex_userdata=user_data, ex_start_vm=True).id,  # libcloud's default: stopped
                self._ids_named, self._delete_instance)
            self.api.ex_create_tags([self.instance], "UserVm", gc.owner_marks())
        except Exception as err:  # libcloud raises ProviderError, and bare Exception for jobs
            raise ConfigError(f"cloudstack refused the VM: {err}") from None

    def _ids_named(self, name: str) -> list[str]:
        return [n.id for n in self.api.list_nodes() if n.name == name]

    def _node(self) -> Any:
        try:
            return self.api.ex_get_node(self.instance)
        except Exception as err:  # libcloud's "Node '...' not found" is a bare Exception
            if "not found" in str(err):
                return None
            raise

    def _status(self) -> str | None:
        node = self._node()
        return str(node.state) if node is not None else None

    def _address_now(self) -> str | None:
        node = self._node()
        return (node.public_ips or node.private_ips or [None])[0] if node is not None else None

    # delete ------------------------------------------------------------------------------

    def _delete_instance(self, instance: str) -> None:
        _destroy(self.api, instance, self.delete_wait, self.poll_interval)

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[gc.Garbage]:
        api = cls._connect()
        candidates = [
            Candidate("vm", n.id, dict(n.extra.get("tags") or {}), epoch(n.extra.get("created")),
                      lambda n=n: _destroy(api, n.id, cls.delete_wait, cls.poll_interval))
            for n in api.list_nodes() if str(n.state) != "terminated"]
        return sweep(candidates, older_than, dry_run)


def _pick(items: list[Any], wanted: str | None, what: str, var: str) -> Any:
    """The item named or with the id `wanted`, or the first; ConfigError naming the choices."""
    if not items:
        raise ConfigError(f"cloudstack lists no {what} for this account")
    if wanted is None:
        return items[0]
    for item in items:
        if wanted in (item.id, item.name):
            return item
    names = ", ".join(i.name for i in items)
    raise ConfigError(f"cloudstack has no {what} {wanted!r} (set {var} to one of: {names})")


def _destroy(api: Any, instance: str, timeout: float, interval: float) -> None:
    """Destroy (and expunge when asked and allowed); wait until it is listed as gone."""
    from libcloud.compute.base import Node

    node = Node(instance, None, None, [], [], api)
    api.destroy_node(node, ex_expunge=os.environ.get("ROSLAB_CLOUDSTACK_EXPUNGE") == "1")

    def gone() -> bool:
        return all(str(n.state) == "terminated" for n in api.list_nodes() if n.id == instance)

    wait_for(gone, timeout, f"cloudstack VM {instance} destroyed", interval)
