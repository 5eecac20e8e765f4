"""The Aliyun rehearsal: a stand-in for Alibaba Cloud ECS's RPC API (version 2014-05-26,
XML replies).

In a rehearsal (`AliyunDriver.rehearsal()`, a `Fleet` given) the region offers one public
image, `rancheros_1_4_1_x64.vhd` (the reference build's rancheros-aliyun.vhd), and an
instance started from it boots under QEMU with the `aliyun` metadata service (its
UserData): AllocatePublicIpAddress gives it a loopback address whose port 22 will be the
guest's; StartInstance makes it `Starting` until QEMU runs, then `Running`; a guest that
cannot start or ends by itself makes it `Stopped`; GetInstanceConsoleOutput is the
guest's serial console; DeleteInstance powers it off. Without a fleet (the driver's
API-level tests) it only records: an instance is `Running` from its second read on.

Shapes follow the published ECS API reference: CreateInstance (UserData base64, Tag.N.Key/
Value, ClientToken idempotency) answers an InstanceId and leaves the instance Stopped;
StartInstance moves it to Starting and it is Running from its next read; DescribeInstances
pages (TotalCount, PageNumber, PageSize) and filters by InstanceIds, InstanceName and Tag.N;
GetInstanceConsoleOutput answers base64; DeleteInstance needs Force for a running one; errors
are `<Error><Code>...</Code><Message>...</Message></Error>`. Requests must carry a valid
signature version 1.0 (HMAC-SHA1 over `GET&%2F&` and the percent-encoded sorted query).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from drivers.rehearsal import (
    Fleet,
    Guest,
    loopback_address,
    offering,
    release_address,
    scratch,
    serving,
)
from drivers.rehearsal.base import Reply, Request, StandIn, pointed_at
from lab.driver import Rehearsal

KEY_ID, KEY_SECRET, REGION = "LTAI-standin", "standin-secret", "cn-hangzhou"
CONSOLE = "Linux version 6.1.0 ...\nRancherOS v1.5.8 started\n"  # without a fleet
# what the matrix's cell starts (`aliyun:rancheros_1_4_1_x64.vhd`): a public image id of the
# region (Aliyun's ids end in .vhd), here the reference build's Aliyun disk
PUBLIC_IMAGE = "rancheros_1_4_1_x64.vhd"
REFERENCE = "rancheros-aliyun.vhd"
SECURITY_GROUP = "sg-standin"


def _enc(text: str) -> str:
    return quote(text, safe="-_.~")


def _xml(tag: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml(k, v) for k, v in value.items())
    elif isinstance(value, list):
        inner = "".join(_xml(tag[:-1] if tag.endswith("s") else tag, v) for v in value)
    else:
        inner = escape(str(value))
    return f"<{tag}>{inner}</{tag}>"


class AliyunStandIn(StandIn):
    def __init__(self, fleet: Fleet | None = None,
                 offered: dict[str, Callable[[], Path]] | None = None) -> None:
        """`offered`: the images by id, each with the disk it boots (a rehearsal's); without
        a fleet one image that only records."""
        super().__init__()
        self.fleet = fleet
        self.instances: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, str]] = []  # CreateInstance parameters, as sent
        self.disks = dict(offered or {})
        self.images = set(self.disks) if offered is not None else {"m-rancheros158"}
        self.hold_starting = False
        self.fail_after_create: str | None = None
        self._ids = itertools.count(1)
        self.route("GET", r"/", self._api)

    def seed(self, name: str, created: str, **tags: str) -> str:
        iid = f"i-seed{next(self._ids)}"
        self.instances[iid] = {"InstanceId": iid, "InstanceName": name, "Status": "Running",
                               "CreationTime": created, "tags": tags, "reads": 0}
        return iid

    def _signed(self, params: dict[str, str]) -> bool:
        given = params.pop("Signature", "")
        canonical = "&".join(f"{_enc(k)}={_enc(params[k])}" for k in sorted(params))
        to_sign = f"GET&{_enc('/')}&{_enc(canonical)}"
        digest = hmac.new(f"{KEY_SECRET}&".encode(), to_sign.encode(), hashlib.sha1).digest()
        return params.get("AccessKeyId") == KEY_ID and \
            hmac.compare_digest(base64.b64encode(digest).decode(), given)

    def _error(self, status: int, code: str, message: str) -> Reply:
        return Reply(status, _xml("Error", {"RequestId": uuid.uuid4().hex, "HostId":
                                            "ecs.aliyuncs.com", "Code": code,
                                            "Message": message}),
                     {"Content-Type": "text/xml"})

    def _api(self, req: Request) -> Reply:
        params = {k: v[0] for k, v in req.query.items()}
        if not self._signed(dict(params)):
            return self._error(400, "SignatureDoesNotMatch", "The request signature does "
                                    "not conform to Aliyun standards.")
        action = params.get("Action", "")
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            return self._error(400, "InvalidAction.NotFound", f"unknown action {action}")
        reply = handler(params)
        if isinstance(reply, Reply):
            return reply
        body = {"RequestId": uuid.uuid4().hex, **reply}
        return Reply(200, _xml(f"{action}Response", body), {"Content-Type": "text/xml"})

    def _tags(self, params: dict[str, str]) -> dict[str, str]:
        tags = {}
        for n in itertools.count(1):
            if f"Tag.{n}.Key" not in params:
                return tags
            tags[params[f"Tag.{n}.Key"]] = params.get(f"Tag.{n}.Value", "")

    def _CreateInstance(self, p: dict[str, str]) -> Any:
        self.created.append(p)
        for inst in self.instances.values():
            if inst.get("ClientToken") == p.get("ClientToken"):
                return {"InstanceId": inst["InstanceId"]}  # idempotent: the same instance
        if p["ImageId"] not in self.images:
            return self._error(404, "InvalidImageId.NotFound",
                               "The specified ImageId does not exist.")
        iid = f"i-{uuid.uuid4().hex[:20]}"
        self.instances[iid] = {
            "InstanceId": iid, "InstanceName": p["InstanceName"], "Status": "Stopped",
            "CreationTime": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "ClientToken": p.get("ClientToken"), "tags": self._tags(p), "reads": 0,
            "UserData": base64.b64decode(p.get("UserData", "")).decode(), "public": "",
            "InstanceType": p["InstanceType"], "SecurityGroupId": p["SecurityGroupId"],
            "ImageId": p["ImageId"]}
        if self.fail_after_create:
            return self._error(500, "InternalError", self.fail_after_create)
        return {"InstanceId": iid}

    def _find(self, p: dict[str, str]) -> dict[str, Any] | Reply:
        inst = self.instances.get(p.get("InstanceId", ""))
        if inst is None:
            return self._error(404, "InvalidInstanceId.NotFound",
                               "The specified InstanceId does not exist.")
        return inst

    def _AllocatePublicIpAddress(self, p: dict[str, str]) -> Any:
        inst = self._find(p)
        if isinstance(inst, Reply):
            return inst
        if not inst["public"]:  # a rehearsal's guest will have its port 22 there
            inst["public"] = loopback_address() if self.fleet is not None else "127.0.0.1"
        return {"IpAddress": inst["public"]}

    def _StartInstance(self, p: dict[str, str]) -> Any:
        inst = self._find(p)
        if isinstance(inst, Reply):
            return inst
        if inst["Status"] != "Stopped":
            return self._error(403, "IncorrectInstanceStatus",
                               "The current status of the resource does not support this "
                               "operation.")
        inst["Status"] = "Starting"
        if self.fleet is not None:
            self._boot(inst)
        return {}

    def _boot(self, inst: dict[str, Any]) -> None:
        def running(guest: Guest) -> None:
            with self.lock:
                inst["Status"] = "Running"

        def ended(why: str) -> None:
            with self.lock:
                inst["Status"] = "Stopped"
                inst["why"] = why

        assert self.fleet is not None
        user_data = inst["UserData"].encode() or None
        self.fleet.launch(inst["InstanceId"], self.disks[inst["ImageId"]], "aliyun", user_data,
                          [], running, ended, hostname=inst["InstanceName"],
                          address=inst["public"])

    def _GetInstanceConsoleOutput(self, p: dict[str, str]) -> Any:
        inst = self._find(p)
        if isinstance(inst, Reply):
            return inst
        console = CONSOLE
        if self.fleet is not None:
            console = self.fleet.console(inst["InstanceId"]) or ""
        return {"InstanceId": inst["InstanceId"],
                "ConsoleOutput": base64.b64encode(console.encode()).decode()}

    def _DeleteInstance(self, p: dict[str, str]) -> Any:
        inst = self._find(p)
        if isinstance(inst, Reply):
            return inst
        if inst["Status"] == "Running" and p.get("Force") != "true":
            return self._error(403, "IncorrectInstanceStatus",
                               "The current status of the resource does not support this "
                               "operation.")
        del self.instances[inst["InstanceId"]]
        if self.fleet is not None:
            self.fleet.remove(inst["InstanceId"])
            if inst["public"]:
                release_address(inst["public"])
        return {}

    def _DescribeInstances(self, p: dict[str, str]) -> Any:
        ids = json.loads(p["InstanceIds"]) if "InstanceIds" in p else None
        tags = self._tags(p)
        found = [i for i in self.instances.values()
                 if (ids is None or i["InstanceId"] in ids)
                 and p.get("InstanceName") in (None, i["InstanceName"])
                 and all(i["tags"].get(k) == v for k, v in tags.items())]
        size, page = int(p.get("PageSize", "10")), int(p.get("PageNumber", "1"))
        shown = []
        for inst in found[(page - 1) * size:page * size]:
            inst["reads"] += 1
            if inst["Status"] == "Starting" and inst["reads"] >= 2 and not self.hold_starting \
                    and self.fleet is None:
                inst["Status"] = "Running"
            shown.append({
                "InstanceId": inst["InstanceId"], "InstanceName": inst["InstanceName"],
                "Status": inst["Status"], "CreationTime": inst["CreationTime"],
                "PublicIpAddress": {"IpAddress": inst.get("public", "")},
                "Tags": [{"TagKey": k, "TagValue": v} for k, v in inst["tags"].items()]})
        return {"TotalCount": len(found), "PageNumber": page, "PageSize": size,
                "Instances": shown}

    def live(self) -> dict[str, dict[str, Any]]:
        return self.instances

    def leftovers(self) -> list[str]:
        """What a run made that is still here (a rehearsal starts with nothing)."""
        left = [f"instance {i} ({inst['InstanceName']}, {inst['Status']})"
                for i, inst in self.instances.items()]
        return left + (self.fleet.leftovers() if self.fleet is not None else [])


def environment(standin: AliyunStandIn) -> dict[str, str]:
    """How a user points libcloud at it: an AccessKey pair, the region, an endpoint, a
    security group."""
    return {"ALIBABA_CLOUD_ACCESS_KEY_ID": KEY_ID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": KEY_SECRET,
            "ALIBABA_CLOUD_REGION_ID": REGION, "ROSLAB_ALIYUN_ENDPOINT": standin.url,
            "ROSLAB_ALIYUN_SECURITY_GROUP": SECURITY_GROUP}


def serve(tmp_path: Path, env: Any) -> AliyunStandIn:
    """Start one (API sequences only) and point libcloud at it (`env`: pytest's
    monkeypatch)."""
    standin = AliyunStandIn().start()
    return pointed_at(standin, environment(standin), env)


@contextlib.contextmanager
def rehearsal(offered: dict[str, Path] | None = None) -> Iterator[Rehearsal]:
    """The stand-in on 127.0.0.1 whose instances boot, offering the public RancherOS image
    (and `offered`: more images by id and disk); on exit every guest is powered off, the
    server stopped and its folder removed."""
    with scratch("aliyun") as (fleet, _folder):
        standin = AliyunStandIn(fleet, offering({PUBLIC_IMAGE: REFERENCE}, offered)).start()
        with serving(standin, fleet, "the Alibaba Cloud ECS API stand-in", "instances",
                     environment(standin), "aliyun") as rehearsal:
            yield rehearsal
