"""cloud-config validation and delivery: the config drive ISO read back with pycdlib."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import pycdlib
import pytest

from lab.cloudconfig import CloudConfig, cmdline_args, config_drive, http_server
from lab.errors import ConfigError

TEXT = "#cloud-config\nhostname: roslab-test\nssh_authorized_keys:\n  - ssh-ed25519 AAAA x\n"


def _read(iso: pycdlib.PyCdlib, path: str, joliet: bool = False) -> bytes:
    buf = io.BytesIO()
    if joliet:
        iso.get_file_from_iso_fp(buf, joliet_path=path)
    else:
        iso.get_file_from_iso_fp(buf, rr_path=path)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("kind", "user_path", "meta_path"),
    [("config-2", "/openstack/latest/user_data", "/openstack/latest/meta_data.json"),
     ("cidata", "/user-data", "/meta-data")],
)
def test_config_drive_round_trip(tmp_path: Path, kind: str, user_path: str,
                                 meta_path: str) -> None:
    path = config_drive(CloudConfig.parse(TEXT), tmp_path / "cd.iso", kind, "vm1")
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == kind
        assert _read(iso, user_path).decode() == TEXT
        assert _read(iso, user_path, joliet=True).decode() == TEXT
        assert b"vm1" in _read(iso, meta_path)
    finally:
        iso.close()


def test_dict_becomes_cloud_config_text() -> None:
    cc = CloudConfig.parse({"hostname": "h", "runcmd": ["echo hi"]})
    assert cc.text.startswith("#cloud-config\n")
    assert CloudConfig.parse(cc.text).data == {"hostname": "h", "runcmd": ["echo hi"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [("hostname: x\n", "must start with '#cloud-config'"),
     ("#cloud-config\nhostname: [unclosed\n", "line 3, column 1"),
     ("#cloud-config\n- a\n- b\n", "must be a YAML mapping"),
     ("#cloud-config\nwrite_files:\n  - path: /x\n   content: y\n", "line 4")],
)
def test_malformed_cloud_config_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        CloudConfig.parse(text)


def test_invalid_cloud_config_can_be_sent_on_purpose() -> None:
    cc = CloudConfig.parse("#cloud-config\n: : nonsense [\n", allow_invalid=True)
    assert cc.data is None
    assert cc.merged({"ssh_authorized_keys": ["k"]}) is cc  # the exact bytes are kept


def test_a_user_data_script_is_sent_as_written_and_never_by_cmdline() -> None:
    script = "#!/bin/bash\necho hi > /tmp/x\n"
    cc = CloudConfig.parse(script)
    assert cc.script and cc.text == script and cc.data is None
    assert cc.merged({"ssh_authorized_keys": ["k"]}) is cc  # a script carries no keys
    with pytest.raises(ConfigError, match="a user-data script cannot be delivered by cmdline"):
        cmdline_args(cc)


def test_merge_appends_keys_once() -> None:
    cc = CloudConfig.parse(TEXT).merged({"ssh_authorized_keys": ["ssh-ed25519 BBBB y"]})
    assert cc.data is not None
    assert cc.data["ssh_authorized_keys"] == ["ssh-ed25519 AAAA x", "ssh-ed25519 BBBB y"]


def test_cmdline_keys() -> None:
    cc = CloudConfig.parse({"hostname": "h", "rancher": {"docker": {"extra_args": ["--debug"]}}})
    assert cmdline_args(cc) == ["cc.hostname=h", "rancher.docker.extra_args='[\"--debug\"]'"]


def test_http_server_serves_user_data_for_its_lifetime() -> None:
    cc = CloudConfig.parse(TEXT)
    with http_server(cc) as port:
        url = f"http://127.0.0.1:{port}/user-data"
        assert urllib.request.urlopen(url, timeout=5).read().decode() == TEXT
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_cmdline_round_trip_through_the_guest_reader(tmp_path: Path) -> None:
    """What the lab puts on the kernel command line, the guest's parser reads back intact."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "refimage/guest/rootfs/usr/lib/ros"))
    try:
        from ros import config as guest_config  # the guest's own reader, run here
    finally:
        sys.path.pop(0)
    data = {
        "hostname": "pi-1",
        "runcmd": ["echo one > /tmp/a", "echo 'two: 2' >> /tmp/a"],
        "write_files": [{"path": "/etc/x", "content": "line 1\nline \"2\"\n# not a comment\n",
                         "permissions": "0640"}],
        "rancher": {"docker": {"extra_args": ["--debug", "--label", "a=b c"]}, "flag": "true"},
    }
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS1,115200 root=/dev/mmcblk0p2 "
                       + " ".join(cmdline_args(CloudConfig.parse(data))) + "\n")
    assert guest_config.cmdline_config(guest_config.cmdline_tokens(str(cmdline))) == data
