"""Amazon EC2 through boto3: the code that talks to real AWS (tested against moto's server).

A machine is one instance launched from an AMI (`--image ami-...`, `ami:REGION` from the
RancherOS release table in aws_amis.yml, or a raw disk uploaded and registered per run)
with the cloud-config as user-data, a key pair holding the lab's SSH key and a security
group that lets in SSH from the runner only. Every object carries the lab's ownership
marks as tags (lab/gc.py), so `roslab gc --platform aws` removes what a killed run left.

AWS has no serial console the lab can type into: its console output (GetConsoleOutput)
is read-only, so it is polled into console.log and the machine is driven over SSH.

Credentials and region come from boto3's own sources (environment, ~/.aws files,
profiles, instance roles); region and instance type may also come from options. Neither
credentials nor anything derived from them are printed, logged or written anywhere.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import itertools
import time
import urllib.request
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import yaml

from drivers.cloud import CloudDriver
from lab import gc
from lab.driver import Capabilities, MachineSpec, Rehearsal
from lab.errors import ConfigError, ImageError, LabError, PlatformError
from lab.images import CLOUD, DISK
from lab.redact import keep_secret

CATALOG = Path(__file__).with_name("aws_amis.yml")
INSTANCE_TYPES = {"x86_64": "t3.small", "aarch64": "t4g.small"}
AWS_ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}
ADDRESS_TIMEOUT = 300.0  # launch to running with an address; minutes when capacity is short
TERMINATE_TIMEOUT = 300.0  # a security group can go only once its instances are gone
EBS_BLOCK = 512 * 1024  # the EBS direct APIs' block size
CONSOLE_POLL = 10.0  # EC2 refreshes console output every few seconds at best
LIVE_STATES = ("pending", "running", "stopping", "stopped")
CREDENTIAL_SOURCES = (
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE with ~/.aws/credentials or "
    "~/.aws/config (SSO too), a web identity token, or an instance/container role"
)
# error codes that mean "your account may not have more of this right now"
QUOTA_CODES = ("InstanceLimitExceeded", "VcpuLimitExceeded", "InsufficientInstanceCapacity",
               "MaxSpotInstanceCountExceeded", "KeyPairLimitExceeded",
               "SecurityGroupLimitExceeded", "RequestLimitExceeded")


def make_session(region: str | None) -> boto3.session.Session:
    """A boto3 session from the standard sources (AWS_ENDPOINT_URL included); its secret key
    and session token are registered so that no evidence ever quotes them."""
    session = boto3.session.Session(region_name=region or None)
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        for value, what in ((frozen.secret_key, "AWS secret access key"),
                            (frozen.token, "AWS session token")):
            if value:
                keep_secret(value, what)
    return session


def load_catalog() -> dict[str, str]:
    """region -> AMI id of the RancherOS release (the seed's table)."""
    return dict(yaml.safe_load(CATALOG.read_text())["amis"])


def known_regions(session: boto3.session.Session) -> list[str]:
    return [r for partition in session.get_available_partitions()
            for r in session.get_available_regions("ec2", partition_name=partition)]


def explain(exc: Exception, doing: str) -> LabError:
    """A boto3 failure as a lab error naming the cause (never the credentials)."""
    if isinstance(exc, LabError):
        return exc
    if isinstance(exc, botocore.exceptions.NoCredentialsError |
                  botocore.exceptions.PartialCredentialsError):
        return ConfigError(f"no AWS credentials while trying to {doing}: boto3 looks for "
                           f"{CREDENTIAL_SOURCES}")
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code.startswith("InvalidAMIID"):
            return ImageError(f"could not {doing}: AWS does not know that AMI ({code}): {message}")
        if code in ("AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId",
                    "SignatureDoesNotMatch", "ExpiredToken", "OptInRequired"):
            return ConfigError(f"AWS refused the credentials while trying to {doing} "
                               f"({code}): {message}")
        if code in QUOTA_CODES:
            return PlatformError(f"AWS quota or capacity: could not {doing} ({code}): "
                                 f"{message}")
        return PlatformError(f"AWS could not {doing} ({code}): {message}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return PlatformError(f"could not {doing}: {exc}")
    return PlatformError(f"could not {doing}: {type(exc).__name__}: {exc}")


def _tags(marks: dict[str, str], name: str = "") -> list[dict[str, str]]:
    tags = [{"Key": k, "Value": v} for k, v in marks.items()]
    return tags + ([{"Key": "Name", "Value": name}] if name else [])


def _spec_tags(kinds: tuple[str, ...], tags: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": tags} for kind in kinds]


def _marks(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


class AwsDriver(CloudDriver):
    name = "aws"
    sdk_module = sdk_package = "boto3"
    delivers_instance_keys = True  # an imported key pair
    has_console_log = True  # GetConsoleOutput, read-only
    boot_wait = ADDRESS_TIMEOUT
    delete_wait = TERMINATE_TIMEOUT
    console_poll = CONSOLE_POLL
    running_states = ("running",)
    # gone before it was reachable (a guest that powers itself off is terminated)
    failed_states = ("shutting-down", "terminated", "stopping", "stopped")
    capabilities = Capabilities(
        arches=("x86_64", "aarch64"),
        console=False,
        ssh=True,
        power_button=True,  # StopInstances: an ACPI shutdown the guest handles itself
        snapshot=False,
        datasources=("ec2",),
        image_kinds=(CLOUD, DISK),
        why_not={
            "console": "AWS gives no serial console the lab can type into: its console "
                       "output (GetConsoleOutput) is read-only, polled into console.log",
            "snapshot": "EC2 cannot save and restore a running machine's memory",
        },
    )

    def __init__(self) -> None:
        super().__init__()
        self.region = ""
        self.ami = ""
        self.ebs: Any = None

    @property
    def ec2(self) -> Any:
        return self.api

    @classmethod
    def _connect(cls) -> Any:
        return make_session(None).client("ec2")  # prepare() makes the run's region's

    @classmethod
    def check_credentials(cls, options: dict[str, Any]) -> None:
        """A region and credentials, from the options or boto3's own sources."""
        session = make_session(options.get("region"))
        if not session.region_name:
            raise ConfigError("platform aws needs a region: --region, AWS_REGION or "
                              "AWS_DEFAULT_REGION (or region in ~/.aws/config)")
        if session.get_credentials() is None:
            raise ConfigError(f"platform aws: no AWS credentials (boto3 looks for "
                              f"{CREDENTIAL_SOURCES})")

    # -- checks before anything is made ---------------------------------------------------

    def prepare(self, spec: MachineSpec) -> None:
        """Check region, credentials and the AMI; nothing is created here."""
        self.spec = spec
        opts = spec.options
        wanted = opts.get("region") or ""
        text = str(spec.image.path)
        if spec.image.kind == CLOUD and text.startswith("ami:") and text[4:]:
            if wanted and wanted != text[4:]:
                raise ConfigError(f"--image {text} names region {text[4:]}, --region {wanted}")
            wanted = text[4:]
        self.check_credentials({"region": wanted})
        session = make_session(wanted)
        self.region = session.region_name or ""
        if self.region not in known_regions(session):
            raise ConfigError(f"unknown AWS region {self.region!r}: boto3 knows "
                              f"{', '.join(known_regions(session))}")
        self._api = session.client("ec2")
        self.ebs = session.client("ebs")
        if spec.image.kind == DISK:
            if spec.image.disk_format != "raw":
                raise ImageError(f"{spec.image.path}: AWS imports raw disks; convert it first "
                                 f"(qemu-img convert -O raw {spec.image.path.name} disk.img)")
            return  # uploaded as a snapshot and registered at start: prepare makes nothing
        self.ami = self._ami_id(text)
        try:
            images = self.ec2.describe_images(ImageIds=[self.ami])["Images"]
        except Exception as exc:
            raise explain(exc, f"look up {self.ami} in {self.region}") from exc
        if not images:
            raise ImageError(f"AWS does not know {self.ami} in {self.region}")
        arch = images[0].get("Architecture")
        if arch and arch != AWS_ARCH[spec.arch]:
            raise ImageError(f"{self.ami} is an {arch} AMI, but this run is for {spec.arch}")

    def _ami_id(self, text: str) -> str:
        if not text.startswith("ami:"):
            return text
        catalog = load_catalog()
        if self.region not in catalog:
            raise ImageError(f"the RancherOS AMI table ({CATALOG.name}) has no AMI for "
                             f"{self.region}; it has {', '.join(sorted(catalog))}")
        return catalog[self.region]

    # -- launch: each object in the ledger as soon as it exists ----------------------------

    def _launch(self, spec: MachineSpec) -> None:
        """The AMI (a raw disk uploaded and registered), key pair, security group and
        instance, each tagged with the run's marks."""
        marks = gc.owner_marks()
        name = f"roslab-{marks[gc.RUN_KEY]}-{spec.name}"
        tags = _tags(marks, name)
        if spec.image.kind == DISK:
            self.ami = self._import_disk(name, tags)
        key_name = self._make_key_pair(name, tags)
        group = self._make_security_group(name, tags)
        self.instance = self._create(
            "instance", name, lambda: self._run_instance(tags, group, key_name),
            lambda n: self._live_instances([{"Name": "tag:Name", "Values": [n]}]),
            self._delete_instance)

    def sdk_error(self, exc: Exception, doing: str) -> LabError:
        return explain(exc, f"{doing} ({self.ami or 'no AMI yet'} in {self.region})")

    def _import_disk(self, name: str, tags: list[dict[str, str]]) -> str:
        """Upload a raw disk as an EBS snapshot (EBS direct APIs) and register it as an AMI.

        The direct APIs need no S3 bucket and no vmimport service role (ImportSnapshot
        needs both); blocks of zeros are skipped, as EBS reads unwritten blocks as zeros.
        """
        assert self.spec is not None
        path = self.spec.image.path
        size = path.stat().st_size
        try:
            snapshot = self._create(
                "snapshot", name, lambda: self.ebs.start_snapshot(
                    VolumeSize=max(1, -(-size // 2**30)), Tags=tags, Timeout=60,
                    Description=f"roslab import of {path.name}")["SnapshotId"],
                lambda n: [s["SnapshotId"] for s in self.ec2.describe_snapshots(
                    OwnerIds=["self"], Filters=[{"Name": "tag:Name", "Values": [n]}])
                    ["Snapshots"]],
                lambda ident: self.ec2.delete_snapshot(SnapshotId=ident))
            written = 0
            with path.open("rb") as disk:
                for index in itertools.count():
                    block = disk.read(EBS_BLOCK)
                    if not block:
                        break
                    if block.count(0) == len(block):
                        continue
                    block = block.ljust(EBS_BLOCK, b"\0")
                    digest = base64.b64encode(hashlib.sha256(block).digest()).decode()
                    self.ebs.put_snapshot_block(
                        SnapshotId=snapshot, BlockIndex=index, BlockData=block,
                        DataLength=EBS_BLOCK, Checksum=digest, ChecksumAlgorithm="SHA256")
                    written += 1
            self.ebs.complete_snapshot(SnapshotId=snapshot, ChangedBlocksCount=written)
            self.ec2.get_waiter("snapshot_completed").wait(
                SnapshotIds=[snapshot], WaiterConfig={"Delay": 5, "MaxAttempts": 120})
            ami = self._create(
                "image", name, lambda: self.ec2.register_image(
                    Name=name, Description=f"roslab import of {path.name}",
                    Architecture=AWS_ARCH[self.spec.arch], RootDeviceName="/dev/xvda",
                    VirtualizationType="hvm", EnaSupport=True,
                    BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {
                        "SnapshotId": snapshot, "DeleteOnTermination": True}}],
                    TagSpecifications=_spec_tags(("image",), tags))["ImageId"],
                lambda n: [i["ImageId"] for i in self.ec2.describe_images(
                    Owners=["self"], Filters=[{"Name": "name", "Values": [n]}])["Images"]],
                lambda ident: self.ec2.deregister_image(ImageId=ident))
            # tagged again: not every EC2 implementation (moto) applies RegisterImage's tags
            self.ec2.create_tags(Resources=[ami], Tags=tags)
        except Exception as exc:
            raise explain(exc, f"import {path} as an AMI") from exc
        return str(ami)

    def _make_key_pair(self, name: str, tags: list[dict[str, str]]) -> str | None:
        assert self.spec is not None
        if not self.spec.ssh_keys:
            return None  # no key to hand over (an instance takes one key pair: the lab's)
        key = self.spec.ssh_keys[0].encode()
        return self._create(
            "key pair", name, lambda: self.ec2.import_key_pair(
                KeyName=name, PublicKeyMaterial=key,
                TagSpecifications=_spec_tags(("key-pair",), tags))["KeyName"],
            lambda n: [k["KeyName"] for k in self.ec2.describe_key_pairs(
                Filters=[{"Name": "key-name", "Values": [n]}])["KeyPairs"]],
            lambda ident: self.ec2.delete_key_pair(KeyName=ident))

    def _make_security_group(self, name: str, tags: list[dict[str, str]]) -> str:
        assert self.spec is not None
        opts = self.spec.options
        subnet = opts.get("subnet")
        vpc: str | None = None
        if subnet:
            vpc = self.ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"]
        source = opts.get("ssh_from") or self._ssh_source(vpc)
        args: dict[str, Any] = {"VpcId": vpc} if vpc else {}
        group = self._create(
            "security group", name, lambda: self.ec2.create_security_group(
                GroupName=name, Description="roslab: SSH from the test runner only",
                TagSpecifications=_spec_tags(("security-group",), tags), **args)["GroupId"],
            lambda n: [g["GroupId"] for g in self.ec2.describe_security_groups(
                Filters=[{"Name": "group-name", "Values": [n]}])["SecurityGroups"]],
            lambda ident: _delete_group(self.ec2, ident))
        self.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{"CidrIp": source, "Description": "roslab runner"}]}])
        return str(group)

    def _ssh_source(self, vpc: str | None) -> str:
        """Who may SSH in: the VPC for private addresses, else this runner's public address."""
        assert self.spec is not None
        if self.spec.options.get("address") == "private":
            if vpc is None:
                raise ConfigError("--address private needs a subnet (its VPC's CIDR is "
                                  "the SSH source) or ssh_from")
            return self.ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"]
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as reply:
            address = ipaddress.ip_address(reply.read().decode().strip())
        return f"{address}/32"

    def _run_instance(self, tags: list[dict[str, str]], group: str,
                      key_name: str | None) -> str:
        assert self.spec is not None
        spec, opts = self.spec, self.spec.options
        args: dict[str, Any] = {
            "ImageId": self.ami, "MinCount": 1, "MaxCount": 1,
            "InstanceType": opts.get("instance_type") or INSTANCE_TYPES[spec.arch],
            "SecurityGroupIds": [group],
            # a guest that powers itself off is gone for good: nothing idles at cost
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": _spec_tags(("instance", "volume"), tags),
        }
        if key_name:
            args["KeyName"] = key_name
        if opts.get("subnet"):
            args["SubnetId"] = opts["subnet"]
        if spec.cloud_config is not None:
            args["UserData"] = spec.cloud_config.text
        return str(self.ec2.run_instances(**args)["Instances"][0]["InstanceId"])

    def _live_instances(self, filters: list[dict[str, Any]]) -> list[str]:
        states = {"Name": "instance-state-name", "Values": list(LIVE_STATES)}
        return [i["InstanceId"]
                for r in self.ec2.describe_instances(Filters=[*filters, states])["Reservations"]
                for i in r["Instances"]]

    # -- observe ----------------------------------------------------------------------------

    def _describe(self) -> dict[str, Any] | None:
        """The instance as EC2 describes it; None once EC2 no longer knows it."""
        try:
            found = self.ec2.describe_instances(InstanceIds=[self.instance])["Reservations"]
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
                return None
            raise
        return found[0]["Instances"][0] if found else None

    def _status(self) -> str | None:
        instance = self._describe()
        return instance["State"]["Name"] if instance else None

    def _state_reason(self) -> str:
        return str(((self._describe() or {}).get("StateReason") or {}).get("Message") or "")

    def _address_now(self) -> str | None:
        assert self.spec is not None
        instance = self._describe() or {}
        private = self.spec.options.get("address") == "private"
        return instance.get("PrivateIpAddress" if private else "PublicIpAddress")

    def console_text(self) -> str | None:
        out = self.ec2.get_console_output(InstanceId=self.instance, Latest=True)
        return out.get("Output") or None

    def exit_reason(self) -> str:
        if self.instance is None:
            return "no instance was launched"
        with contextlib.suppress(Exception):
            instance = self._describe()
            if instance is None:
                return f"instance {self.instance} is gone"
            reason = self._state_reason() or "no reason given"
            return f"instance {self.instance} is {instance['State']['Name']}: {reason}"
        return f"instance {self.instance}: state unknown"

    def power_button(self) -> None:
        self.ec2.stop_instances(InstanceIds=[self.instance])

    def info(self) -> dict[str, Any]:
        return {"region": self.region, "ami": self.ami, "instance": self.instance or "",
                "address": self._address or ""}

    def attach_hint(self) -> str:
        return (f"ssh -p 22 rancher@{self._address}   (instance {self.instance} in "
                f"{self.region}; `roslab gc --platform aws --region {self.region}` "
                "removes it once expired)")

    # -- teardown -------------------------------------------------------------------------

    def _delete_instance(self, instance: str) -> None:
        """Terminate and wait until gone (its security group can go only then)."""
        try:
            self.ec2.terminate_instances(InstanceIds=[instance])
            self.ec2.get_waiter("instance_terminated").wait(
                InstanceIds=[instance],
                WaiterConfig={"Delay": 2, "MaxAttempts": max(1, int(self.delete_wait / 2))})
        except Exception as exc:
            raise explain(exc, f"terminate {instance}") from exc

    # -- rehearsal, artifacts, gc ------------------------------------------------------------

    @classmethod
    def rehearsal(cls) -> AbstractContextManager[Rehearsal]:
        """moto's EC2/EBS server whose instances boot under QEMU (drivers/rehearsal/aws.py)."""
        from drivers.rehearsal.aws import rehearsal

        return rehearsal()

    @classmethod
    def reference_artifact(cls, options: dict[str, Any]) -> str | None:
        """The reference build's AWS disk (`roslab image build --disks`): uploaded with the
        EBS direct APIs and registered as an AMI for the run."""
        return "rancheros-aws.img"

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[gc.Garbage]:
        """Instances, then key pairs, security groups, AMIs, snapshots: each only once
        nothing that uses it is left."""
        session = make_session(options.get("region"))
        if not session.region_name:
            raise ConfigError("roslab gc --platform aws needs a region: --region, "
                              "AWS_REGION or AWS_DEFAULT_REGION")
        try:
            return _Collector(session.client("ec2"), older_than, dry_run).run()
        except Exception as exc:
            raise explain(exc, f"collect garbage in {session.region_name}") from exc


