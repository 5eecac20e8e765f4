"""cloud-config: each key does what it says, from each datasource the platform offers,
and a malformed cloud-config still boots to a usable console with the error visible."""

from __future__ import annotations

import base64
import gzip

import paramiko
import pytest
import yaml

from fixtures.profiles import Profile, profile_of
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
            # mtime=0: the same bytes in every process, so xdist workers agree on the
            # machine's key (gzip stamps the time of compression otherwise)
            "content": base64.b64encode(gzip.compress(GZ.encode(), mtime=0)).decode(),
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


def _ssh_login(machine: Machine, key: paramiko.PKey) -> str | None:
    """One SSH login as rancher with `key` (the machine is booted: sshd is up); None when
    it is let in, else why not."""
    host, port = machine.driver.ssh_endpoint()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(host, port, username="rancher", pkey=key, allow_agent=False,
                       look_for_keys=False, timeout=30, banner_timeout=30, auth_timeout=30)
        return None
    except paramiko.AuthenticationException as exc:
        return f"sshd refused the key ({exc})"
    finally:
        client.close()


@pytest.mark.needs("ssh")
def test_ssh_with_the_authorized_key_works(machine: Machine) -> None:
    assert machine.ssh_key is not None
    refused = _ssh_login(machine, machine.ssh_key.pkey())
    assert refused is None, f"SSH with the key from ssh_authorized_keys failed: {refused}"
    result = machine.ssh().run("id -un")
    assert result.ok and result.stdout.strip() == "rancher", result


@pytest.mark.needs("ssh")
def test_ssh_with_another_key_is_refused(machine: Machine) -> None:
    stranger = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") \
        else paramiko.RSAKey.generate(2048)
    assert _ssh_login(machine, stranger) is not None, (
        "sshd let rancher in with a key that is not in ssh_authorized_keys"
    )


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
    # bytes, through base64: the console would lose a trailing newline or a carriage return
    encoded = machine.run(f"sudo base64 {path}", check=True).output
    got = base64.b64decode("".join(encoded.split()))
    problems = []
    if got != content.encode():
        problems.append(f"content {got!r}, expected {content.encode()!r}")
    stat = machine.run(f"stat -c '%a %U:%G' {path}", check=True).output.strip()
    got_mode, _, got_owner = stat.partition(" ")
    if got_mode != mode:
        problems.append(f"mode {got_mode}, expected {mode}")
    if got_owner != owner:
        problems.append(f"owner {got_owner}, expected {owner}")
    assert not problems, f"write_files {path}: " + "; ".join(problems)


def test_runcmd_ran_in_order(machine: Machine) -> None:
    lines = machine.run("cat /home/rancher/runcmd.log", check=True).output.split()
    assert lines == ["first", "second", "third"], (
        f"runcmd entries ran as {lines}, expected first, second, third in order"
    )


def test_merged_cloud_config_is_saved(machine: Machine) -> None:
    path = "/var/lib/rancher/conf/cloud-config.yml"
    merged = yaml.safe_load(machine.run(f"sudo cat {path}", check=True).output) or {}
    assert merged.get("hostname") == HOSTNAME, (
        f"{path} has hostname {merged.get('hostname')!r}, not the user data's {HOSTNAME!r}"
    )
    paths = [f.get("path") for f in merged.get("write_files") or []]
    assert paths == [f["path"] for f in cloud_config["write_files"]], (
        f"{path} has write_files {paths}"
    )


def test_ros_config_get_reads_the_merged_config(machine: Machine) -> None:
    got = machine.run("ros config get hostname", check=True).output.strip()
    assert got == HOSTNAME, f"`ros config get hostname` says {got!r}, not {HOSTNAME!r}"


