"""The guest's cloud-config rules, run here on the guest's own code: the config files'
merge order with the metadata's SSH keys, rancher.environment (proxies included) in
services, how rancher.network picks an interface's entry and reads `vlans`, the kernel
arguments after `--`, and write_files over a link. The scenarios check the
same on a booted image; these name the rule that broke in a second."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

GUEST = Path(__file__).parents[1] / "refimage/guest/rootfs/usr/lib/ros"


@pytest.fixture(scope="module")
def ros() -> dict[str, ModuleType]:
    sys.path.insert(0, str(GUEST))
    try:
        from ros import commands, config, services
    finally:
        sys.path.pop(0)
    return {"config": config, "services": services, "commands": commands}


def test_load_merges_files_in_order_then_cmdline_then_metadata(
        ros: dict[str, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ros["config"]
    conf_d = tmp_path / "cloud-config.d"
    conf_d.mkdir()
    files = {
        tmp_path / "os-config.yml": {"rancher": {"environment": {"A": "os"}}},
        conf_d / "20-b.yml": {"rancher": {"environment": {"A": "20", "B": "20"}}},
        conf_d / "10-a.yml": {"rancher": {"environment": {"A": "10", "C": "10"}},
                              "ssh_authorized_keys": ["ssh-ed25519 AAAA user"]},
        tmp_path / "cloud-config.yml": {"rancher": {"environment": {"B": "cc"}}},
        tmp_path / "metadata": {"ssh_keys": ["ssh-ed25519 AAAA user", "ssh-rsa BBBB meta"]},
    }
    for path, data in files.items():
        path.write_text(yaml.safe_dump(data))
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("rancher.environment.C=cmdline\n")
    monkeypatch.setattr(config, "OS_CONFIG", str(tmp_path / "os-config.yml"))
    monkeypatch.setattr(config, "CLOUD_CONFIG_D", str(conf_d))
    monkeypatch.setattr(config, "CLOUD_CONFIG", str(tmp_path / "cloud-config.yml"))
    monkeypatch.setattr(config, "METADATA", str(tmp_path / "metadata"))
    real_tokens = config.cmdline_tokens
    monkeypatch.setattr(config, "cmdline_tokens", lambda path=str(cmdline): real_tokens(path))
    cfg = config.load()
    assert cfg["rancher"]["environment"] == {"A": "20", "B": "cc", "C": "cmdline"}
    assert cfg["ssh_authorized_keys"] == ["ssh-ed25519 AAAA user", "ssh-rsa BBBB meta"]


def test_service_environment_and_interpolation(ros: dict[str, ModuleType]) -> None:
    config, services = ros["config"], ros["services"]
    cfg = {"rancher": {"environment": {"TAG": "v1", "ETCD_A": "a", "ETCD_B": "b"},
                       "network": {"http_proxy": "http://p:3128"}}}
    env = config.environment(cfg)
    assert env["HTTP_PROXY"] == env["http_proxy"] == "http://p:3128"
    body = services.container_config("svc", {
        "image": "img:${TAG}", "command": "sh -c 'echo $$HOME ${UNSET}'",
        "environment": ["ETCD_*", "HTTP_PROXY", "X=${TAG}", "MISSING"],
        "restart": "on-failure:3"}, env)
    assert body["Image"] == "img:v1"
    assert body["Cmd"] == ["sh", "-c", "echo $HOME "]
    assert sorted(body["Env"]) == ["ETCD_A=a", "ETCD_B=b", "HTTP_PROXY=http://p:3128", "X=v1"]
    assert body["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}


def test_interface_entry_mac_then_name_then_glob(ros: dict[str, ModuleType],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    commands = ros["commands"]
    macs = {"eth0": "52:54:00:12:34:56", "eth1": "02:00:00:00:00:01"}
    monkeypatch.setattr(commands, "_mac", lambda link: macs.get(link, ""))
    ifaces = {"eth*": {"n": "glob"}, "eth0": {"n": "name"},
              "mac=02:00:00:00:00:01": {"n": "mac"}, "eth1": {"n": "name1"},
              "renamed": {"match": "eth2", "n": "match"}}
    picked = {link: (commands.interface_config(link, ifaces) or {}).get("n")
              for link in ("eth0", "eth1", "eth2", "eth3", "wlan0")}
    assert picked == {"eth0": "name", "eth1": "mac", "eth2": "match", "eth3": "glob",
                      "wlan0": None}


def test_vlans_spec_as_rancheros_writes_it(ros: dict[str, ModuleType]) -> None:
    vlans = ros["commands"]._vlans
    assert vlans("100,200:foobar") == [(100, None), (200, "foobar")]
    assert vlans([300, "400:vl"]) == [(300, None), (400, "vl")]
    assert vlans(None) == []


def test_arguments_after_double_dash_are_kept_for_root_and_hidden(
        ros: dict[str, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ros["config"]
    monkeypatch.setattr(config, "CLOUD_CONFIG_D", str(tmp_path / "cloud-config.d"))
    monkeypatch.setattr(config, "INIT_YML", str(tmp_path / "cloud-config.d/init.yml"))
    monkeypatch.setattr(config, "VISIBLE_CMDLINE", str(tmp_path / "run/cmdline"))
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 rancher.state.wait -- cc.hostname=hid "
                       "rancher.environment.SECRET=s3\n")
    config.save_hidden_cmdline(str(cmdline))
    saved = yaml.safe_load((tmp_path / "cloud-config.d/init.yml").read_text())
    assert saved == {"hostname": "hid", "rancher": {"environment": {
        "SECRET": "s3", "EXTRA_CMDLINE": "/init cc.hostname=hid rancher.environment.SECRET=s3"}}}
    assert (tmp_path / "cloud-config.d/init.yml").stat().st_mode & 0o077 == 0
    assert (tmp_path / "run/cmdline").read_text() == "console=ttyS0 rancher.state.wait\n"


def test_write_files_replaces_a_link_not_its_target(ros: dict[str, ModuleType],
                                                    tmp_path: Path) -> None:
    sys.path.insert(0, str(GUEST))
    try:
        from ros import cloudinit
    finally:
        sys.path.pop(0)
    (tmp_path / "busybox").write_text("the real busybox")
    (tmp_path / "test").symlink_to("busybox")
    cloudinit.replace_file(str(tmp_path / "test"), b"#!/bin/bash\n", 0o755, os.getuid(),
                           os.getgid())
    assert (tmp_path / "busybox").read_text() == "the real busybox"
    assert not (tmp_path / "test").is_symlink()
    assert (tmp_path / "test").read_bytes() == b"#!/bin/bash\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busybox", "test"]
