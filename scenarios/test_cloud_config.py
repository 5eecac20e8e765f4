"""cloud-config: each key does what it says, from each datasource the platform offers,
and a malformed cloud-config still boots to a usable console with the error visible."""

from __future__ import annotations

import base64
import gzip

import paramiko
import pytest
import yaml

from fixtures.profiles import Profile
from lab.machine import Machine

HOSTNAME = "roslab-cc"
PLAIN = "plain text from write_files\n"
B64 = "base64 content\n"
GZ = "gzip+base64 content\n"
cloud_config = {
    "hostname": HOSTNAME,
    "write_files": [
        {
            "path": "/etc/roslab/plain.txt",
            "content": PLAIN,
            "permissions": "0640",
            "owner": "rancher:rancher",
        },
        {
            "path": "/etc/roslab/b64.txt",
            "content": base64.b64encode(B64.encode()).decode(),
            "encoding": "b64",
            "permissions": "0600",
        },
        {
            "path": "/etc/roslab/gz.txt",
            "content": base64.b64encode(gzip.compress(GZ.encode())).decode(),
            "encoding": "gzip+base64",
            "permissions": "0755",
        },
    ],
    "runcmd": [
        "echo first >> /home/rancher/runcmd.log",
        ["sh", "-c", "echo second >> /home/rancher/runcmd.log"],
        "echo third >> /home/rancher/runcmd.log",
    ],
}


def test_hostname_is_set(machine: Machine) -> None:
    got = machine.run("hostname", check=True).output.strip()
    assert got == HOSTNAME, f"hostname is {got!r}, cloud-config asked for {HOSTNAME!r}"


@pytest.mark.needs("ssh")
def test_ssh_with_the_authorized_key_works(machine: Machine) -> None:
    result = machine.ssh.run("id -un")
    assert result.ok and result.stdout.strip() == "rancher", result


@pytest.mark.needs("ssh")
def test_ssh_with_another_key_is_refused(machine: Machine) -> None:
    host, port = machine.driver.ssh_endpoint()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(
            host,
            port,
            username="rancher",
            pkey=paramiko.Ed25519Key.generate()
            if hasattr(paramiko.Ed25519Key, "generate")
            else paramiko.RSAKey.generate(2048),
            allow_agent=False,
            look_for_keys=False,
            timeout=30,
            auth_timeout=30,
        )
    client.close()


@pytest.mark.parametrize(
    ("path", "content", "mode", "owner"),
    [
        ("/etc/roslab/plain.txt", PLAIN, "640", "rancher:rancher"),
        ("/etc/roslab/b64.txt", B64, "600", "root:root"),
        ("/etc/roslab/gz.txt", GZ, "755", "root:root"),
    ],
    ids=["plain", "base64", "gzip+base64"],
)
def test_write_files_content_permissions_owner(
    machine: Machine, path: str, content: str, mode: str, owner: str
) -> None:
    got = machine.run(f"sudo cat {path}", check=True).output
    assert got.replace("\r", "") == content.rstrip("\n"), f"{path} holds {got!r}"
    stat = machine.run(f"stat -c '%a %U:%G' {path}", check=True).output.strip()
    assert stat == f"{mode} {owner}", f"{path}: mode/owner {stat}, expected {mode} {owner}"


def test_runcmd_ran_in_order(machine: Machine) -> None:
    lines = machine.run("cat /home/rancher/runcmd.log", check=True).output.split()
    assert lines == ["first", "second", "third"], f"runcmd wrote {lines}"


def test_merged_cloud_config_is_saved(machine: Machine) -> None:
    text = machine.run("sudo cat /var/lib/rancher/conf/cloud-config.yml", check=True).output
    merged = yaml.safe_load(text.replace("\r", ""))
    assert merged.get("hostname") == HOSTNAME, f"merged cloud-config: {merged}"
    assert [f["path"] for f in merged.get("write_files", [])] == [
        f["path"] for f in cloud_config["write_files"]
    ]


def test_ros_config_get_reads_the_merged_config(machine: Machine) -> None:
    assert machine.run("ros config get hostname", check=True).output.strip() == HOSTNAME


DATASOURCE_CONFIG = {"hostname": "roslab-ds", "runcmd": ["touch /home/rancher/ds-ran"]}


@pytest.mark.parametrize(
    "datasource",
    [
        pytest.param(ds, marks=pytest.mark.cloud_config(DATASOURCE_CONFIG, datasource=ds), id=ds)
        for ds in ("nocloud", "url", "cmdline")
    ],
)
def test_datasource_delivers_cloud_config(
    request: pytest.FixtureRequest, datasource: str, profile: Profile
) -> None:
    if datasource not in profile.datasources:
        pytest.skip(f"profile {profile.name} has no {datasource} datasource")
    machine: Machine = request.getfixturevalue("machine")
    assert machine.run("hostname", check=True).output.strip() == "roslab-ds", (
        f"hostname from the {datasource} datasource was not applied"
    )
    assert machine.run("test -e /home/rancher/ds-ran").ok, (
        f"runcmd from the {datasource} datasource did not run"
    )


MALFORMED = "#cloud-config\nhostname: roslab-bad\nwrite_files: [unclosed\n"


@pytest.mark.cloud_config(MALFORMED, allow_invalid=True)
def test_malformed_cloud_config_boots_to_a_usable_console(
    machine: Machine, profile: Profile
) -> None:
    assert machine.run("echo usable-$((40+2))").output.strip() == "usable-42"
    assert machine.run("hostname").output.strip() != "roslab-bad", (
        "a cloud-config that is not valid YAML was applied in part"
    )
    log = machine.run(f"sudo cat {profile.cloud_init_log}").output
    console = machine.console_log.read_text(errors="replace")
    assert "Failed to parse cloud-config" in log + console, (
        f"the YAML error is neither in {profile.cloud_init_log} nor on the console"
    )