def _delete_group(ec2: Any, group_id: str, timeout: float = TERMINATE_TIMEOUT) -> None:
    """A group stays in use while a terminated instance's interface detaches: retry."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "InvalidGroup.NotFound":
                return
            if code != "DependencyViolation" or time.monotonic() >= deadline:
                raise
            time.sleep(5)


class _Collector:
    OWNED = [{"Name": f"tag:{gc.OWNER_KEY}", "Values": [gc.OWNER]}]

    def __init__(self, ec2: Any, older_than: float | None, dry_run: bool) -> None:
        self.ec2, self.older_than, self.dry_run = ec2, older_than, dry_run
        self.found: list[gc.Garbage] = []
        self.runs: set[str] = set()  # runs something was collected from

    def take(self, kind: str, ident: str, item: dict[str, Any], created: Any) -> bool:
        marks = _marks(item)
        stamp = created.timestamp() if hasattr(created, "timestamp") else None
        why = gc.is_garbage(marks, stamp, self.older_than)
        if why is None and stamp is None and marks.get(gc.RUN_KEY) in self.runs:
            # no creation time (security groups): goes with the rest of its run
            why = "its run's other objects are collected"
        if why is None:
            return False
        self.found.append(gc.Garbage(kind, ident, marks.get(gc.RUN_KEY, "?"), why))
        self.runs.add(marks.get(gc.RUN_KEY, "?"))
        return not self.dry_run

    def run(self) -> list[gc.Garbage]:
        ec2 = self.ec2
        states = {"Name": "instance-state-name", "Values": list(LIVE_STATES)}
        doomed = [i["InstanceId"]
                  for r in ec2.describe_instances(Filters=[*self.OWNED, states])["Reservations"]
                  for i in r["Instances"]
                  if self.take("instance", i["InstanceId"], i, i.get("LaunchTime"))]
        if doomed:
            ec2.terminate_instances(InstanceIds=doomed)
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=doomed, WaiterConfig={"Delay": 5, "MaxAttempts": 60})
        for key in ec2.describe_key_pairs(Filters=self.OWNED)["KeyPairs"]:
            if self.take("key-pair", key["KeyName"], key, key.get("CreateTime")):
                ec2.delete_key_pair(KeyName=key["KeyName"])
        for group in ec2.describe_security_groups(Filters=self.OWNED)["SecurityGroups"]:
            if self.take("security-group", group["GroupId"], group, None):
                _delete_group(ec2, group["GroupId"])
        for image in ec2.describe_images(Owners=["self"], Filters=self.OWNED)["Images"]:
            created = _iso_time(image.get("CreationDate"))
            if self.take("image", image["ImageId"], image, created):
                ec2.deregister_image(ImageId=image["ImageId"])
        for snap in ec2.describe_snapshots(OwnerIds=["self"], Filters=self.OWNED)["Snapshots"]:
            if self.take("snapshot", snap["SnapshotId"], snap, snap.get("StartTime")):
                ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])
        return self.found


def _iso_time(text: str | None) -> Any:
    from datetime import datetime

    if not text:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    return None