DATASOURCE_CONFIG = {"hostname": "roslab-ds", "runcmd": ["touch /home/rancher/ds-ran"]}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each datasource is a test with a machine of its own; one the image's profile does
    not list is skipped. Decided at collection, so the lab knows the machines to boot."""
    if metafunc.definition.name != "test_datasource_delivers_cloud_config":
        return
    profile = profile_of(metafunc.config)
    metafunc.parametrize("datasource", [
        pytest.param(ds, id=ds, marks=[
            pytest.mark.cloud_config(DATASOURCE_CONFIG, datasource=ds),
            *([pytest.mark.skip(reason=why)] if (why := profile.lacks_datasource(ds)) else []),
        ])
        for ds in ("nocloud", "url", "cmdline")
    ])


def test_datasource_delivers_cloud_config(machine: Machine, datasource: str) -> None:
    problems = []
    if machine.run("hostname", check=True).output.strip() != "roslab-ds":
        problems.append("its hostname was not applied")
    if not machine.run("test -e /home/rancher/ds-ran").ok:
        problems.append("its runcmd did not run")
    assert not problems, f"cloud-config from the {datasource} datasource: " + "; ".join(problems)


# another user's public key, given in the user-data beside the instance's key pair
USER_DATA_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPcq5LVuzU+njYCqRDWBMkYIxUs6q8/TKS7K9WTbTETK"
                 " roslab-user-data")


@pytest.mark.cloud_config({"hostname": "roslab-keys", "ssh_authorized_keys": [USER_DATA_KEY]},
                          datasource="ec2")
def test_metadata_ssh_keys_join_the_user_datas(machine: Machine) -> None:
    """RancherOS merges the cloud's instance keys (metadata) into ssh_authorized_keys:
    both the key pair and the user-data's own keys let their owners in."""
    assert machine.ssh_key is not None
    pair = machine.ssh_key.public.split()[1]
    listed = yaml.safe_load(machine.run("sudo ros config get ssh_authorized_keys",
                                        check=True).output) or []
    authorized = machine.run("cat /home/rancher/.ssh/authorized_keys").output
    problems = []
    for what, key in (("the instance's key pair (metadata)", pair),
                      ("the user-data's key", USER_DATA_KEY.split()[1])):
        if not any(key in str(k) for k in listed):
            problems.append(f"`ros config get ssh_authorized_keys` lacks {what}")
        if key not in authorized:
            problems.append(f"~rancher/.ssh/authorized_keys lacks {what}")
    if (refused := _ssh_login(machine, machine.ssh_key.pkey())) is not None:
        problems.append(f"the key pair cannot log in: {refused}")
    assert not problems, "; ".join(problems)


USER_DATA_SCRIPT_OUT = "/home/rancher/user-data-script.txt"
# bash's own syntax (an array, [[ ]]): busybox sh could not run it
USER_DATA_SCRIPT = f"""#!/bin/bash
ran=(user-data script ran in bash as "$(id -un)")
[[ -n $BASH_VERSION ]] && echo "${{ran[*]}}" > {USER_DATA_SCRIPT_OUT}
"""


@pytest.mark.cloud_config(USER_DATA_SCRIPT, datasource="ec2")
def test_user_data_script_runs_at_boot(machine: Machine) -> None:
    """User-data that is a script, not cloud-config, runs once at boot as root; SSH comes
    by the cloud's key pair, as a script carries no keys."""
    got = machine.run(f"cat {USER_DATA_SCRIPT_OUT}").output.strip()
    assert got == "user-data script ran in bash as root", (
        f"the #!/bin/bash user-data did not run as root in bash: {USER_DATA_SCRIPT_OUT} "
        f"holds {got!r}")


MALFORMED = "#cloud-config\nhostname: roslab-bad\nwrite_files: [unclosed\n"


@pytest.mark.cloud_config(MALFORMED, allow_invalid=True)
def test_malformed_cloud_config_boots_to_a_usable_console(
    machine: Machine, profile: Profile
) -> None:
    assert machine.run("echo usable-$((40+2))").output.strip() == "usable-42"
    problems = []
    if machine.run("hostname").output.strip() == "roslab-bad":
        problems.append("a cloud-config that is not valid YAML was applied in part")
    log = machine.run(f"sudo cat {profile.cloud_init_log}").output
    console = machine.console_log.read_text(errors="replace")
    if "Failed to parse cloud-config" not in log + console:
        problems.append(f"the YAML error is neither in {profile.cloud_init_log} nor on the "
                        "console")
    assert not problems, "; ".join(problems)
