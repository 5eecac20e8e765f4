"""The guest `ros` CLI's pure logic, run here on the host: values typed as RancherOS types
them, the config schema's verdicts, export's filtering, and what `ros config set` and
`merge` write (to a temporary config folder). The booted checks are
scenarios/test_ros_cli.py."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

GUEST = Path(__file__).parents[1] / "refimage/guest/rootfs/usr/lib/ros"


@pytest.fixture
def ros(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The guest's `ros` package with its config files under tmp_path."""
    sys.path.insert(0, str(GUEST))
    try:
        import ros
        from ros import cli, config, config_cli  # noqa: F401 (loaded for the fixture's users)
    finally:
        sys.path.pop(0)
    os_config = tmp_path / "os-config.yml"
    os_config.write_text("hostname: rancher\nrancher:\n  docker:\n    extra_args: []\n")
    monkeypatch.setattr(config, "OS_CONFIG", str(os_config))
    monkeypatch.setattr(config, "CONF_DIR", str(tmp_path / "conf"))
    monkeypatch.setattr(config, "CLOUD_CONFIG", str(tmp_path / "conf/cloud-config.yml"))
    monkeypatch.setattr(config, "CLOUD_CONFIG_D", str(tmp_path / "conf/cloud-config.d"))
    monkeypatch.setattr(config, "cmdline_tokens", lambda path="": [])
    yield ros


@pytest.mark.parametrize(("text", "value"), [
    ("12", 12), ("true", True), ("no", False), ("[a,b]", ["a", "b"]),
    ("[registry.example:5000,b]", ["registry.example:5000", "b"]),
    ("http://127.0.0.1:1/x?y=1", "http://127.0.0.1:1/x?y=1"), ("8.8.8.8", "8.8.8.8"),
    ("two words", "two words"), ("line\nline", "line\nline"), ("", ""),
])
def test_values_are_typed_as_rancheros_types_them(ros: ModuleType, text: str,
                                                   value: object) -> None:
    assert ros.config_cli.typed(text) == value


def test_set_merge_and_export(ros: ModuleType, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    cli, config = ros.cli, ros.config
    assert cli.main(["config", "set", "rancher.network.dhcp_timeout", "12"]) == 0
    assert cli.main(["c", "set", "rancher.docker.server_key", "KEY\nLINES\n"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("rancher:\n  network:\n    mtu: 1400\n"))
    assert cli.main(["c", "merge"]) == 0
    saved = yaml.safe_load(Path(config.CLOUD_CONFIG).read_text())
    assert saved["rancher"]["network"] == {"dhcp_timeout": 12, "mtu": 1400}
    assert Path(config.CLOUD_CONFIG).stat().st_mode & 0o077 == 0  # it holds keys
    capsys.readouterr()
    cli.main(["c", "export"])
    assert "KEY" not in capsys.readouterr().out
    cli.main(["c", "export", "--private"])
    assert "server_key: |\n      KEY\n      LINES\n" in capsys.readouterr().out
    assert cli.main(["c", "set", "rancher.network.dhcp_timeout.x", "1"]) == 1
    assert "rancher.network.dhcp_timeout is a int, not a map" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "errors"), [
    ("hostname: a\nrancher:\n  docker:\n    tls: true\n", []),
    ("hostnme: a\n", ["(root): Additional property hostnme is not allowed"]),
    ("rancher:\n  network:\n    dhcp_timeout: soon\n",
     ["rancher.network.dhcp_timeout: Invalid type. Expected: integer, given: string"]),
    ("write_files:\n- path: /x\n  mode: 1\n",
     ["write_files.0: Additional property mode is not allowed"]),
])
def test_validation_names_unknown_keys_and_wrong_types(ros: ModuleType, text: str,
                                                       errors: list[str]) -> None:
    assert ros.config_cli.validation_errors(yaml.safe_load(text)) == errors


def test_validate_exit_status(ros: ModuleType, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    for text, rc in (("hostname: a\n", 0), ("bogus: 1\n", 1), ("a: [b\n", 1)):
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        assert ros.cli.main(["config", "validate"]) == rc, text


def test_unsupported_subcommands_say_why(ros: ModuleType,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert ros.cli.main(["engine", "switch", "docker-18.09.9"]) == 1
    assert "ros engine switch: not supported by this image" in capsys.readouterr().err


class _SystemDocker:
    """Stands in for the system Docker's API: the `console` container as inspect gives it."""

    console: dict | None = None

    def __init__(self, sock: str = "", timeout: float = 120) -> None:
        pass

    def inspect(self, name: str) -> dict | None:
        return self.console if name == "console" else None


@pytest.mark.parametrize(("console", "expected"), [
    ({"State": {"Running": True}, "Config": {"Image": "roslab/os-base:v1",
                                             "Labels": {"io.rancher.os.console": "default"}}},
     ["current  default"]),
    ({"State": {"Running": True}, "Config": {"Image": "rancher/os-alpineconsole:v1.5.8"}},
     ["enabled  default", "current  alpine"]),  # RancherOS names a console by its image
    ({"State": {"Running": False}, "Config": {"Image": "rancher/os-console:v1.5.8"}},
     ["enabled  default"]),  # no console runs: none is current
    (None, ["enabled  default"]),
])
def test_console_list_names_the_console_container_that_runs(
        ros: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        console: dict | None, expected: list[str]) -> None:
    from ros import docker_api
    monkeypatch.setattr(_SystemDocker, "console", console)
    monkeypatch.setattr(docker_api, "Docker", _SystemDocker)
    assert ros.cli.main(["console", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
