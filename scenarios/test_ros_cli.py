"""The `ros` CLI as RancherOS users rely on it: `ros config` edits the saved cloud-config
with typed values, `ros service` turns optional services on and runs them under the
system Docker, `ros env` exports rancher.environment, `ros tls gen` gives the user Docker
TLS on port 2376, and `ros dev`, `ros os version`, `ros engine list`, `ros console list`
report the machine.

Every check uses RancherOS's own commands (as its docs show them, with sudo), so it holds
on a real RancherOS image too; one machine serves them all, and the TLS check, which
restarts the user Docker, comes last.
"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from fixtures.guest import user_docker_back
from fixtures.profiles import Profile
from lab.machine import Machine

SAVED = "/var/lib/rancher/conf/cloud-config.yml"
GREETING = "hello-from-rancher-environment"
cloud_config = {"rancher": {"environment": {"ROSLAB_GREETING": GREETING}}}


def _saved(machine: Machine) -> dict:
    """The saved cloud-config (what `ros config set` and `merge` write), read as YAML."""
    return yaml.safe_load(machine.run(f"sudo cat {SAVED}", check=True).output) or {}


def _dig(data: dict, key: str) -> object:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _get(machine: Machine, key: str) -> str:
    return machine.run(f"sudo ros config get {key}", check=True).output.strip()


def test_ros_version_is_the_os_version(machine: Machine) -> None:
    version = machine.run("ros os version", check=True).output.strip()
    flag = machine.run("ros -v", check=True).output.strip()
    release = machine.run("cat /etc/os-release", check=True).output
    problems = []
    if flag != f"ros version {version}":
        problems.append(f"`ros -v` says {flag!r}, expected 'ros version {version}'")
    if not version or version not in release:
        problems.append(f"`ros os version` says {version!r}, not the version in "
                        f"/etc/os-release:\n{release}")
    assert not problems, "; ".join(problems)


# (key, value as typed on the command line, value expected in the saved cloud-config)
TYPED = [
    ("rancher.network.dhcp_timeout", "12", 12),
    ("rancher.log", "true", True),
    ("rancher.docker.insecure_registry", "[registry.example:5000,mirror.example]",
     ["registry.example:5000", "mirror.example"]),
    ("rancher.upgrade.url", "http://127.0.0.1:1/releases.yml?x=1",
     "http://127.0.0.1:1/releases.yml?x=1"),
]


def test_config_set_saves_typed_values(machine: Machine) -> None:
    for key, text, _ in TYPED:
        machine.run(f"sudo ros config set {key} {shlex.quote(text)}", check=True)
    saved = _saved(machine)
    wrong = [f"{key}: saved {_dig(saved, key)!r}, expected {want!r}"
             for key, _, want in TYPED if _dig(saved, key) != want]
    shown = {key: _get(machine, key) for key, _, _ in TYPED}
    expected = {key: yaml.safe_dump(want, default_flow_style=False).strip()
                if isinstance(want, list) else str(want).lower() if isinstance(want, bool)
                else str(want) for key, _, want in TYPED}
    wrong += [f"`ros config get {key}` says {shown[key]!r}, expected {expected[key]!r}"
              for key in shown if shown[key] != expected[key]]
    assert not wrong, f"`ros config set` in {SAVED}: " + "; ".join(wrong)


def test_config_export_shows_private_keys_only_when_asked(machine: Machine) -> None:
    # the console keeps the SSH host keys in rancher.ssh.keys, a private key
    pub = "$(sudo cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub)"
    plain = machine.run(f"sudo ros config export | grep -c -e PRIVATE -e {pub}").output
    private = machine.run(f"sudo ros config export --private | grep -c -e PRIVATE -e {pub}"
                          ).output
    problems = []
    if plain.strip() != "0":
        problems.append(f"plain export shows {plain.strip()} line(s) of host keys")
    if not private.strip().isdigit() or int(private) < 2:
        problems.append(f"--private shows {private.strip()!r} line(s) of host keys, "
                        "expected the private and public ed25519 host key")
    assert not problems, "`ros config export`: " + "; ".join(problems)


def test_config_merge_adds_to_the_saved_config(machine: Machine) -> None:
    machine.run("sudo ros config set rancher.upgrade.image roslab/kept-by-merge", check=True)
    machine.run("printf 'rancher:\\n  network:\\n    dns:\\n      search: [roslab.test]\\n'"
                " | sudo ros config merge", check=True)
    machine.run("printf 'rancher:\\n  sysctl:\\n    vm.swappiness: 10\\n' > /tmp/merge.yml"
                " && sudo ros config merge -i /tmp/merge.yml", check=True)
    saved = _saved(machine)
    problems = []
    if _dig(saved, "rancher.upgrade.image") != "roslab/kept-by-merge":
        problems.append("the value set before (rancher.upgrade.image) is gone")
    if _dig(saved, "rancher.network.dns.search") != ["roslab.test"]:
        problems.append("the YAML from stdin (rancher.network.dns.search) is missing")
    if (_dig(saved, "rancher.sysctl") or {}).get("vm.swappiness") != 10:
        problems.append("the YAML from -i (rancher.sysctl vm.swappiness) is missing")
    assert not problems, f"`ros config merge` left {SAVED} as {saved}: " + "; ".join(problems)


def test_config_validate_reports_unknown_keys_and_bad_yaml(machine: Machine) -> None:
    def validate(text: str) -> tuple[int, str]:
        fmt = shlex.quote(text.replace("\n", "\\n"))
        result = machine.run(f"printf {fmt} | sudo ros config validate 2>&1")
        return result.rc, result.output.strip()

    good = validate("hostname: roslab\nrancher:\n  docker:\n    tls: true\n")
    unknown = validate("rancher:\n  roslab_no_such_key: 1\n")
    broken = validate("rancher: [unclosed\n")
    problems = []
    if good != (0, ""):
        problems.append(f"a valid cloud-config gave exit {good[0]} and {good[1]!r}")
    if "roslab_no_such_key" not in unknown[1]:
        problems.append(f"an unknown key was not named: exit {unknown[0]}, {unknown[1]!r}")
    if broken[0] == 0:
        problems.append(f"invalid YAML exited 0 ({broken[1]!r})")
    assert not problems, "`ros config validate`: " + "; ".join(problems)


def _listed(machine: Machine) -> dict[str, str]:
    out = machine.run("sudo ros service list", check=True).output
    return {parts[1]: parts[0] for line in out.splitlines() if len(parts := line.split()) == 2}


def test_service_enable_and_disable_persist_in_services_include(
        machine: Machine, profile: Profile) -> None:
    name = profile.optional_service
    if name is None:
        pytest.skip(f"profile {profile.name} names no optional service")
    before = _listed(machine).get(name)
    machine.run(f"sudo ros service enable {name}", check=True)
    enabled = (_listed(machine).get(name), _dig(_saved(machine), "rancher.services_include"))
    machine.run(f"sudo ros service disable {name}", check=True)
    disabled = (_listed(machine).get(name), _dig(_saved(machine), "rancher.services_include"))
    problems = []
    if before != "disabled":
        problems.append(f"before enabling, `ros service list` says {before!r}")
    if enabled != ("enabled", {**(enabled[1] or {}), name: True}):
        problems.append(f"after enable: listed {enabled[0]!r}, services_include {enabled[1]}")
    if disabled != ("disabled", {**(disabled[1] or {}), name: False}):
        problems.append(f"after disable: listed {disabled[0]!r}, "
                        f"services_include {disabled[1]}")
    assert not problems, f"`ros service enable/disable {name}`: " + "; ".join(problems)


def test_service_up_logs_stop_drive_its_system_container(
        machine: Machine, profile: Profile) -> None:
    name = profile.optional_service
    if name is None:
        pytest.skip(f"profile {profile.name} names no optional service")
    running = f"sudo system-docker inspect --format '{{{{.State.Running}}}}' {name}"
    machine.run(f"sudo ros service enable {name}", check=True)
    try:
        machine.run(f"sudo ros service up {name}", timeout=300, check=True)
        # `ros service up` has started it when it returns: a few looks, not a long wait
        up = machine.wait_until(lambda: machine.run(running).output.strip() == "true",
                                timeout=5)
        expected = machine.run(f"sudo system-docker logs {name} 2>&1").output.strip()
        logs = machine.run(f"sudo ros service logs {name}").output
        machine.run(f"sudo ros service stop {name}", timeout=120, check=True)
        after_stop = machine.run(running).output.strip()
    finally:
        machine.run(f"sudo ros service disable {name}")
    problems = []
    if not up:
        problems.append(f"after `up` the container is not running ({machine.run(running)})")
    if not expected or expected.splitlines()[-1] not in logs:
        problems.append(f"`ros service logs` printed {logs[-300:]!r}, the container's log "
                        f"ends {expected[-300:]!r}")
    if after_stop != "false":
        problems.append(f"after `stop` its running state is {after_stop!r}")
    assert not problems, f"`ros service` on {name}: " + "; ".join(problems)


def test_ros_env_exports_rancher_environment(machine: Machine) -> None:
    show = "sh -c 'echo \"$ROSLAB_GREETING\"'"
    got = machine.run(f"sudo ros env {show}").output.strip()
    mine = machine.run(f"sudo ROSLAB_GREETING=mine ros env {show}").output.strip()
    problems = []
    if got != GREETING:
        problems.append(f"the command saw ROSLAB_GREETING={got!r}, rancher.environment "
                        f"says {GREETING!r}")
    if mine != "mine":
        problems.append(f"the caller's own ROSLAB_GREETING=mine became {mine!r}")
    assert not problems, "`ros env`: " + "; ".join(problems)


def test_ros_dev_resolves_a_label(machine: Machine) -> None:
    if machine.spec.datasource != "configdrive":
        pytest.skip("no config drive (the labelled device this check resolves)")
    dev = machine.run("sudo ros dev LABEL=config-2", check=True).output.strip()
    none = machine.run("sudo ros dev LABEL=roslab-no-such-label").output.strip()
    problems = []
    if not re.fullmatch(r"/dev/\S+", dev) or not machine.run(f"test -b {dev}").ok:
        problems.append(f"LABEL=config-2 gave {dev!r}, not a block device")
    elif not machine.run(f"sudo head -c 65536 {dev} | grep -q config-2").ok:
        problems.append(f"LABEL=config-2 gave {dev}, which has no config-2 label")
    if none:
        problems.append(f"a label no device has gave {none!r}, expected nothing")
    assert not problems, "`ros dev`: " + "; ".join(problems)


def test_ros_engine_list_names_the_running_user_docker(machine: Machine) -> None:
    server = machine.run("docker version --format '{{.Server.Version}}'",
                         check=True).output.strip()
    listed = machine.run("sudo ros engine list", check=True).output.splitlines()
    current = [line.split()[1] for line in listed if line.startswith("current ")]
    assert len(current) == 1 and current[0] == f"docker-{server.split('+')[0]}", (
        f"`ros engine list` marks {current or 'no engine'} current; the user Docker runs "
        f"{server}: {listed}")


def _running_console(machine: Machine) -> tuple[str | None, str]:
    """The console the running `console` system container runs (None when it does not
    run or its image names none), read as RancherOS's `ros console list` reads it: from
    the image name (rancher/os-console -> default, rancher/os-alpineconsole -> alpine),
    or from the label io.rancher.os.console of an image whose services share one image;
    and what inspect said."""
    said = machine.run(
        "sudo system-docker inspect --format '{{.State.Running}}|{{.Config.Image}}|"
        "{{index .Config.Labels \"io.rancher.os.console\"}}' console 2>&1").output.strip()
    running, _, rest = said.partition("|")
    image, _, label = rest.partition("|")
    if running != "true":
        return None, said
    if label not in ("", "<no value>"):
        return label, said
    name = image.rsplit("/", 1)[-1].split(":")[0]
    if name == "os-console":
        return "default", said
    if name.startswith("os-") and name.endswith("console"):
        return name[len("os-"):-len("console")], said
    return None, said


def test_ros_console_list_marks_the_console_in_use_current(machine: Machine) -> None:
    # the console that runs, not the one the config asks for: they differ until a reboot
    console, said = _running_console(machine)
    assert console is not None, (
        f"no console system container runs whose console can be named; `system-docker "
        f"inspect console` (running|image|io.rancher.os.console) says: {said!r}")
    listed = machine.run("sudo ros console list", check=True).output.splitlines()
    current = [line.split()[1] for line in listed if line.startswith("current ")]
    assert current == [console], (
        f"`ros console list` does not mark {console!r} current (the running console "
        f"container's, by `system-docker inspect console`: {said!r}); it marks "
        f"{current or 'none'}: {listed}")


def test_tls_gen_makes_the_user_docker_serve_tls_on_2376(machine: Machine) -> None:
    """As RancherOS's docs set it up: server certificates, TLS on, restart, client
    certificates in ~/.docker; then only a client with them gets in."""
    for cmd in ("sudo ros config set rancher.docker.tls true",
                "sudo ros tls gen --server -H localhost -H 127.0.0.1",
                "sudo system-docker restart docker",
                "sudo ros tls gen"):
        machine.run(cmd, timeout=180, check=True)
    tls = "docker --tlsverify -H tcp://127.0.0.1:2376 version --format '{{.Server.Version}}'"
    # the restarted user dockerd answers in about 10 s (its iptables setup); 60 s is for
    # a loaded host. It binds every -H before it serves any, so once its own socket
    # answers, 2376 answers at once or not at all: a few seconds' grace, not another minute
    not_back = user_docker_back(machine, timeout=60)
    answered = not not_back and machine.wait_until(lambda: machine.run(tls).ok, timeout=5)
    plain = machine.run("docker -H tcp://127.0.0.1:2376 version --format "
                        "'{{.Server.Version}}'")
    owners = machine.run("stat -c %U ~/.docker/ca.pem ~/.docker/cert.pem ~/.docker/key.pem")
    problems = []
    if not_back:
        problems.append(f"after `system-docker restart docker`: {not_back}")
    elif not answered:
        problems.append(f"a TLS client with ~/.docker's certificates got no answer on 2376: "
                        f"{machine.run(tls).output.strip()[-300:]}")
    if plain.ok:
        problems.append("a client without TLS was answered on 2376")
    if owners.output.split() != ["rancher"] * 3:
        problems.append(f"the client certificates in ~/.docker: {owners.output.strip()!r}")
    assert not problems, "user Docker TLS: " + "; ".join(problems)
