"""The AWS driver and `roslab gc --platform aws`, against moto's server: an emulator of the
EC2 API (ThreadedMotoServer on 127.0.0.1, started and stopped here).

What moto proves: the API sequence the lab sends (launch with user-data and tags, key pair,
security group, describe, console output, terminate, gc) and that nothing is left behind
on any exit path. What it cannot: that an image boots (its instances run at once and
never change, its console output is a fixed sample). Machines are put in a subnet of
127.0.0.0/16, so the addresses the lab tries to reach are loopback ones where nothing
answers: SSH waits are exercised without contacting anything outside this host.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.awsrequest
import pytest
import yaml

pytest.importorskip("moto", reason="moto[server] (a dev dependency) runs the EC2 emulator")
from moto.server import ThreadedMotoServer  # noqa: E402

import drivers.aws as aws  # noqa: E402
from commands.cli import main  # noqa: E402
from drivers.machines import make_machine  # noqa: E402
from lab import gc  # noqa: E402
from lab.errors import BootTimeout, ConfigError, ImageError, PlatformError  # noqa: E402
from lab.machine import Machine  # noqa: E402
from lab.ssh import KeyPair  # noqa: E402

REGION = "eu-west-1"
# fake credentials, distinctive enough to grep for in everything a run writes
# made per run: never a literal that looks like a real credential
KEY_ID = "AKIA" + secrets.token_hex(8).upper()
SECRET = f"roslab-secret-{secrets.token_hex(20)}"
TOKEN = f"roslab-session-token-{secrets.token_hex(16)}"
CLOUD_CONFIG = "#cloud-config\nhostname: roslab-aws\n"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """boto3 pointed at the emulator by its standard settings; state reset per test."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"))
    env = {
        "AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN,
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for a role
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(gc.RUN_ID_ENV, f"test-{os.getpid()}-{time.monotonic_ns()}")
    return env


@pytest.fixture
def ec2(aws_env: dict[str, str]) -> Any:
    return boto3.client("ec2", region_name=REGION)


@pytest.fixture
def place(ec2: Any) -> dict[str, str]:
    """A loopback VPC and subnet, and an AMI registered the way moto allows."""
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24")["Subnet"]["SubnetId"]
    volume = ec2.create_volume(Size=8, AvailabilityZone=f"{REGION}a")["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ami = ec2.register_image(
        Name="rancheros-test", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]
    return {"vpc": vpc, "subnet": subnet, "ami": ami}


def _options(place: dict[str, str], **extra: str) -> dict[str, str]:
    return {"region": REGION, "subnet": place["subnet"], "address": "private", **extra}


def _machine(tmp_path: Path, image: str, options: dict[str, str], **opts: Any) -> Machine:
    return make_machine("aws", image, "x86_64", CLOUD_CONFIG, "default", tmp_path, "tcg",
                        ssh_key=KeyPair.generate(tmp_path / "key"), platform_options=options,
                        **opts)


def _ours(ec2: Any) -> dict[str, list[str]]:
    """What carries the lab's owner tag and still exists (instances not terminated)."""
    owned = [{"Name": "tag:created-by", "Values": ["roslab"]}]
    live = {"Name": "instance-state-name", "Values": list(aws.LIVE_STATES)}
    return {
        "instances": [i["InstanceId"] for r in
                      ec2.describe_instances(Filters=[*owned, live])["Reservations"]
                      for i in r["Instances"]],
        "key-pairs": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=owned)["KeyPairs"]],
        "security-groups": [g["GroupId"] for g in
                            ec2.describe_security_groups(Filters=owned)["SecurityGroups"]],
    }


NOTHING: dict[str, list[str]] = {"instances": [], "key-pairs": [], "security-groups": []}


