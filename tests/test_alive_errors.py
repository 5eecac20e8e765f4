"""`alive()` on an API that errs: a lab error, never "dead" (the lab would boot another
machine: on a cloud, another one that costs) and never "alive". Each cloud runs against
its emulator, whose API answers the state query with a throttling error at the HTTP
boundary: AWS against moto's server (RequestLimitExceeded answered before the request
leaves botocore), the others against their stand-ins (HTTP 429 for every GET).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto_env import moto_server
from standins.base import machine_spec

from drivers import driver_class
from drivers.rehearsal import aliyun as aliyun_standin
from drivers.rehearsal import cloudstack as cloudstack_standin
from drivers.rehearsal import digitalocean as digitalocean_standin
from drivers.rehearsal import gce as gce_standin
from drivers.rehearsal import openstack as openstack_standin
from lab.errors import LabError

THROTTLED = 429
STANDINS: dict[str, tuple[Any, str]] = {
    "openstack": (openstack_standin, "openstack:rancheros-v1.5.8"),
    "gce": (gce_standin, "gce:rancheros-v1-5-8"),
    "aliyun": (aliyun_standin, "aliyun:m-rancheros158"),
    "digitalocean": (digitalocean_standin,
                     "digitalocean:https://releases.example.org/v1.5.8/rancheros-digitalocean.img"),
    "cloudstack": (cloudstack_standin, "cloudstack:rancheros-v1.5.8"),
}


@pytest.mark.parametrize("platform", list(STANDINS))
def test_a_throttled_cloud_api_makes_alive_a_lab_error(
        platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, image = STANDINS[platform]
    standin = module.serve(tmp_path, monkeypatch)
    driver = driver_class(platform)()
    monkeypatch.setattr(type(driver), "poll_interval", 0.05)
    try:
        if platform == "openstack":
            standin.seed_image("rancheros-v1.5.8")
        elif platform == "gce":
            standin.seed("images", "rancheros-v1-5-8")
        driver.prepare(machine_spec(image, tmp_path))
        driver.start()
        assert driver.alive()
        for _ in range(20):  # more than any SDK retries
            for method in ("GET", "POST"):
                standin.fail(method, r"/.*", THROTTLED)
        with pytest.raises(LabError, match="could not ask whether|answered"):
            driver.alive()
    finally:
        standin._faults.clear()
        driver.stop()
        driver.cleanup()
        standin.stop()


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    # botocore retries throttling: keep the test short
    with moto_server(monkeypatch, tmp_path, AWS_MAX_ATTEMPTS="2") as env:
        yield env["AWS_ENDPOINT_URL"]


def test_a_throttled_ec2_api_makes_alive_a_lab_error(moto: str, tmp_path: Path) -> None:
    import boto3
    import botocore.awsrequest

    from drivers.aws import AwsDriver

    ec2 = boto3.client("ec2", region_name="eu-west-1")
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24")["Subnet"]["SubnetId"]
    volume = ec2.create_volume(Size=8, AvailabilityZone="eu-west-1a")["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ami = ec2.register_image(
        Name="rancheros-test", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]
    spec = machine_spec(ami, tmp_path)
    spec.options = {"region": "eu-west-1", "subnet": subnet, "address": "private"}
    driver = AwsDriver()
    driver.prepare(spec)
    driver.start()

    def throttled(request: Any, **_: Any) -> Any:
        body = (b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>"
                b"Request limit exceeded.</Message></Error></Errors><RequestID>s"
                b"</RequestID></Response>")
        return botocore.awsrequest.AWSResponse(request.url, 503, {}, _Raw(body))

    try:
        assert driver.alive()
        driver.ec2.meta.events.register("before-send.ec2.DescribeInstances", throttled)
        with pytest.raises(LabError, match="RequestLimitExceeded"):
            driver.alive()
    finally:
        driver.ec2.meta.events.unregister("before-send.ec2.DescribeInstances", throttled)
        driver.stop()
        driver.cleanup()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body
