"""The lab's cloud metadata stand-ins: each one's paths, headers and token flow over real
HTTP on loopback; the QEMU relay; and the reference image reading its cloud-config and SSH
key from one of them (two boots: the service there, and the service gone)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from drivers.machines import make_machine
from drivers.qemu import metadata
from lab.cloudconfig import METADATA_DATASOURCES
from lab.errors import ConfigError
from lab.ssh import KeyPair

USER_DATA = b"#cloud-config\nhostname: from-user-data\n"
KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFirst first@roslab",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISecond second@roslab"]
INSTANCE = metadata.Instance(USER_DATA, KEYS, hostname="roslab-md", local_ipv4="169.254.0.15",
                             instance_id="i-0123456789abcdef")


def serve(cloud: metadata.Cloud) -> metadata.MetadataServer:
    return metadata.MetadataServer(cloud)


def get(server: metadata.MetadataServer, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(server.url + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture
def ec2() -> Iterator[metadata.MetadataServer]:
    with serve(metadata.Ec2(INSTANCE)) as server:
        yield server


def token(server: metadata.MetadataServer, ttl: str = "60") -> str:
    status, body, headers = get(server, "/latest/api/token",
                                {"X-aws-ec2-metadata-token-ttl-seconds": ttl}, "PUT")
    assert status == 200 and headers["X-aws-ec2-metadata-token-ttl-seconds"] == ttl
    return body.decode()


def test_ec2_imdsv2_token_flow_serves_user_data_keys_and_addresses(ec2) -> None:
    auth = {"X-aws-ec2-metadata-token": token(ec2)}
    assert get(ec2, "/latest/user-data", auth)[:2] == (200, USER_DATA)
    listing = get(ec2, "/latest/meta-data/", auth)[1].decode().split("\n")
    assert {"hostname", "local-ipv4", "instance-id", "public-keys/"} <= set(listing)
    assert get(ec2, "/latest/meta-data/public-keys/", auth)[1] == b"0=roslab-0\n1=roslab-1"
    for n, key in enumerate(KEYS):
        assert get(ec2, f"/latest/meta-data/public-keys/{n}/", auth)[1] == b"openssh-key"
        got = get(ec2, f"/latest/meta-data/public-keys/{n}/openssh-key", auth)
        assert got[:2] == (200, key.encode() + b"\n")
    assert get(ec2, "/latest/meta-data/hostname", auth)[1] == b"roslab-md"
    assert get(ec2, "/latest/meta-data/local-ipv4", auth)[1] == b"169.254.0.15"
    assert get(ec2, "/latest/meta-data/no-such-key", auth)[0] == 404


def test_ec2_refuses_requests_without_a_valid_token(ec2) -> None:
    assert get(ec2, "/latest/user-data")[0] == 401  # IMDSv2 only: no token, no data
    assert get(ec2, "/latest/user-data", {"X-aws-ec2-metadata-token": "forged"})[0] == 401
    ttl = "X-aws-ec2-metadata-token-ttl-seconds"
    assert get(ec2, "/latest/api/token", {}, "PUT")[0] == 400  # no TTL
    assert get(ec2, "/latest/api/token", {ttl: "0"}, "PUT")[0] == 400
    assert get(ec2, "/latest/api/token", {ttl: "21601"}, "PUT")[0] == 400
    assert get(ec2, "/latest/api/token", {ttl: "60", "X-Forwarded-For": "1.2.3.4"}, "PUT")[0] \
        == 403
    assert get(ec2, "/latest/api/token")[0] == 401  # a GET is no way to a token


def test_ec2_token_expires() -> None:
    with serve(metadata.Ec2(INSTANCE)) as server:
        tok = token(server, "1")
        server.cloud.tokens.tokens[tok] -= 2  # its TTL ran out, without sleeping for it
        assert get(server, "/latest/user-data", {"X-aws-ec2-metadata-token": tok})[0] == 401


def test_ec2_imdsv1_when_tokens_are_optional() -> None:
    with serve(metadata.Ec2(INSTANCE, tokens_required=False)) as server:
        assert get(server, "/latest/user-data")[:2] == (200, USER_DATA)


def test_gce_needs_metadata_flavor_google_and_answers_with_it() -> None:
    with serve(metadata.Gce(INSTANCE)) as server:
        path = "/computeMetadata/v1/instance/attributes/user-data"
        status, body, headers = get(server, path)
        assert (status, headers["Metadata-Flavor"]) == (403, "Google")
        assert b"Metadata-Flavor" in body
        assert get(server, path, {"Metadata-Flavor": "Other"})[0] == 403
        flavor = {"Metadata-Flavor": "Google"}
        assert get(server, path, {**flavor, "X-Forwarded-For": "1.2.3.4"})[0] == 403
        status, body, headers = get(server, path, flavor)
        assert (status, body, headers["Metadata-Flavor"]) == (200, USER_DATA, "Google")
        keys = get(server, "/computeMetadata/v1/instance/attributes/ssh-keys", flavor)[1]
        assert keys.decode().splitlines() == [f"rancher:{k}" for k in KEYS]
        assert get(server, "/computeMetadata/v1/instance/hostname", flavor)[1] == \
            b"roslab-md.c.roslab.internal"
        assert get(server, "/computeMetadata/v1/instance/attributes/nope", flavor)[0] == 404


def test_gce_without_user_data_has_no_such_attribute() -> None:
    bare = metadata.Instance(None, KEYS)
    with serve(metadata.Gce(bare)) as server:
        flavor = {"Metadata-Flavor": "Google"}
        listing = get(server, "/computeMetadata/v1/instance/attributes/", flavor)[1].decode()
        assert listing.split() == ["ssh-keys"]
        assert get(server, "/computeMetadata/v1/instance/attributes/user-data", flavor)[0] == 404


def test_digitalocean_json_document_and_user_data() -> None:
    with serve(metadata.DigitalOcean(INSTANCE)) as server:
        status, body, headers = get(server, "/metadata/v1.json")
        doc = json.loads(body)
        assert (status, headers["Content-Type"]) == (200, "application/json")
        assert doc["public_keys"] == KEYS and doc["hostname"] == "roslab-md"
        assert doc["user_data"] == USER_DATA.decode()
        assert doc["interfaces"]["private"][0]["ipv4"]["ip_address"] == "169.254.0.15"
        assert get(server, "/metadata/v1/user-data")[:2] == (200, USER_DATA)
        assert get(server, "/metadata/v1/hostname")[1] == b"roslab-md"
        assert get(server, "/metadata/v1/nope")[0] == 404


def test_cloudstack_user_data_and_meta_data() -> None:
    with serve(metadata.CloudStack(INSTANCE)) as server:
        assert get(server, "/latest/user-data")[:2] == (200, USER_DATA)
        listing = get(server, "/latest/meta-data/")[1].decode().split()
        assert {"local-hostname", "local-ipv4", "instance-id", "public-keys"} <= set(listing)
        assert get(server, "/latest/meta-data/public-keys")[1].decode().splitlines() == KEYS
        assert get(server, "/latest/meta-data/local-hostname")[1] == b"roslab-md"


def test_aliyun_both_api_versions_and_optional_tokens() -> None:
    with serve(metadata.Aliyun(INSTANCE)) as server:
        for version in ("latest", "2016-01-01"):
            assert get(server, f"/{version}/user-data")[:2] == (200, USER_DATA)
            assert get(server, f"/{version}/meta-data/public-keys/")[1] == b"0/\n1/"
            got = get(server, f"/{version}/meta-data/public-keys/1/openssh-key")[1]
            assert got == KEYS[1].encode() + b"\n"
            assert get(server, f"/{version}/meta-data/private-ipv4")[1] == b"169.254.0.15"
        assert get(server, "/1999-01-01/user-data")[0] == 404
        tok = get(server, "/latest/api/token",
                  {"X-aliyun-ecs-metadata-token-ttl-seconds": "60"}, "PUT")[1].decode()
        assert get(server, "/latest/user-data", {"X-aliyun-ecs-metadata-token": tok})[0] == 200
        assert get(server, "/latest/user-data", {"X-aliyun-ecs-metadata-token": "bad"})[0] == 401
    with serve(metadata.Aliyun(INSTANCE, tokens_required=True)) as server:
        assert get(server, "/latest/user-data")[0] == 401  # hardened mode


def test_relay_joins_a_connection_to_the_stand_in(ec2) -> None:
    """What QEMU's guestfwd runs for each guest connection: stdin/stdout to the server."""
    request = (f"GET /latest/meta-data/hostname HTTP/1.1\r\nHost: 169.254.169.254\r\n"
               f"X-aws-ec2-metadata-token: {token(ec2)}\r\nConnection: close\r\n\r\n")
    out = subprocess.run([sys.executable, "-I", str(metadata.RELAY), str(ec2.port)],
                         input=request.encode(), capture_output=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.0 200")
    assert out.stdout.endswith(b"\r\n\r\nroslab-md")
    assert ("GET", "/latest/meta-data/hostname", 200) in ec2.cloud.requests


def test_guestfwd_routes_each_cloud_address_inside_slirps_network() -> None:
    for name in METADATA_DATASOURCES:
        cloud = metadata.CLOUDS[name](INSTANCE)
        opts = metadata.guestfwd(cloud, 4321)
        if name == "cloudstack":
            assert opts == ""  # the DHCP server, 10.0.2.2, is slirp's host: 127.0.0.1:80
            continue
        assert opts.startswith(f"net={cloud.network},guestfwd=tcp:{cloud.guest_address}:80-cmd:")
        assert opts.endswith("relay.py 4321")


def test_a_busy_port_is_a_clear_error(ec2) -> None:
    with pytest.raises(ConfigError, match=rf"127.0.0.1:{ec2.port}: it is in use"):
        metadata.MetadataServer(metadata.CloudStack(INSTANCE), port=ec2.port)


# -- the reference image over a metadata datasource (two boots) ---------------------------


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return KeyPair.generate(tmp_path_factory.mktemp("key") / "key")


@pytest.mark.refimage
@pytest.mark.xdist_group("refimage-metadata")
def test_reference_image_reads_cloud_config_and_key_pair_from_ec2(
        key: KeyPair, tmp_path: Path) -> None:
    machine = make_machine("qemu", None, "x86_64", {"hostname": "roslab-ec2",
                           "write_files": [{"path": "/etc/roslab/ec2", "content": "via imds\n"}]},
                           "ec2", tmp_path, "tcg", ssh_key=key)
    assert key.public not in (machine.spec.cloud_config.text if machine.spec.cloud_config
                              else "")  # the key goes as the instance's key pair only
    with machine:
        machine.boot()
        served = machine.driver.metadata.cloud.requests
        # a first GET without a token is refused (how a guest finds IMDSv2 only), then the
        # guest takes a token and every request with it is answered
        put = served.index(("PUT", "/latest/api/token", 200))
        assert [r for r in served[:put] if r[2] != 401] == [], served
        assert {r[2] for r in served[put:]} == {200}, served
        assert ("GET", "/latest/user-data", 200) in served
        assert ("GET", "/latest/meta-data/public-keys/0/openssh-key", 200) in served
        result = machine.ssh().run("hostname; cat /etc/roslab/ec2; ip -4 -o addr show eth0; "
                                 "sudo cat /var/lib/rancher/conf/metadata", timeout=60)
        lines = result.stdout.splitlines()
        assert result.ok and lines[:2] == ["roslab-ec2", "via imds"], result
        address = machine.driver.metadata.cloud.instance.local_ipv4
        assert f"inet {address}/16" in lines[2], f"served local-ipv4 {address}, guest: {lines[2]}"
        saved = yaml.safe_load("\n".join(lines[3:]))  # what the datasource saved as metadata
        assert saved["local_ipv4"] == address and key.public in saved["ssh_keys"], saved


@pytest.mark.refimage
@pytest.mark.xdist_group("refimage-metadata")
def test_a_datasource_whose_service_is_gone_does_not_hang_the_boot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve = metadata.serve

    def serve_then_stop(name: str, instance: metadata.Instance) -> tuple[object, str]:
        server, options = serve(name, instance)
        server.stop()  # the guest's connections now find nobody behind the relay
        return server, options

    monkeypatch.setattr(metadata, "serve", serve_then_stop)
    machine = make_machine("qemu", None, "x86_64", {"hostname": "never-applied"}, "ec2",
                           tmp_path, "tcg")
    with machine:
        machine.boot()  # logs in on the console: boot went on
        console = machine.console_log.read_text(errors="replace")
        line = next((x for x in console.splitlines() if "datasource ec2 failed" in x), "")
        assert line, "the console does not say that the ec2 datasource failed"
        waited = float(line.split("failed after ")[1].split(" s")[0])
        assert waited <= 60, f"the guest waited {waited} s for a missing service"
        assert machine.run("hostname").output.strip() != "never-applied"


# -- the reference image's own fetchers, run here against the stand-ins -------------------


@pytest.fixture(scope="module")
def guest_cloudinit() -> Iterator[object]:
    """The guest's ros/cloudinit.py (what cloud-init-execute runs), imported on the host."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "refimage/guest/rootfs/usr/lib/ros"))
    try:
        from ros import cloudinit  # the guest's own fetchers, run here
    finally:
        sys.path.pop(0)
    yield cloudinit


@pytest.mark.parametrize("name", METADATA_DATASOURCES)
def test_the_guest_reads_each_cloud_through_its_headers_and_tokens(
        guest_cloudinit: object, name: str) -> None:
    """`name:root` points the guest's datasource at the stand-in (RancherOS's override)."""
    cloud = metadata.CLOUDS[name](INSTANCE)
    with serve(cloud) as server:
        text, meta = guest_cloudinit.fetch(f"{name}:{server.url}")  # type: ignore[attr-defined]
    assert text == USER_DATA.decode()
    assert meta["ssh_keys"] == KEYS
    assert meta["hostname"].strip().split(".")[0] == "roslab-md"
    assert meta["local_ipv4"] == "169.254.0.15"
    # 401 is only the IMDSv2 probe, 404 only optional keys (GCE's sshKeys and the like)
    refused = [r for r in cloud.requests if r[2] not in (200, 401, 404)]
    assert refused == [], cloud.requests
    assert ("GET", "/latest/api/token", 401) not in cloud.requests


def test_the_guest_names_a_silent_datasource_and_gives_up_in_bounded_time(
        guest_cloudinit: object, monkeypatch: pytest.MonkeyPatch) -> None:
    cloudinit = guest_cloudinit
    monkeypatch.setattr(cloudinit, "METADATA_WAIT", 2.0)
    said: list[str] = []
    monkeypatch.setattr(cloudinit, "log", said.append)
    monkeypatch.setattr(cloudinit.config, "console_print", said.append)
    with serve(metadata.Ec2(INSTANCE)) as server:
        url = server.url  # then nothing listens there any more
    assert cloudinit.fetch(f"ec2:{url}") == (None, {})
    assert said and all(line.startswith("cloud-init: datasource ec2 failed after ")
                        for line in said), said
