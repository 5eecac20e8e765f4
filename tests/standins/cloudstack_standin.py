"""Stand-in for the Apache CloudStack API (`/client/api?command=...&response=json`).

Shapes follow CloudStack's published API reference: every answer is wrapped in
`<command>response`; deployVirtualMachine, destroyVirtualMachine and createTags are
asynchronous (a `jobid`, then queryAsyncJobResult with jobstatus 0 pending, 1 done,
2 failed); VMs carry `state`, `nic[].ipaddress`, `created` and `tags[]`. Requests must be
signed as CloudStack documents (parameters sorted by lowercased name, URL-encoded, the
whole string lowercased, HMAC-SHA1 with the secret key, base64).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from drivers.rehearsal.base import Reply, Request, StandIn

API_KEY, SECRET = "standin-api-key", "standin-secret-key"


def _created(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(time.time() if t is None else t))


class CloudStackStandIn(StandIn):
    def __init__(self) -> None:
        super().__init__()
        self.vms: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.deploys: list[dict[str, str]] = []  # the deployVirtualMachine parameters
        self.hold_starting = False
        self.deploy_error: str | None = None  # make the VM, then answer with this error
        self._ids = itertools.count(1)
        self.templates = [{"id": "t-1", "name": "rancheros-v1.5.8", "hypervisor": "KVM",
                           "format": "QCOW2", "ostypename": "Other Linux (64-bit)",
                           "displaytext": "RancherOS", "zoneid": "z-1"}]
        self.route("GET", r"/client/api", self._api)
        self.route("POST", r"/client/api", self._api)

    def seed_vm(self, name: str, created: str, **tags: str) -> str:
        vid = str(uuid.uuid4())
        self.vms[vid] = self._vm(vid, name, "Running", created, tags)
        return vid

    def _vm(self, vid: str, name: str, state: str, created: str,
            tags: dict[str, str]) -> dict[str, Any]:
        return {"id": vid, "name": name, "displayname": name, "state": state,
                "created": created, "zoneid": "z-1", "zonename": "zone-1",
                "templateid": "t-1", "serviceofferingid": "so-1", "haenable": False,
                "nic": [{"id": "n-1", "ipaddress": "198.51.100.20", "isdefault": True}],
                "tags": [{"key": k, "value": v, "resourcetype": "UserVm", "resourceid": vid}
                         for k, v in tags.items()]}

    # signing ---------------------------------------------------------------------------

    def _signed(self, params: dict[str, str]) -> bool:
        given = params.pop("signature", "")
        pairs = sorted((k.lower(), v) for k, v in params.items())
        text = "&".join(f"{quote(k, safe='[]')}={quote(v, safe='[]*')}" for k, v in pairs)
        text = text.lower().replace("+", "%20")
        digest = hmac.new(SECRET.encode(), text.encode(), hashlib.sha1).digest()
        return params.get("apikey", params.get("apiKey")) == API_KEY and \
            hmac.compare_digest(base64.b64encode(digest).decode(), given)

    def _api(self, req: Request) -> Reply:
        params = {k: v[0] for k, v in req.query.items()}
        command = params.get("command", "")
        if not self._signed(dict(params)):
            return Reply(401, {f"{command.lower()}response": {
                "errorcode": 401, "errortext": "unable to verify user credentials"}})
        handler = getattr(self, f"_{command}", None)
        if handler is None:
            return Reply(431, {f"{command.lower()}response": {
                "errorcode": 431, "errortext": f"unknown command {command}"}})
        body = handler(params)
        if "error" in body:
            return Reply(body.pop("error"), {f"{command.lower()}response": body})
        return Reply(200, {f"{command.lower()}response": body})

    def _job(self, result: dict[str, Any], pending: int = 0) -> str:
        jid = str(uuid.uuid4())
        self.jobs[jid] = {"result": result, "pending": pending}
        return jid

    # commands ------------------------------------------------------------------------------

    def _listZones(self, p: dict[str, str]) -> dict[str, Any]:
        return {"count": 1, "zone": [{"id": "z-1", "name": "zone-1", "networktype": "Basic"}]}

    def _listServiceOfferings(self, p: dict[str, str]) -> dict[str, Any]:
        return {"count": 1, "serviceoffering": [{"id": "so-1", "name": "Small Instance",
                                                 "cpunumber": 1, "memory": 2048}]}

    def _listTemplates(self, p: dict[str, str]) -> dict[str, Any]:
        return {"count": len(self.templates), "template": self.templates}

    def _deployVirtualMachine(self, p: dict[str, str]) -> dict[str, Any]:
        self.deploys.append(p)
        if p.get("templateid") not in {t["id"] for t in self.templates}:
            return {"error": 431, "errorcode": 431, "errortext": "Unable to use template"}
        vid = str(uuid.uuid4())
        state = "Starting" if p.get("startvm", "true").lower() == "true" else "Stopped"
        self.vms[vid] = self._vm(vid, p["name"], state, _created(), {})
        self.vms[vid]["userdata"] = base64.b64decode(p.get("userdata", "")).decode()
        self.vms[vid]["reads"] = 0
        if self.deploy_error:
            return {"error": 530, "errorcode": 530, "errortext": self.deploy_error}
        return {"id": vid, "jobid": self._job({"virtualmachine": self._view(vid)}, pending=1)}

    def _view(self, vid: str) -> dict[str, Any]:
        return {k: v for k, v in self.vms[vid].items() if k not in ("userdata", "reads")}

    def _queryAsyncJobResult(self, p: dict[str, str]) -> dict[str, Any]:
        job = self.jobs.get(p["jobid"])
        if job is None:
            return {"error": 431, "errorcode": 431, "errortext": "no such job"}
        if job["pending"] > 0:
            job["pending"] -= 1
            return {"jobid": p["jobid"], "jobstatus": 0}
        return {"jobid": p["jobid"], "jobstatus": 1, "jobresult": job["result"]}

    def _listVirtualMachines(self, p: dict[str, str]) -> dict[str, Any]:
        found = [vid for vid in self.vms if p.get("id") in (None, vid)]
        for vid in found:
            vm = self.vms[vid]
            vm["reads"] = vm.get("reads", 0) + 1
            if vm["state"] == "Starting" and vm["reads"] >= 2 and not self.hold_starting:
                vm["state"] = "Running"
        return {"count": len(found), "virtualmachine": [self._view(v) for v in found]} \
            if found else {}

    def _listPublicIpAddresses(self, p: dict[str, str]) -> dict[str, Any]:
        return {}

    def _listPortForwardingRules(self, p: dict[str, str]) -> dict[str, Any]:
        return {}

    def _listIpForwardingRules(self, p: dict[str, str]) -> dict[str, Any]:
        return {}

    def _createTags(self, p: dict[str, str]) -> dict[str, Any]:
        for vid in p["resourceids"].split(","):
            if vid not in self.vms:
                return {"error": 431, "errorcode": 431, "errortext": f"no resource {vid}"}
            for i in itertools.count():
                if f"tags[{i}].key" not in p:
                    break
                self.vms[vid]["tags"].append({"key": p[f"tags[{i}].key"],
                                              "value": p[f"tags[{i}].value"],
                                              "resourcetype": "UserVm", "resourceid": vid})
        return {"jobid": self._job({"success": True})}

    def _destroyVirtualMachine(self, p: dict[str, str]) -> dict[str, Any]:
        vm = self.vms.get(p["id"])
        if vm is None:
            return {"error": 431, "errorcode": 431, "errortext": "no such VM"}
        if p.get("expunge", "false").lower() == "true":
            del self.vms[p["id"]]
        else:
            vm["state"] = "Destroyed"
        return {"jobid": self._job({"virtualmachine": {"id": p["id"], "state": "Destroyed"}})}

    def live(self) -> dict[str, dict[str, Any]]:
        """VMs not destroyed (a destroyed VM waits for the expunge delay, costing nothing)."""
        return {k: v for k, v in self.vms.items() if v["state"] != "Destroyed"}


def serve(tmp_path: Path, env: Any) -> CloudStackStandIn:
    """Start one and point libcloud at it as a user would: the API URL and the keys."""
    standin = CloudStackStandIn().start()
    env.setenv("CLOUDSTACK_ENDPOINT", f"{standin.url}/client/api")
    env.setenv("CLOUDSTACK_KEY", API_KEY)
    env.setenv("CLOUDSTACK_SECRET", SECRET)
    return standin