def test_launch_tags_user_data_console_and_terminate(tmp_path: Path, ec2: Any,
                                                     place: dict[str, str]) -> None:
    machine = _machine(tmp_path, place["ami"], _options(place, instance_type="t3.micro"))
    driver = machine.driver
    driver.prepare(machine.spec)
    driver.start()
    made = {c.kind: c.ident for c in driver.ledger.items}
    instance = ec2.describe_instances(InstanceIds=[driver.instance])["Reservations"][0][
        "Instances"][0]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["created-by"] == "roslab" and tags["roslab-run-id"] == gc.run_id()
    assert float(tags["roslab-expires"]) > time.time() + 4 * 3600
    assert instance["InstanceType"] == "t3.micro" and instance["ImageId"] == place["ami"]
    assert instance["KeyName"] == made["key pair"]
    user_data = ec2.describe_instance_attribute(InstanceId=driver.instance,
                                                Attribute="userData")["UserData"]["Value"]
    import base64

    sent = base64.b64decode(user_data).decode()
    assert sent == machine.spec.cloud_config.text and "hostname: roslab-aws" in sent
    # the lab's key reaches rancher as the instance's key pair (what the ec2 datasource
    # reads from public-keys/0/openssh-key), not by cloud-config
    (pair,) = ec2.describe_key_pairs(KeyNames=[made["key pair"]],
                                     IncludePublicKey=True)["KeyPairs"]
    assert pair["PublicKey"].split()[:2] == machine.ssh_key.public.split()[:2]
    assert "ssh_authorized_keys" not in yaml.safe_load(sent)
    assert driver.ssh_endpoint() == (instance["PrivateIpAddress"], 22)
    group = ec2.describe_security_groups(GroupIds=[made["security group"]])[
        "SecurityGroups"][0]
    assert [(p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [(22, ["127.0.0.0/16"])]  # the VPC only
    for thing in ({t["Key"]: t["Value"] for t in group["Tags"]},
                  _marks_of_key(ec2, made["key pair"])):
        assert thing["roslab-run-id"] == gc.run_id()
    assert "Linux version" in machine.console_log.read_text()  # moto's canned console
    assert driver.alive()
    assert _ours(ec2)["instances"] == [instance["InstanceId"]]
    machine.stop()
    assert _ours(ec2) == NOTHING
    state = ec2.describe_instances(InstanceIds=[instance["InstanceId"]])["Reservations"][0][
        "Instances"][0]["State"]["Name"]
    assert state == "terminated" and not machine.workdir.exists()


def _marks_of_key(ec2: Any, name: str | None) -> dict[str, str]:
    key = ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"][0]
    return {t["Key"]: t["Value"] for t in key["Tags"]}


def test_ssh_that_never_answers_fails_bounded_and_terminates(
        tmp_path: Path, ec2: Any, place: dict[str, str]) -> None:
    machine = _machine(tmp_path, place["ami"], _options(place))
    started = time.monotonic()
    with pytest.raises(BootTimeout) as failure:
        machine.boot(timeout=6)
    took = time.monotonic() - started
    address = machine.driver.ssh_endpoint()[0]
    assert address.startswith("127.0.0.") and took < 60
    message = str(failure.value)
    assert f"no SSH login as rancher at {address}:22 within 6 s" in message
    assert "Linux version" in message  # the last console lines AWS gave
    kept = machine.keep_artifacts(tmp_path / "evidence")
    machine.stop()
    assert "Linux version" in kept.read_text() and (kept.parent / "cloud-config.yml").exists()
    assert _ours(ec2) == NOTHING
    _no_secret_in([kept.parent], message)


def test_a_raw_disk_is_uploaded_registered_launched_and_removed(
        tmp_path: Path, ec2: Any, place: dict[str, str]) -> None:
    block = aws.EBS_BLOCK
    tail = os.urandom(block // 4)
    disk = tmp_path / "rancheros-test.img"
    disk.write_bytes(b"boot sector".ljust(block, b"\0") + bytes(block) + tail)
    machine = _machine(tmp_path, str(disk), _options(place))
    driver = machine.driver
    driver.prepare(machine.spec)
    assert _ours(ec2) == NOTHING and not driver.ledger.items  # prepare makes nothing
    driver.start()
    made = {c.kind: c.ident for c in driver.ledger.items}
    ami, snapshot = made["image"], made["snapshot"]
    instance = ec2.describe_instances(InstanceIds=[driver.instance])["Reservations"][0][
        "Instances"][0]
    assert instance["ImageId"] == ami
    for tags in (ec2.describe_images(ImageIds=[ami])["Images"][0]["Tags"],
                 ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["Tags"]):
        assert {t["Key"]: t["Value"] for t in tags}["roslab-run-id"] == gc.run_id()
    ebs = boto3.client("ebs", region_name=REGION)
    blocks = ebs.list_snapshot_blocks(SnapshotId=snapshot)["Blocks"]
    assert [b["BlockIndex"] for b in blocks] == [0, 2]  # the block of zeros is not sent
    got = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=2,
                                 BlockToken=blocks[1]["BlockToken"])["BlockData"].read()
    assert got == tail.ljust(block, b"\0")
    machine.stop()
    assert _ours(ec2) == NOTHING
    assert not ec2.describe_images(ImageIds=[], Owners=["self"],
                                   Filters=[{"Name": "image-id", "Values": [ami]}])["Images"]
    assert not ec2.describe_snapshots(
        Filters=[{"Name": "snapshot-id", "Values": [snapshot]}])["Snapshots"]
    assert disk.read_bytes()[:11] == b"boot sector"  # the user's image is only read


def test_a_qcow2_disk_is_refused_with_the_conversion(tmp_path: Path, ec2: Any,
                                                     place: dict[str, str]) -> None:
    disk = tmp_path / "rancheros.qcow2"
    disk.write_bytes(b"QFI\xfb")
    machine = _machine(tmp_path, str(disk), _options(place))
    with pytest.raises(ImageError, match="qemu-img convert -O raw rancheros.qcow2"):
        machine.boot()
    machine.stop()


def _answer_with_error(code: str, message: str, operation: str) -> Any:
    """A stand-in at the SDK's HTTP boundary (botocore's before-send event) for an EC2 error
    moto cannot produce; every other call still goes to the emulator."""
    def before_send(request: Any, **_: Any) -> Any:
        body = (f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
                "</Error></Errors><RequestID>stand-in</RequestID></Response>").encode()
        return botocore.awsrequest.AWSResponse(request.url, 400, {}, _Raw(body))

    real = aws.make_session

    def session(region: str | None) -> boto3.session.Session:
        made = real(region)
        made.events.register(f"before-send.ec2.{operation}", before_send)
        return made

    return session


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def test_a_quota_error_at_launch_names_it_and_leaves_nothing(
        tmp_path: Path, ec2: Any, place: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws, "make_session", _answer_with_error(
        "VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU "
        "limit of 0 allows", "RunInstances"))
    machine = _machine(tmp_path, place["ami"], _options(place))
    with pytest.raises(PlatformError, match=r"AWS quota or capacity: .*VcpuLimitExceeded"):
        machine.boot()
    assert _ours(ec2) == NOTHING  # the driver removed the key pair and group by itself
    machine.stop()


def test_ctrl_c_during_the_address_wait_leaves_nothing(tmp_path: Path, ec2: Any,
                                                      place: dict[str, str]) -> None:
    machine = _machine(tmp_path, place["ami"], _options(place))
    driver = machine.driver
    driver.prepare(machine.spec)
    calls = {"n": 0}

    def second_describe(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the user presses Ctrl-C while the lab waits
    driver.ec2.meta.events.register("before-send.ec2.DescribeInstances", second_describe)
    with pytest.raises(KeyboardInterrupt):
        driver.start()
    assert calls["n"] >= 1 and _ours(ec2) == NOTHING  # the driver removed all it made
    machine.stop()


def test_unknown_ami_is_named_before_anything_is_made(tmp_path: Path, ec2: Any,
                                                      place: dict[str, str]) -> None:
    machine = _machine(tmp_path, "ami-0123456789abcdef0", _options(place))
    with pytest.raises(ImageError, match="AWS does not know that AMI .*ami-0123456789abcdef0"):
        machine.boot()
    machine.stop()
    assert _ours(ec2) == NOTHING


def test_an_ami_of_the_other_arch_is_refused_before_anything_is_made(
        tmp_path: Path, ec2: Any, place: dict[str, str]) -> None:
    arm = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["arm64"]}])[
        "Images"][0]["ImageId"]  # one of the emulator's preloaded public AMIs
    machine = _machine(tmp_path, arm, _options(place))
    with pytest.raises(ImageError, match=f"{arm} is an arm64 AMI, but this run is for x86_64"):
        machine.boot()
    machine.stop()
    assert _ours(ec2) == NOTHING


