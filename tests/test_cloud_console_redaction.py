"""A cloud's console log is evidence: whatever the guest prints there (its kernel cmdline
with the console password, its user-data, a credential or key it was handed) is redacted
before the copy reaches console.log, the file reports attach.

Each cloud with a console API runs against its emulator: AWS against moto's server (its
console output answered at botocore's HTTP boundary, as moto's is a fixed sample), the
others against their stand-ins in tests/standins/ with a console that carries every
secret of the run.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from moto_env import moto_server

from drivers.machines import make_machine
from drivers.rehearsal import aliyun as aliyun_standin
from drivers.rehearsal import gce as gce_standin
from drivers.rehearsal import openstack as openstack_standin
from lab.machine import RUN_PASSWORD, Machine
from lab.ssh import KeyPair

USER_SECRET = f"db-secret-{secrets.token_hex(8)}"
CLOUD_CONFIG = {"hostname": "leaky", "rancher": {"environment": {"DB_PASSWORD": USER_SECRET}}}


def _console(run_secrets: list[str]) -> str:
    """What a guest that prints everything it was given shows on its console."""
    return ("Linux version 6.1.0 ...\n"
            f"Kernel command line: console=ttyS0 rancher.password={RUN_PASSWORD} panic=-1\n"
            + "".join(f"leak: {value}\n" for value in run_secrets)
            + "RancherOS v1.5.8 started\n")


def _private_key_lines(key: KeyPair) -> list[str]:
    return key.private_path.read_text().splitlines()[1:-1]


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    token = f"aws-token-{secrets.token_hex(16)}"
    with moto_server(monkeypatch, tmp_path, AWS_SESSION_TOKEN=token) as env:
        yield env["AWS_ENDPOINT_URL"]


def _aws_machine(tmp_path: Path, key: KeyPair, monkeypatch: pytest.MonkeyPatch) -> Machine:
    import boto3
    import botocore.awsrequest

    import drivers.aws as aws

    ec2 = boto3.client("ec2", region_name="eu-west-1")
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24")["Subnet"]["SubnetId"]
    volume = ec2.create_volume(Size=8, AvailabilityZone="eu-west-1a")["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ami = ec2.register_image(
        Name="rancheros-test", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]
    leaked = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_SESSION_TOKEN"],
              USER_SECRET, *_private_key_lines(key)]

    def console_output(request: Any, **_: Any) -> Any:
        # EC2's GetConsoleOutput answer, carrying the run's secrets
        output = base64.b64encode(_console(leaked).encode()).decode()
        body = (f"<GetConsoleOutputResponse><requestId>r</requestId><instanceId>i</instanceId>"
                f"<timestamp>2026-01-01T00:00:00Z</timestamp><output>{output}</output>"
                "</GetConsoleOutputResponse>").encode()
        return botocore.awsrequest.AWSResponse(request.url, 200, {}, _Raw(body))

    real = aws.make_session

    def session(region: str | None) -> Any:
        made = real(region)
        made.events.register("before-send.ec2.GetConsoleOutput", console_output)
        return made

    monkeypatch.setattr(aws, "make_session", session)
    return make_machine("aws", ami, "x86_64", CLOUD_CONFIG, "default", tmp_path, "tcg",
                        ssh_key=key, platform_options={"region": "eu-west-1", "subnet": subnet,
                                                       "address": "private"})


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _standin_credentials(platform: str) -> list[str]:
    """The credentials the user handed the cloud's SDK (as the stand-in set them up)."""
    if platform == "openstack":
        config = yaml.safe_load(Path(os.environ["OS_CLIENT_CONFIG_FILE"]).read_text())
        return [config["clouds"][os.environ["OS_CLOUD"]]["auth"]["password"]]
    if platform == "gce":
        key = json.loads(Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
        return [line for line in key["private_key"].splitlines() if "PRIVATE KEY" not in line]
    return [os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]]


STANDINS = {
    "openstack": (openstack_standin, "openstack:rancheros-v1.5.8", {}),
    "gce": (gce_standin, "gce:rancheros-v1-5-8", {"zone": "us-central1-a",
                                                  "ssh_from": "192.0.2.9"}),
    "aliyun": (aliyun_standin, "aliyun:m-rancheros158", {}),
}


@pytest.mark.parametrize("platform", ["aws", "openstack", "gce", "aliyun"])
def test_a_cloud_console_log_never_holds_a_secret_of_the_run(
        platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    key = KeyPair.generate(tmp_path / "ssh")
    work = tmp_path / "runs"
    work.mkdir()
    standin = None
    if platform == "aws":
        request.getfixturevalue("moto")
        machine = _aws_machine(work, key, monkeypatch)
        leaked = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_SESSION_TOKEN"]]
    else:
        module, image, options = STANDINS[platform]
        standin = module.serve(tmp_path, monkeypatch)
        if platform == "openstack":
            standin.seed_image("rancheros-v1.5.8")
        elif platform == "gce":
            standin.seed("images", "rancheros-v1-5-8")
        leaked = _standin_credentials(platform)
        monkeypatch.setattr(module, "CONSOLE", _console(
            [*leaked, USER_SECRET, *_private_key_lines(key)]))
        machine = make_machine(platform, image, "x86_64", CLOUD_CONFIG, "default", work, "tcg",
                               ssh_key=key, platform_options=options)
        monkeypatch.setattr(type(machine.driver), "poll_interval", 0.05)
    run_secrets = [RUN_PASSWORD, USER_SECRET, *leaked, *_private_key_lines(key)]
    try:
        machine.driver.prepare(machine.spec)
        machine.driver.start()
        machine.driver.fetch_console()
        assert "RancherOS v1.5.8 started" in machine.console_log.read_text()
        written = [p for p in machine.workdir.rglob("*") if p.is_file()]
        machine.driver.stop()  # keeps the last console output first
        assert "[redacted: console password]" in machine.console_log.read_text()
        written += [p for p in machine.workdir.rglob("*") if p.is_file()]
        for path in written:
            text = path.read_bytes().decode(errors="replace")
            for value in run_secrets:
                assert value not in text, f"{platform}: a secret of the run in {path.name}"
    finally:
        machine.stop()
        if standin is not None:
            standin.stop()
