"""The guest's cloud-config rules, run here on the guest's own code: the config files'
merge order with the metadata's SSH keys, rancher.environment (proxies included) in
services, and how rancher.network picks an interface's entry. The scenarios check the
same on a booted image; these name the rule that broke in a second."""

from __future__ import annotations

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