def test_the_release_table_gives_the_region_s_ami(tmp_path: Path, ec2: Any,
                                                  place: dict[str, str]) -> None:
    assert aws.load_catalog()[REGION] == "ami-0c728496e40cbbfe1"  # the seed's eu-west-1 row
    machine = _machine(tmp_path, f"ami:{REGION}", _options(place))
    with pytest.raises(ImageError, match="ami-0c728496e40cbbfe1"):  # not in the emulator
        machine.boot()
    machine.stop()
    other = _machine(tmp_path, "ami:il-central-1", {**_options(place), "region": ""})
    with pytest.raises(ImageError, match="has no AMI for il-central-1; it has ap-northeast-1"):
        other.boot()
    other.stop()


@pytest.mark.parametrize(("options", "unset", "cause"), [
    ({"region": "eu-nowhere-9"}, (), "unknown AWS region 'eu-nowhere-9'"),
    ({}, (), "platform aws needs a region: --region"),
    ({"region": REGION}, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
     r"no AWS credentials \(boto3 looks for AWS_ACCESS_KEY_ID"),
])
def test_bad_input_is_named_before_launch(tmp_path: Path, ec2: Any, place: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch, options: dict,
                                          unset: tuple[str, ...], cause: str) -> None:
    for name in unset:
        monkeypatch.delenv(name)
    machine = _machine(tmp_path, place["ami"], options)
    with pytest.raises(ConfigError, match=cause):
        machine.boot()
    machine.stop()
    assert _ours(ec2) == NOTHING


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from drivers.machines import make_machine
    from lab.ssh import KeyPair
    work = Path(sys.argv[1])
    m = make_machine("aws", sys.argv[2], "x86_64", "#cloud-config\\n", "default", work, "tcg",
                     ssh_key=KeyPair.generate(work / "key"),
                     platform_options={"region": "eu-west-1", "subnet": sys.argv[3],
                                       "address": "private"})
    m.driver.prepare(m.spec)
    m.driver.start()
    print("launched", m.driver.instance, flush=True)
    time.sleep(600)
