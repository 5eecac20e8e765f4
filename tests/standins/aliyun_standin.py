"""Stand-in for Alibaba Cloud ECS's RPC API (version 2014-05-26, XML replies).

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
import hashlib
import hmac
import itertools
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from drivers.rehearsal.base import Reply, Request, StandIn

KEY_ID, KEY_SECRET, REGION = "LTAI-standin", "standin-secret", "cn-hangzhou"
CONSOLE = "Linux version 6.1.0 ...\nRancherOS v1.5.8 started\n"


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
    def __init__(self) -> None:
        super().__init__()
        self.instances: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, str]] = []  # CreateInstance parameters, as sent
        self.images = {"m-rancheros158"}
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
            "InstanceType": p["InstanceType"], "SecurityGroupId": p["SecurityGroupId"]}
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
        inst["public"] = "127.0.0.1"
        return {"IpAddress": inst["public"]}

    def _StartInstance(self, p: dict[str, str]) -> Any:
        inst = self._find(p)
        if isinstance(inst, Reply):
            return inst
        inst["Status"] = "Starting"
        return {}

    def _GetInstanceConsoleOutput(self, p: dict[str, str]) -> Any:
        inst = self._find(p)
        if isinstance(inst, Reply):
            return inst
        return {"InstanceId": inst["InstanceId"],
                "ConsoleOutput": base64.b64encode(CONSOLE.encode()).decode()}

    def _DeleteInstance(self, p: dict[str, str]) -> Any:
        inst = self._find(p)
        if isinstance(inst, Reply):
            return inst
        if inst["Status"] == "Running" and p.get("Force") != "true":
            return self._error(403, "IncorrectInstanceStatus",
                               "The current status of the resource does not support this "
                               "operation.")
        del self.instances[inst["InstanceId"]]
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
            if inst["Status"] == "Starting" and inst["reads"] >= 2 and not self.hold_starting:
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


def serve(tmp_path: Path, env: Any) -> AliyunStandIn:
    """Start one and point libcloud at it as a user would: an AccessKey pair, the region,
    an endpoint, a security group."""
    standin = AliyunStandIn().start()
    env.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
    env.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", KEY_SECRET)
    env.setenv("ALIBABA_CLOUD_REGION_ID", REGION)
    env.setenv("ROSLAB_ALIYUN_ENDPOINT", standin.url)
    env.setenv("ROSLAB_ALIYUN_SECURITY_GROUP", "sg-standin")
    return standin
