"""Secrets out of evidence: a run's console logs, kept artifacts, JUnit and allure results
and error messages never hold the console password or a cloud-config's secret values.

The per-run console password is on the kernel command line, which the kernel prints on
the console; the tiny guest prints it again from /proc/cmdline in a failing command.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.errors import CommandError
from lab.redact import keep_cloud_config_secrets, keep_secret, redact

ROOT = Path(__file__).resolve().parents[1]
DB_PASSWORD = "hunter2-db-secret"

# the secret comes from the environment: a literal in the scenario's source would be
# quoted by pytest's traceback, which is the user's code, not the lab's evidence
SCENARIO = '''
import os, pathlib, pytest
DB_PASSWORD = os.environ["DB_PASSWORD"]
cloud_config = {"hostname": "redact", "rancher": {"environment": {"DB_PASSWORD": DB_PASSWORD}}}

def test_prints_its_secrets(machine):
    pathlib.Path(os.environ["PASSWORD_FILE"]).write_text(machine.password)
    # the guest got the real values: only the evidence is redacted
    assert DB_PASSWORD in machine.run("cat /media/config-2/openstack/latest/user_data").output
    machine.run("cat /proc/cmdline; grep -h DB_PASSWORD /media/config-2/openstack/latest/*; "
                "false", check=True)
'''


def test_redact_replaces_every_known_secret_and_names_it() -> None:
    keep_secret("s3cr3t-value-1", "token A")
    keep_secret("s3cr3t-value-1-longer", "token B")  # contains A: replaced whole
    keep_secret("short", "ignored")  # too short to redact without mangling ordinary words
    text = redact("a s3cr3t-value-1 b s3cr3t-value-1-longer c short")
    assert text == "a [redacted: token A] b [redacted: token B] c short"


def test_cloud_config_values_under_secret_keys_are_kept_secret() -> None:
    keep_cloud_config_secrets({"rancher": {
        "environment": {"API_TOKEN": "tok-123456", "REGION": "eu-west-1"},
        "services": {"db": {"environment": ["MYSQL_ROOT_PASSWORD=pw-abcdef", "TZ=UTC+01"]}},
    }})
    assert "tok-123456" not in redact("x tok-123456")
    assert "pw-abcdef" not in redact("x pw-abcdef")
    assert redact("eu-west-1 TZ=UTC+01") == "eu-west-1 TZ=UTC+01"


def test_lab_errors_never_quote_a_secret() -> None:
    keep_secret("err-secret-42", "console password")
    err = CommandError("command 'cat /proc/cmdline' failed: rancher.password=err-secret-42")
    assert "err-secret-42" not in str(err)
    assert "[redacted: console password]" in str(err)


def test_no_artifact_of_a_failed_run_holds_a_secret(tiny_guests: dict, tmp_path: Path) -> None:
    (tmp_path / "test_redact.py").write_text(SCENARIO)
    password_file = tmp_path / "password"
    results, junit, allure = tmp_path / "results", tmp_path / "junit.xml", tmp_path / "allure"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "test_redact.py"), "-p",
         "no:cacheprovider", "-q", "--platform", "qemu", "--image", str(tiny_guests["shell"]),
         "--accel", "tcg", "--roslab-artifacts", str(results), "--junitxml", str(junit),
         "--alluredir", str(allure), "--rootdir", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PASSWORD_FILE": str(password_file), "DB_PASSWORD": DB_PASSWORD},
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]  # the scenario fails on purpose
    password = password_file.read_text()
    assert len(password) >= 8
    evidence = [p for p in (results, allure) if p.exists() for p in p.rglob("*") if p.is_file()]
    evidence += [junit]
    names = {p.name for p in evidence}
    assert {"console.log", "serial.raw", "cloud-config.yml"} <= names, names
    for path in evidence:
        text = path.read_bytes().decode(errors="replace")
        for secret in (password, DB_PASSWORD):
            assert secret not in text, f"{secret!r} in {path}"
    for output in (proc.stdout, proc.stderr):
        assert password not in output and DB_PASSWORD not in output
    console = (results.rglob("console.log").__next__()).read_text()
    assert "rancher.password=[redacted: console password]" in console
    assert "[redacted: rancher.environment.DB_PASSWORD]" in junit.read_text()


def test_ssh_private_keys_stay_private(tmp_path: Path) -> None:
    from lab.ssh import KeyPair

    pair = KeyPair.generate(tmp_path / "keys")
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert pair.private_path.stat().st_mode & 0o777 == 0o600
    private = pair.private_path.read_text()
    body = private.splitlines()[1:-1]
    assert body and not any(line in redact(private) for line in body)


def _cloud_secrets(platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Start the cloud's stand-in (which sets the credentials a user would), let the driver
    read them as it does before a launch, and return the secret values it was given."""
    import json

    import yaml

    from drivers import driver_class
    from drivers.rehearsal import aliyun as aliyun_standin
    from drivers.rehearsal import cloudstack as cloudstack_standin
    from drivers.rehearsal import digitalocean as digitalocean_standin
    from drivers.rehearsal import gce as gce_standin
    from drivers.rehearsal import openstack as openstack_standin

    if platform == "aws":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + secrets.token_hex(8).upper())
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"aws-secret-{secrets.token_hex(16)}")
        monkeypatch.setenv("AWS_SESSION_TOKEN", f"aws-token-{secrets.token_hex(16)}")
        from drivers.aws import make_session
        make_session("us-east-1")
        return [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_SESSION_TOKEN"]]
    serve = {"openstack": openstack_standin, "gce": gce_standin,
             "digitalocean": digitalocean_standin, "cloudstack": cloudstack_standin,
             "aliyun": aliyun_standin}[platform].serve
    standin = serve(tmp_path, monkeypatch)
    try:
        driver_class(platform)._connect()
    finally:
        standin.stop()
    if platform == "openstack":
        config = yaml.safe_load(Path(os.environ["OS_CLIENT_CONFIG_FILE"]).read_text())
        return [config["clouds"][os.environ["OS_CLOUD"]]["auth"]["password"]]
    if platform == "gce":
        key = json.loads(Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
        return [line for line in key["private_key"].splitlines() if "PRIVATE KEY" not in line]
    return [os.environ[{"digitalocean": "DIGITALOCEAN_TOKEN", "cloudstack": "CLOUDSTACK_SECRET",
                        "aliyun": "ALIBABA_CLOUD_ACCESS_KEY_SECRET"}[platform]]]


@pytest.mark.parametrize("platform",
                         ["aws", "openstack", "gce", "digitalocean", "cloudstack", "aliyun"])
def test_cloud_credentials_the_drivers_read_are_kept_secret(
        platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = _cloud_secrets(platform, tmp_path, monkeypatch)
    assert secrets
    for secret in secrets:
        evidence = redact(f"a console line, an error message: {secret} (end)")
        assert secret not in evidence, f"{platform}: a credential would reach the evidence"
        assert "[redacted:" in evidence


def test_the_console_password_is_not_on_qemus_command_line(make_tiny: Any) -> None:
    """A real QEMU boots the tiny guest, which logs rancher in only with the password it
    reads from its /proc/cmdline: the login works, and `ps` (any local user may run it)
    shows QEMU's arguments without the password."""
    machine = make_tiny("shell").boot(timeout=120)  # boot() logs in with the password
    password = machine.password
    assert len(password) >= 8
    assert f"rancher.password={password}" in machine.run("cat /proc/cmdline").output
    pid = machine.driver.proc.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    ps = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True,
                        text=True, check=True).stdout
    assert "qemu-system" in ps and "-kernel" in cmdline
    assert password not in cmdline and password not in ps
    config = machine.workdir / "kernel.cfg"
    assert config.stat().st_mode & 0o077 == 0  # the file it is in: its owner's only