""")


def test_gc_removes_what_a_killed_run_left(tmp_path: Path, ec2: Any, place: dict[str, str],
                                           aws_env: dict[str, str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path), place["ami"],
                            place["subnet"]], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                           env={**os.environ, gc.RUN_ID_ENV: "killed-run"})
    try:
        line = run.stdout.readline() if run.stdout else ""
        assert line.startswith("launched i-"), line
        run.send_signal(signal.SIGKILL)  # no finally, no atexit: the run leaves it all
    finally:
        run.kill()
        run.wait()
    left = _ours(ec2)
    assert all(len(ids) == 1 for ids in left.values()), left
    other = ec2.create_security_group(GroupName="not-ours", Description="someone else's")
    capsys.readouterr()

    assert main(["gc", "--platform", "aws", "--region", REGION]) == 0  # 5 h TTL: still live
    assert "0 removed on aws" in capsys.readouterr().out and _ours(ec2) == left

    assert main(["gc", "--platform", "aws", "--region", REGION, "--older-than", "0s",
                 "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "3 found on aws" in dry and _ours(ec2) == left

    assert main(["gc", "--platform", "aws", "--region", REGION, "--older-than", "0s"]) == 0
    out = capsys.readouterr().out
    kinds = [line.split()[2] for line in out.splitlines() if line.startswith("removed aws")]
    assert kinds == ["instance", "key-pair", "security-group"], out  # dependency order
    assert all("(run killed-run:" in line for line in out.splitlines()[:3]), out
    assert _ours(ec2) == NOTHING
    assert ec2.describe_security_groups(GroupIds=[other["GroupId"]])["SecurityGroups"]
    _no_secret_in([], dry + out)


def test_gc_removes_expired_images_and_snapshots_after_instances(
        ec2: Any, place: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    marks = gc.owner_marks(ttl=-60)  # expired a minute ago
    tags = [{"Key": k, "Value": v} for k, v in marks.items()]
    snapshot = ec2.describe_images(ImageIds=[place["ami"]])["Images"][0][
        "BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.create_tags(Resources=[place["ami"], snapshot], Tags=tags)
    assert main(["gc", "--platform", "aws", "--region", REGION]) == 0
    out = capsys.readouterr().out
    kinds = [line.split()[2] for line in out.splitlines() if line.startswith("removed aws")]
    assert kinds == ["image", "snapshot"], out
    assert "expired 1m ago" in out
    assert not ec2.describe_images(Owners=["self"])["Images"]


SCENARIO = textwrap.dedent("""
    def test_needs_a_machine(machine):
        assert machine.run("true").ok
""")


def test_sigterm_during_a_pytest_run_terminates_and_no_credential_is_written(
        tmp_path: Path, ec2: Any, place: dict[str, str], aws_env: dict[str, str]) -> None:
    """`pytest --platform aws` as a user runs it; SIGTERM (a cancelled CI job) mid-boot."""
    (tmp_path / "test_scenario.py").write_text(SCENARIO)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(tmp_path / "test_scenario.py"), "-p",
           "no:cacheprovider", "--platform", "aws", "--region", REGION, "--image", place["ami"],
           "--platform-option", f"subnet={place['subnet']}", "--platform-option",
           "address=private", f"--junitxml={out / 'junit.xml'}", f"--alluredir={out / 'allure'}",
           f"--roslab-artifacts={out / 'results'}", "-rA"]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env={**os.environ, "TMPDIR": str(tmp_path)}, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _ours(ec2)["instances"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ours(ec2)["instances"], "the run never launched"
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode != 0
    assert _ours(ec2) == NOTHING, output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert (out / "junit.xml").exists(), written
    _no_secret_in([tmp_path], output)


def _no_secret_in(folders: list[Path], *texts: str) -> None:
    """Neither the key id, the secret nor the token in any file under `folders` or text."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in (KEY_ID, SECRET, TOKEN):
                    assert secret.encode() not in data, f"{secret[:8]}... written to {path}"
    for text in texts:
        for secret in (KEY_ID, SECRET, TOKEN):
            assert secret not in text
