"""The CloudStack rehearsal: a stand-in for the Apache CloudStack API
(`/client/api?command=...&response=json`).

In a rehearsal (`CloudStackDriver.rehearsal()`, a `Fleet` given) the account sees one
executable template, "RancherOS" (the reference build's CloudStack disk, as an operator
registers a release's `rancheros-cloudstack.img`), and a VM deployed from it boots under
QEMU with the `cloudstack` metadata service (its userdata): the deploy job stays pending
and the VM `Starting` until QEMU runs, then it is `Running` with a loopback address whose
port 22 is the guest's as its NIC's address; a guest that cannot start makes the job fail
and the VM `Error`, one that ends by itself `Stopped`; destroy powers it off. CloudStack's
API has no console output, so neither has the stand-in. Without a fleet (the driver's
API-level tests) it only records: a VM is `Running` from its second read on.

Shapes follow CloudStack's published API reference: every answer is wrapped in
`<command>response`; deployVirtualMachine, destroyVirtualMachine and createTags are
asynchronous (a `jobid`, then queryAsyncJobResult with jobstatus 0 pending, 1 done,
2 failed); VMs carry `state`, `nic[].ipaddress`, `created` and `tags[]`. Requests must be
signed as CloudStack documents (parameters sorted by lowercased name, URL-encoded, the
whole string lowercased, HMAC-SHA1 with the secret key, base64).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from drivers.rehearsal import Fleet, Guest, offering, scratch, serving
from drivers.rehearsal.base import Reply, Request, StandIn, pointed_at
from lab.driver import Rehearsal

API_KEY, SECRET = "standin-api-key", "standin-secret-key"
# what the matrix's cell deploys (`cloudstack:RancherOS`): the template an operator
# registers from a release's rancheros-cloudstack.img
TEMPLATE = "RancherOS"
REFERENCE = "rancheros-cloudstack.img"


def _created(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(time.time() if t is None else t))


def _template(ident: str, name: str) -> dict[str, Any]:
    return {"id": ident, "name": name, "hypervisor": "KVM", "format": "QCOW2",
            "ostypename": "Other Linux (64-bit)", "displaytext": "RancherOS", "zoneid": "z-1",
            "isready": True, "templatetype": "USER"}


class CloudStackStandIn(StandIn):
    def __init__(self, fleet: Fleet | None = None,
                 offered: dict[str, Callable[[], Path]] | None = None) -> None:
        """`offered`: the templates by name, each with the disk it boots (a rehearsal's);
        without a fleet one template that only records."""
        super().__init__()
        self.fleet = fleet
        self.disks: dict[str, Callable[[], Path]] = {}  # template id -> its disk
        self.vms: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.deploys: list[dict[str, str]] = []  # the deployVirtualMachine parameters
        self.hold_starting = False
        self.deploy_error: str | None = None  # make the VM, then answer with this error
        self._ids = itertools.count(1)
        self.templates = [_template("t-1", "rancheros-v1.5.8")]
        if offered is not None:
            self.templates = [_template(f"t-{n}", name) for n, name in enumerate(offered, 1)]
            self.disks = {f"t-{n}": disk for n, disk in enumerate(offered.values(), 1)}
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

    def _job(self, result: dict[str, Any] | Callable[[], dict[str, Any]], pending: int = 0,
             until: Callable[[], str | None] | None = None) -> str:
        """An async job: done after `pending` reads, or when `until()` says (None: done,
        "": pending, else failed with that text)."""
        jid = str(uuid.uuid4())
        self.jobs[jid] = {"result": result, "pending": pending, "until": until}
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
        self.vms[vid]["templateid"] = p["templateid"]
        if self.deploy_error:
            return {"error": 530, "errorcode": 530, "errortext": self.deploy_error}
        if self.fleet is not None and state == "Starting":
            self._boot(vid, p)
            # the job ends once the VM runs (or could not start), as CloudStack's does
            return {"id": vid, "jobid": self._job(
                lambda: {"virtualmachine": self._view(vid)}, until=lambda: self._settled(vid))}
        return {"id": vid, "jobid": self._job({"virtualmachine": self._view(vid)}, pending=1)}

    def _boot(self, vid: str, p: dict[str, str]) -> None:
        vm = self.vms[vid]

        def running(guest: Guest) -> None:
            with self.lock:
                vm["state"] = "Running"
                vm["nic"][0]["ipaddress"] = guest.address

        def ended(why: str) -> None:
            with self.lock:  # never running: the start failed; else it powered off
                vm["state"] = "Stopped" if vm["state"] == "Running" else "Error"
                vm["why"] = why

        assert self.fleet is not None
        self.fleet.launch(vid, self.disks[p["templateid"]], "cloudstack",
                          vm["userdata"].encode() or None, [], running, ended,
                          hostname=p["name"])

    def _settled(self, vid: str) -> str | None:
        """Why the deploy job failed ("" while it is pending, None once the VM runs)."""
        vm = self.vms.get(vid)
        if vm is None:
            return "the VM was destroyed while it started"
        if vm["state"] == "Starting":
            return ""
        return vm.get("why", "the VM could not start") if vm["state"] == "Error" else None

    def _view(self, vid: str) -> dict[str, Any]:
        return {k: v for k, v in self.vms[vid].items() if k not in ("userdata", "reads", "why")}

    def _queryAsyncJobResult(self, p: dict[str, str]) -> dict[str, Any]:
        job = self.jobs.get(p["jobid"])
        if job is None:
            return {"error": 431, "errorcode": 431, "errortext": "no such job"}
        if job["until"] is not None:
            failed = job["until"]()
            if failed == "":
                return {"jobid": p["jobid"], "jobstatus": 0}
            if failed is not None:
                return {"jobid": p["jobid"], "jobstatus": 2, "jobresultcode": 530,
                        "jobresult": {"errorcode": 530, "errortext": failed}}
        elif job["pending"] > 0:
            job["pending"] -= 1
            return {"jobid": p["jobid"], "jobstatus": 0}
        result = job["result"]() if callable(job["result"]) else job["result"]
        return {"jobid": p["jobid"], "jobstatus": 1, "jobresult": result}

    def _listVirtualMachines(self, p: dict[str, str]) -> dict[str, Any]:
        found = [vid for vid in self.vms if p.get("id") in (None, vid)]
        for vid in found:
            vm = self.vms[vid]
            vm["reads"] = vm.get("reads", 0) + 1
            if vm["state"] == "Starting" and vm["reads"] >= 2 and not self.hold_starting \
                    and self.fleet is None:
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
        if self.fleet is not None:
            self.fleet.remove(p["id"])
        return {"jobid": self._job({"virtualmachine": {"id": p["id"], "state": "Destroyed"}})}

    def live(self) -> dict[str, dict[str, Any]]:
        """VMs not destroyed (a destroyed VM waits for the expunge delay, costing nothing)."""
        return {k: v for k, v in self.vms.items() if v["state"] != "Destroyed"}

    def leftovers(self) -> list[str]:
        """What a run made that is still here (a rehearsal starts with nothing)."""
        left = [f"VM {i} ({vm['name']}, {vm['state']})" for i, vm in self.live().items()]
        return left + (self.fleet.leftovers() if self.fleet is not None else [])


def environment(standin: CloudStackStandIn) -> dict[str, str]:
    """How a user points libcloud at it: the API URL and the account's keys."""
    return {"CLOUDSTACK_ENDPOINT": f"{standin.url}/client/api", "CLOUDSTACK_KEY": API_KEY,
            "CLOUDSTACK_SECRET": SECRET}


def serve(tmp_path: Path, env: Any) -> CloudStackStandIn:
    """Start one (API sequences only) and point libcloud at it (`env`: pytest's
    monkeypatch)."""
    standin = CloudStackStandIn().start()
    return pointed_at(standin, environment(standin), env)


@contextlib.contextmanager
def rehearsal(offered: dict[str, Path] | None = None) -> Iterator[Rehearsal]:
    """The stand-in on 127.0.0.1 whose VMs boot, offering the "RancherOS" template (and
    `offered`: more templates by name and disk); on exit every guest is powered off, the
    server stopped and its folder removed."""
    with scratch("cloudstack") as (fleet, _folder):
        standin = CloudStackStandIn(fleet, offering({TEMPLATE: REFERENCE}, offered)).start()
        with serving(standin, fleet, "the CloudStack API stand-in", "VMs",
                     environment(standin), "cloudstack") as rehearsal:
            yield rehearsal
