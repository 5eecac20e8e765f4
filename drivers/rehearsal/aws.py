"""The AWS rehearsal: moto's EC2 and EBS server, extended so that its instances boot.

moto (PLATFORM-NOTES: AWS API) keeps the blocks PutSnapshotBlock uploads but only records
an instance: it is `running` at once, never boots, has a random public address and a fixed
sample as console output, and RegisterImage forgets the block device mappings it is given.
This stand-in is moto's server in this process with that filled in, by wrapping five of
moto's methods while the rehearsal runs (restored after):

- RegisterImage keeps the root device's snapshot (and the architecture) it was given;
- RunInstances leaves each instance `pending` and boots it: the AMI's snapshot blocks
  become a raw disk, the QEMU driver boots it with the `ec2` metadata service (the
  instance's user-data and its key pair's public key), and once QEMU runs the instance is
  `running` with its public address, a loopback address whose port 22 is the guest's;
  a disk that cannot start makes the instance `terminated`, the reason naming why;
- GetConsoleOutput returns the guest's serial console;
- StopInstances presses the guest's power button; TerminateInstances powers it off;
  a guest that powers itself off ends as its shutdown behaviour says.

The AWS driver is the one that talks to AWS, unchanged: boto3 reaches this stand-in by its
own settings (AWS_ENDPOINT_URL and credentials in the environment).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from drivers.rehearsal import Fleet, Guest, run_options
from lab.driver import Rehearsal
from lab.errors import LabError

REGION = "us-east-1"  # when the run names none
SHUTDOWN_WAIT = 60.0  # StopInstances: the guest's own shutdown, then power off


class Ec2StandIn:
    """The instances moto records, each with a real guest (the rehearsal's `Fleet`)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.fleet = Fleet(workdir / "guests")
        self.backends: list[Any] = []  # the EC2 backends (regions) instances ran in
        self.lock = threading.Lock()

    # -- RegisterImage ---------------------------------------------------------------------

    @staticmethod
    def registered(response: Any, image: Any) -> None:
        """Keep what moto drops: the root device's snapshot and the architecture."""
        root = response._get_param("RootDeviceName")
        for mapping in response._get_param("BlockDeviceMappings", []) or []:
            if mapping.get("DeviceName") == root or len(
                    response._get_param("BlockDeviceMappings")) == 1:
                image.rehearsal_snapshot = (mapping.get("Ebs") or {}).get("SnapshotId")
        if root:
            image.root_device_name = root
        if response._get_param("Architecture"):
            image.architecture = response._get_param("Architecture")

    # -- RunInstances ----------------------------------------------------------------------

    def launched(self, backend: Any, reservation: Any) -> None:
        with self.lock:
            if backend not in self.backends:
                self.backends.append(backend)
        for instance in reservation.instances:
            _set_state(instance, "pending", 0)
            for nic in instance.nics.values():
                nic.public_ip = None  # it has none until it runs
            self._boot(backend, instance)

    def _boot(self, backend: Any, instance: Any) -> None:
        ran = threading.Event()

        def running(guest: Guest) -> None:
            for nic in instance.nics.values():
                nic.public_ip = guest.address
                break
            _set_state(instance, "running", 16)
            ran.set()

        def ended(why: str) -> None:
            (self.workdir / f"{instance.id}.img").unlink(missing_ok=True)
            if not ran.is_set():
                _end(instance, "terminated", "Server.InternalError",
                     f"Server.InternalError: {why}")
                return
            # a guest that ends by itself (powered off, crashed) ends as its instance says
            _end(instance, "terminated" if instance.instance_initiated_shutdown_behavior ==
                 "terminate" else "stopped", "Client.InstanceInitiatedShutdown",
                 f"Client.InstanceInitiatedShutdown: {why}")

        self.fleet.launch(instance.id, lambda: self._disk(backend, instance), "ec2",
                          _user_data(instance), _public_keys(backend, instance), running,
                          ended)

    def _disk(self, backend: Any, instance: Any) -> Path:
        """The AMI's root snapshot as a raw disk: the blocks uploaded, zeros elsewhere."""
        from moto.ebs.models import ebs_backends

        ami = backend.amis.get(instance.image_id)
        snapshot_id = getattr(ami, "rehearsal_snapshot", None) if ami else None
        if snapshot_id is None:
            raise LabError(f"AMI {instance.image_id} has no disk this stand-in holds (only "
                           "AMIs registered from a snapshot uploaded with the EBS direct "
                           "APIs boot here)")
        snapshot = ebs_backends[backend.account_id][backend.region_name].snapshots.get(
            snapshot_id)
        if snapshot is None or not snapshot.blocks:
            raise LabError(f"snapshot {snapshot_id} of {instance.image_id} holds no blocks")
        path = self.workdir / f"{instance.id}.img"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as disk:
            disk.truncate(int(snapshot.volume_size) * 2**30)
            for index, block in sorted(snapshot.blocks.items()):
                # EBS blocks are all one size (the driver pads the last): the block's own
                # length places it, so the stand-in need not import its driver
                disk.seek(int(index) * len(block.block_data))
                disk.write(block.block_data)
        return path

    # -- console, stop, terminate ----------------------------------------------------------

    def console(self, instance_id: str) -> str | None:
        """The guest's serial console; kept after it ends, as EC2 keeps the last output."""
        return self.fleet.console(instance_id)

    def stopping(self, instance: Any, stopped: Callable[[], Any]) -> bool:
        """StopInstances: `stopping` at once, then the ACPI power button as EC2 presses it,
        a hard stop after SHUTDOWN_WAIT, and `stopped()`. False: no guest of ours."""
        guest = self.fleet.guests.get(instance.id)
        if guest is None:
            return False
        guest.stopping = True
        _set_state(instance, "stopping", 64)

        def shut_down() -> None:
            guest.power_button()
            deadline = time.monotonic() + SHUTDOWN_WAIT
            while guest.alive() and time.monotonic() < deadline:
                time.sleep(0.5)
            self._remove(instance.id)
            stopped()

        threading.Thread(target=shut_down, daemon=True, name=f"stop-{instance.id}").start()
        return True

    def terminating(self, instance: Any) -> None:
        self._remove(instance.id)

    def _remove(self, instance_id: str) -> None:
        self.fleet.remove(instance_id)
        (self.workdir / f"{instance_id}.img").unlink(missing_ok=True)

    def close(self) -> None:
        self.fleet.close()

    # -- what is left ----------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Everything a run made that is still there: instances not terminated, key pairs,
        security groups but the default, AMIs and snapshots of this account (not the ones
        moto makes for itself), guests, and ports still listening on guests' addresses."""
        from moto.ebs.models import ebs_backends

        left: list[str] = []
        for backend in self.backends:
            where = backend.region_name
            left += [f"{where} instance {i.id} ({i.state})" for i in backend.all_instances()
                     if i.state != "terminated"]
            left += [f"{where} key pair {k}" for k in backend.key_pairs]
            left += [f"{where} security group {g.id} ({g.name})"
                     for groups in backend.groups.values() for g in groups.values()
                     if g.name != "default"]
            left += [f"{where} image {a.id}" for a in backend.amis.values()
                     if a.owner_id == backend.account_id]
            left += [f"{where} snapshot {s.id}" for s in backend.snapshots.values()
                     if s.owner_id == backend.account_id and not s.from_ami]
            ebs = ebs_backends[backend.account_id][where]
            left += [f"{where} EBS snapshot {s}" for s in ebs.snapshots
                     if s in backend.snapshots]
        return left + self.fleet.leftovers()


def _set_state(instance: Any, name: str, code: int) -> None:
    instance._state.name, instance._state.code = name, code


def _end(instance: Any, state: str, code: str, message: str) -> None:
    from moto.ec2.models.instances import StateReason

    _set_state(instance, state, {"terminated": 48, "stopped": 80}[state])
    instance.state_reason = StateReason(message, code)
    for nic in instance.nics.values():
        nic.public_ip = None


def _user_data(instance: Any) -> bytes | None:
    """RunInstances' UserData as the instance gets it (moto keeps it base64-encoded)."""
    data = instance.user_data
    if isinstance(data, list):
        data = data[0] if data else None
    if data is None:
        return None
    if hasattr(data, "as_bytes"):  # moto's Base64EncodedString, as the API carries it
        return base64.b64decode(data.as_bytes())
    return data.encode() if isinstance(data, str) else bytes(data)


def _public_keys(backend: Any, instance: Any) -> list[str]:
    key = backend.key_pairs.get(instance.key_name) if instance.key_name else None
    if key is None:
        return []
    material = key.material_public
    return [material.decode() if isinstance(material, bytes) else str(material)]


@contextlib.contextmanager
def _wrapped(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
             ) -> Iterator[None]:
    original = owner.__dict__[name]
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


_active: list[Ec2StandIn] = []  # moto's server is process-wide: one rehearsal at a time


@contextlib.contextmanager
def rehearsal() -> Iterator[Rehearsal]:
    """moto's server on 127.0.0.1 with instances that boot; on exit every guest is
    stopped, the server is stopped and the stand-in's scratch folder removed."""
    from moto.ec2.models.instances import Instance, InstanceBackend
    from moto.ec2.responses.amis import AmisResponse
    from moto.ec2.responses.general import General
    from moto.ec2.utils import Base64EncodedString
    from moto.server import ThreadedMotoServer

    if _active:
        raise LabError("an AWS rehearsal already runs in this process")
    standin = Ec2StandIn(Path(tempfile.mkdtemp(prefix="roslab-aws-rehearsal-")))
    _active.append(standin)

    def register_image(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any) -> Any:
            result = original(self)
            standin.registered(self, self.ec2_backend.amis[result.result["ImageId"]])
            return result
        return wrapper

    def run_instances(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            reservation = original(self, *args, **kwargs)
            standin.launched(self, reservation)
            return reservation
        return wrapper

    def console_output(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any) -> Any:
            text = standin.console(self._get_param("InstanceId"))
            if text is None:
                return original(self)
            result = original(self)
            body = getattr(result, "result", None)
            if isinstance(body, dict):
                body["Output"] = Base64EncodedString.from_raw_string(text)
            return result
        return wrapper

    def stop(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any) -> Any:
            previous = copy.copy(self._state)
            if standin.stopping(self, lambda: original(self)):
                return previous
            return original(self)
        return wrapper

    def terminate(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any) -> Any:
            standin.terminating(self)
            return original(self)
        return wrapper

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # werkzeug logs every request (hundreds of PutSnapshotBlock a machine) to the run's output
    quiet = logging.getLogger("werkzeug")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with contextlib.ExitStack() as patches:
            patches.enter_context(_wrapped(AmisResponse, "register_image", register_image))
            patches.enter_context(_wrapped(InstanceBackend, "run_instances", run_instances))
            patches.enter_context(_wrapped(General, "get_console_output", console_output))
            patches.enter_context(_wrapped(Instance, "stop", stop))
            patches.enter_context(_wrapped(Instance, "terminate", terminate))
            server.start()
            host, port = server.get_host_and_port()
            scratch = standin.workdir
            env = {
                "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                "AWS_ACCESS_KEY_ID": "AKIAREHEARSAL" + secrets.token_hex(4).upper(),
                "AWS_SECRET_ACCESS_KEY": f"rehearsal-{secrets.token_hex(16)}",
                "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION") or REGION,
                "AWS_EC2_METADATA_DISABLED": "true",  # never ask a real IMDS for a role
                "AWS_CONFIG_FILE": str(scratch / "no-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-credentials"),
            }
            try:
                yield Rehearsal(
                    what=f"moto {_moto_version()} EC2/EBS server at {host}:{port}, its "
                         "instances booted under QEMU", env=env,
                    # the runner reaches the instances from loopback, not from the internet
                    options=run_options("ec2", ssh_from="127.0.0.0/8"),
                    leftovers=standin.leftovers, guests=lambda: list(standin.fleet.booted))
            finally:
                standin.close()
                server.stop()
    finally:
        quiet.setLevel(level)
        _active.remove(standin)
        shutil.rmtree(standin.workdir, ignore_errors=True)


def _moto_version() -> str:
    import moto

    return str(moto.__version__)
