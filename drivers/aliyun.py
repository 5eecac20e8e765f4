"""Alibaba Cloud (Aliyun) ECS through apache-libcloud's signed ECS connection: an instance
with the cloud-config as UserData and the ownership marks as tags at creation.

    ALIBABA_CLOUD_ACCESS_KEY_ID=... ALIBABA_CLOUD_ACCESS_KEY_SECRET=... \\
    ALIBABA_CLOUD_REGION_ID=cn-hangzhou ROSLAB_ALIYUN_SECURITY_GROUP=sg-... \\
        pytest scenarios/ --platform aliyun --image aliyun:IMAGE_ID

Credentials: ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET and
ALIBABA_CLOUD_REGION_ID (the names Alibaba's own CLI and SDKs read). Settings
(`--platform-option KEY=VALUE`, `--instance-type` first, else the variable): security_group /
ROSLAB_ALIYUN_SECURITY_GROUP (required: one that admits SSH from the runner),
vswitch / ROSLAB_ALIYUN_VSWITCH, instance_type / ROSLAB_ALIYUN_INSTANCE_TYPE
(ecs.t6-c1m2.large), ROSLAB_ALIYUN_ENDPOINT (default https://ecs.aliyuncs.com).

libcloud's ECS `create_node` sends neither UserData nor tags, so the driver makes the ECS
calls itself (CreateInstance with UserData, Tag.N and a ClientToken so a retried create
cannot make a second instance; StartInstance; DescribeInstances; GetInstanceConsoleOutput;
DeleteInstance with Force) through libcloud's connection, which signs them.
"""

from __future__ import annotations

import base64
import json
import os
from contextlib import AbstractContextManager
from typing import Any, ClassVar
from urllib.parse import urlsplit

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
from lab.errors import ConfigError

CREDENTIAL_VARS = ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                   "ALIBABA_CLOUD_REGION_ID")
PAGE = 100


class AliyunDriver(LibcloudDriver):
    name = "aliyun"
    credential_vars = CREDENTIAL_VARS
    credentials_are = "an AccessKey pair and the region id"
    capabilities = cloud_capabilities("aliyun")
    has_console_log = True
    running_states: ClassVar[tuple[str, ...]] = ("Running",)
    failed_states: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self._was_started = False  # seen Starting or Running since StartInstance

    def _has_failed(self, status: str | None) -> bool:
        """An instance is made Stopped and started after: Stopped is a failure only once it
        was seen starting (a DescribeInstances right after StartInstance may lag)."""
        if status in ("Starting", "Running"):
            self._was_started = True
        return status == "Stopped" and self._was_started

    @classmethod
    def rehearsal(cls) -> AbstractContextManager[Rehearsal]:
        """The ECS API stand-in whose instances boot under QEMU (drivers/rehearsal/aliyun.py)."""
        from drivers.rehearsal.aliyun import rehearsal

        return rehearsal()

    @classmethod
    def _libcloud(cls, get_driver: Any) -> Any:
        from libcloud.compute.providers import Provider

        url = urlsplit(os.environ.get("ROSLAB_ALIYUN_ENDPOINT", "https://ecs.aliyuncs.com"))
        return get_driver(Provider.ALIYUN_ECS)(
            os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
            secret_env("ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
            secure=url.scheme == "https", host=url.hostname, port=url.port,
            region=os.environ["ALIBABA_CLOUD_REGION_ID"])

    @classmethod
    def _call(cls, api: Any, action: str, **params: Any) -> Any:
        """One signed ECS API call; the reply as an XML element."""
        params = {"Action": action, "RegionId": api.region, **params}
        return api.connection.request(api.path, params=params).object

    # launch ------------------------------------------------------------------------------

    def _launch(self, spec: Any) -> None:
        group = self.option("security_group", "ROSLAB_ALIYUN_SECURITY_GROUP")
        if not group:
            raise ConfigError("platform aliyun: set ROSLAB_ALIYUN_SECURITY_GROUP (or "
                              "--platform-option security_group=sg-...) to a security group "
                              "that admits SSH from the runner")
        base = resource_name()
        params: dict[str, Any] = {
            "ImageId": spec.image.ref, "SecurityGroupId": group, "InstanceName": base,
            "InstanceType": self.option("instance_type", "ROSLAB_ALIYUN_INSTANCE_TYPE",
                                        "ecs.t6-c1m2.large"),
            "InternetMaxBandwidthOut": 5, "ClientToken": base,
        }
        if vswitch := self.option("vswitch", "ROSLAB_ALIYUN_VSWITCH"):
            params["VSwitchId"] = vswitch
        if spec.cloud_config is not None:
            params["UserData"] = base64.b64encode(spec.cloud_config.text.encode()).decode()
        for n, (key, value) in enumerate(gc.owner_marks().items(), 1):
            params[f"Tag.{n}.Key"], params[f"Tag.{n}.Value"] = key, value
        try:
            self.instance = self._create(
                "instance", base,
                lambda: self._call(self.api, "CreateInstance", **params).findtext("InstanceId"),
                self._ids_named, self._delete_instance)
            self._call(self.api, "AllocatePublicIpAddress", InstanceId=self.instance)
            self._call(self.api, "StartInstance", InstanceId=self.instance)
        except Exception as err:  # libcloud raises BaseHTTPError with the API's code/message
            raise ConfigError(f"aliyun refused the instance: {err}") from None

    def _ids_named(self, name: str) -> list[str]:
        return [i.findtext("InstanceId") for i in
                _instances(self.api, InstanceName=name)]

    def _described(self) -> Any:
        found = _instances(self.api, InstanceIds=json.dumps([self.instance]))
        return found[0] if found else None

    def _status(self) -> str | None:
        inst = self._described()
        return inst.findtext("Status") if inst is not None else None

    def _address_now(self) -> str | None:
        inst = self._described()
        if inst is None:
            return None
        public = inst.findtext("PublicIpAddress/IpAddress")
        return public or inst.findtext("VpcAttributes/PrivateIpAddress/IpAddress")

    def console_text(self) -> str | None:
        if self.instance is None:
            return None
        out = self._call(self.api, "GetInstanceConsoleOutput", InstanceId=self.instance)
        return base64.b64decode(out.findtext("ConsoleOutput") or "").decode(errors="replace")

    # delete ------------------------------------------------------------------------------

    def _delete_instance(self, instance: str) -> None:
        _delete(self.api, instance, self.delete_wait, self.poll_interval)

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[gc.Garbage]:
        api = cls._connect()
        candidates = []
        for inst in _instances(api, **{"Tag.1.Key": gc.OWNER_KEY, "Tag.1.Value": gc.OWNER}):
            ident = inst.findtext("InstanceId")
            marks = {t.findtext("TagKey"): t.findtext("TagValue")
                     for t in inst.findall("Tags/Tag")}
            candidates.append(Candidate(
                "instance", ident, marks, epoch(inst.findtext("CreationTime")),
                lambda i=ident: _delete(api, i, cls.delete_wait, cls.poll_interval)))
        return sweep(candidates, older_than, dry_run)


def _instances(api: Any, **query: Any) -> list[Any]:
    """Every page of DescribeInstances."""
    found: list[Any] = []
    page = 1
    while True:
        reply = AliyunDriver._call(api, "DescribeInstances", PageSize=PAGE, PageNumber=page,
                                   **query)
        found += reply.findall("Instances/Instance")
        if page * PAGE >= int(reply.findtext("TotalCount") or 0):
            return found
        page += 1


def _delete(api: Any, instance: str, timeout: float, interval: float) -> None:
    """Delete (Force: a running instance too) and wait until ECS no longer lists it."""
    AliyunDriver._call(api, "DeleteInstance", InstanceId=instance, Force="true")
    wait_for(lambda: not _instances(api, InstanceIds=json.dumps([instance])), timeout,
             f"aliyun instance {instance} deleted", interval)
