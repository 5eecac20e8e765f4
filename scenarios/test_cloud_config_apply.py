"""cloud-config as RancherOS applies it, beyond the basics of test_cloud_config.py: the
config files' merge order, rancher.environment in services and the proxies, services
from cloud-config, write_files into a system container, mounts, sysctl, modules, the
hostname in /etc/hosts, bootcmd before runcmd, preloaded images, and a key the OS does not
know. One cloud-config carries all of them: the module costs one boot."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile

import pytest
import yaml

from fixtures.profiles import Profile
from lab.machine import Machine

HOSTNAME = "roslab-apply"
SERVICE = "roslab-envsvc"
GREETING = "hello-from-rancher-environment"
TAG = "v42"
PROXY = {"http_proxy": "http://10.0.2.2:3128", "https_proxy": "http://10.0.2.2:3129",
         "no_proxy": "localhost,127.0.0.1"}
IN_SERVICE = ("/etc/roslab/in-service.txt", "written into the custom service\n", "640")
IN_NTP = ("/etc/roslab/in-ntp.txt", "written into ntp\n", "600")
PRELOADED = "roslab/preloaded:1"
MOUNT_POINT = "/mnt/roslab-tmp"
# RancherOS's four-field forms: empty options, `defaults`, an empty type (a bind mount),
# outside /mnt too
HOME_MOUNT = "/home/rancher/roslab-mnt"
FOUR_FIELD_MOUNTS = [["tmpfs", HOME_MOUNT, "tmpfs", ""],
                     ["tmpfs", "/mnt/roslab-defaults", "tmpfs", "defaults"],
                     ["/usr/share/ros", "/opt/roslab-bind", "", "bind"]]
SYSCTL = {"net.ipv4.tcp_keepalive_time": "4321", "vm.swappiness": "17"}
MODULE = "sch_prio"  # a qdisc module nothing loads by itself
UNKNOWN_KEY = "packages"  # Ubuntu cloud-init's, not RancherOS's


def _image_tarball(tag: str) -> bytes:
    """A `docker save` archive of a one-file image, made here (no registry needed)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = b"preloaded\n"
        info = tarfile.TarInfo("roslab-preloaded.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer_sha = hashlib.sha256(layer.getvalue()).hexdigest()
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_sha}"]},
    }).encode()
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag],
                            "Layers": [f"{layer_sha}/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in ((f"{layer_sha}/layer.tar", layer.getvalue()),
                           (config_name, image_config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _conf_d(name: str, environment: dict[str, str]) -> dict:
    return {"path": f"/var/lib/rancher/conf/cloud-config.d/{name}",
            "content": yaml.safe_dump({"rancher": {"environment": environment}})}


def cloud_config_for(profile: Profile) -> dict:
    """Every test here shares one machine; its service runs an image the system Docker
    has, which the profile names (it is versioned)."""
    system_image = profile.system_image
    return {
        "hostname": HOSTNAME,
        "bootcmd": ["echo bootcmd >> /home/rancher/order.log"],
        "runcmd": ["echo runcmd >> /home/rancher/order.log"],
        "write_files": [
            {"path": IN_SERVICE[0], "content": IN_SERVICE[1], "permissions": f"0{IN_SERVICE[2]}",
             "container": SERVICE},
            {"path": IN_NTP[0], "content": IN_NTP[1], "permissions": f"0{IN_NTP[2]}",
             "container": "ntp"},
            # later files win, by name: boot.yml (the user-data) comes after both
            _conf_d("10-roslab.yml", {"ROSLAB_ORDER": "ten", "ROSLAB_ONLY_TEN": "kept"}),
            _conf_d("20-roslab.yml", {"ROSLAB_ORDER": "twenty", "ROSLAB_GREETING": "from-20"}),
            {"path": "/var/lib/rancher/preload/docker/roslab-preloaded.tar",
             "content": base64.b64encode(_image_tarball(PRELOADED)).decode(), "encoding": "b64"},
        ],
        "mounts": [["tmpfs", MOUNT_POINT, "tmpfs", "size=4m"], *FOUR_FIELD_MOUNTS],
        UNKNOWN_KEY: ["vim"],
        "rancher": {
            "environment": {"ROSLAB_GREETING": GREETING, "ROSLAB_TAG": TAG},
            "network": dict(PROXY),
            "sysctl": {k: int(v) for k, v in SYSCTL.items()},
            "modules": [MODULE],
            "services": {
                SERVICE: {
                    "image": system_image,
                    # $$ is a literal $: the service's shell reads its environment
                    "command": "sh -c 'echo \"$$ROSLAB_GREETING\" > /data/greeting; "
                               "exec sleep 86400'",
                    "environment": ["ROSLAB_GREETING", "ROSLAB_TAGGED=tag-${ROSLAB_TAG}",
                                    "HTTP_PROXY"],
                    "volumes": ["/home/rancher/envsvc:/data"],
                    "labels": {"io.roslab.tag": "${ROSLAB_TAG}", "io.rancher.os.scope": "system"},
                    "restart": "unless-stopped",
                    "net": "host",
                },
            },
        },
    }


def _ros_get(machine: Machine, key: str) -> str:
    return machine.run(f"ros config get {key}", check=True).output.strip()


def test_config_files_merge_in_order(machine: Machine) -> None:
    got = {k: _ros_get(machine, f"rancher.environment.{k}")
           for k in ("ROSLAB_ORDER", "ROSLAB_ONLY_TEN", "ROSLAB_GREETING")}
    want = {"ROSLAB_ORDER": "twenty", "ROSLAB_ONLY_TEN": "kept", "ROSLAB_GREETING": GREETING}
    assert got == want, (
        f"cloud-config.d/10-roslab.yml, 20-roslab.yml and the user-data merged as {got}, "
        f"expected {want} (maps merge key by key, later files by name win)")


def _inspect(machine: Machine, name: str, fmt: str) -> str:
    return machine.run(f"sudo system-docker inspect --format '{fmt}' {name}",
                       check=True).output.strip()


def test_service_gets_environment_volumes_labels_restart(machine: Machine) -> None:
    env = json.loads(_inspect(machine, SERVICE, "{{json .Config.Env}}"))
    wanted = [f"ROSLAB_GREETING={GREETING}", f"ROSLAB_TAGGED=tag-{TAG}",
              f"HTTP_PROXY={PROXY['http_proxy']}"]
    problems = [f"its environment lacks {want}" for want in wanted if want not in env]
    label = _inspect(machine, SERVICE, '{{index .Config.Labels "io.roslab.tag"}}')
    if label != TAG:
        problems.append(f"label io.roslab.tag is {label!r}, not ${{ROSLAB_TAG}} = {TAG!r}")
    restart = _inspect(machine, SERVICE, "{{.HostConfig.RestartPolicy.Name}}")
    if restart != "unless-stopped":
        problems.append(f"restart policy {restart!r}, expected 'unless-stopped'")
    got = machine.run("cat /home/rancher/envsvc/greeting").output.strip()
    if got != GREETING:
        problems.append(f"/data (the volume /home/rancher/envsvc) holds {got!r}, "
                        f"expected {GREETING!r} from the service's environment")
    assert not problems, f"rancher.services.{SERVICE}: " + "; ".join(problems)


@pytest.mark.parametrize(("container", "entry"), [(SERVICE, IN_SERVICE), ("ntp", IN_NTP)],
                         ids=["created-after-cloud-init", "running-before-cloud-init"])
def test_write_files_into_a_system_container(machine: Machine, container: str,
                                            entry: tuple[str, str, str]) -> None:
    path, content, mode = entry
    problems = []
    got = machine.run(f"sudo system-docker exec {container} cat {path}").output
    if got.strip() != content.strip():
        problems.append(f"it holds {got.strip()!r}, expected {content.strip()!r}")
    got_mode = machine.run(f"sudo system-docker exec {container} stat -c %a {path}").output
    if got_mode.strip() != mode:
        problems.append(f"mode {got_mode.strip()!r}, expected {mode}")
    if machine.run(f"test -e {path}").ok:
        problems.append("it was written in the console too")
    assert not problems, f"write_files {path} with container: {container}: " + "; ".join(problems)


def test_hostname_is_in_etc_hosts(machine: Machine) -> None:
    hosts = machine.run("cat /etc/hosts", check=True).output
    loopback = [line.split() for line in hosts.splitlines()
                if line.split() and line.split()[0].startswith("127.")]
    assert any(HOSTNAME in fields[1:] for fields in loopback), (
        f"/etc/hosts names {HOSTNAME!r} on no loopback line:\n{hosts}")


def test_sysctl_and_modules_applied(machine: Machine) -> None:
    problems = []
    for key, want in SYSCTL.items():
        got = machine.run(f"cat /proc/sys/{key.replace('.', '/')}").output.strip()
        if got != want:
            problems.append(f"rancher.sysctl {key} is {got!r}, expected {want}")
    if not machine.run(f"test -d /sys/module/{MODULE}").ok:
        problems.append(f"rancher.modules: {MODULE} is not loaded")
    assert not problems, "; ".join(problems)


def test_mount_is_made_and_seen_in_the_console(machine: Machine) -> None:
    mounts = machine.run("cat /proc/mounts", check=True).output
    fstypes = [f[2] for f in (line.split() for line in mounts.splitlines())
               if len(f) > 2 and f[1] == MOUNT_POINT]
    assert fstypes == ["tmpfs"], (
        f"mounts [tmpfs, {MOUNT_POINT}, tmpfs, size=4m]: the console sees "
        f"{fstypes or 'nothing'} mounted there")


def _unseen_mounts(machine: Machine) -> list[str]:
    """The FOUR_FIELD_MOUNTS the console does not see."""
    mounts = machine.run("cat /proc/mounts", check=True).output
    points = {f[1]: f[2] for f in (line.split() for line in mounts.splitlines()) if len(f) > 2}
    unseen = [f"{where} ({fstype or 'bind'})" for _, where, fstype, _ in FOUR_FIELD_MOUNTS
              if fstype and points.get(where) != fstype]
    if not machine.run("test -f /opt/roslab-bind/os-config.yml").ok:
        unseen.append("/opt/roslab-bind (bind of /usr/share/ros)")
    return unseen


def test_four_field_mounts_reach_the_console(machine: Machine) -> None:
    unseen = _unseen_mounts(machine)
    assert not unseen, (f"mounts {FOUR_FIELD_MOUNTS}: the console sees nothing mounted at "
                        f"{', '.join(unseen)}")


def test_cloud_init_execute_makes_the_mounts_again(machine: Machine) -> None:
    # as after formatting a disk named in `mounts`: it is mounted when cloud-init runs again
    machine.run(f"sudo nsenter -t 1 -m umount {HOME_MOUNT}")
    ran = machine.run("sudo cloud-init-execute", timeout=120)
    unseen = _unseen_mounts(machine)
    assert not unseen, (f"after `sudo cloud-init-execute` (exit {ran.rc}) the console sees "
                        f"nothing mounted at {', '.join(unseen)}: {ran.output.strip()[-300:]}")


def test_bootcmd_runs_before_runcmd(machine: Machine) -> None:
    lines = machine.run("cat /home/rancher/order.log", check=True).output.split()
    assert lines == ["bootcmd", "runcmd"], (
        f"bootcmd and runcmd ran as {lines}, expected bootcmd once, then runcmd once")


def test_proxies_reach_the_user_docker(machine: Machine) -> None:
    fmt = "{{.HTTPProxy}} {{.HTTPSProxy}} {{.NoProxy}}"
    got = machine.run(f"docker info --format '{fmt}'", check=True).output.split()
    want = [PROXY["http_proxy"], PROXY["https_proxy"], PROXY["no_proxy"]]
    assert got == want, (f"the user Docker's proxies are {got}, rancher.network asked for "
                         f"{want}")


def test_proxies_are_in_the_docker_system_containers_environment(machine: Machine) -> None:
    env = json.loads(_inspect(machine, "docker", "{{json .Config.Env}}"))
    want = [f"{var}={PROXY[key]}" for key, var in
            (("http_proxy", "HTTP_PROXY"), ("https_proxy", "HTTPS_PROXY"),
             ("no_proxy", "NO_PROXY"))]
    missing = [w for w in want if w not in env]
    assert not missing, (
        f"`system-docker inspect docker`: the docker system container's environment lacks "
        f"{missing} (rancher.network's proxies, as RancherOS puts them there)")


def test_preloaded_image_is_in_the_user_docker(machine: Machine) -> None:
    got = machine.run(f"docker image inspect --format '{{{{.RepoTags}}}}' {PRELOADED}")
    assert got.ok and f"[{PRELOADED}]" in got.output, (
        f"{PRELOADED} from /var/lib/rancher/preload/docker is not in the user Docker: "
        f"{got.output.strip()}")


def test_unknown_key_is_ignored_and_the_rest_applied(machine: Machine,
                                                    profile: Profile) -> None:
    problems = []
    if profile.says_ignored_keys:
        log = machine.run(f"sudo cat {profile.cloud_init_log}").output
        console = machine.console_log.read_text(errors="replace")
        if not any(UNKNOWN_KEY in line and "ignored" in line
                   for line in (log + console).splitlines()):
            problems.append(f"neither {profile.cloud_init_log} nor the console says the key "
                            f"{UNKNOWN_KEY!r} is ignored")
    if machine.run("hostname").output.strip() != HOSTNAME:
        problems.append("the rest of the cloud-config was not applied (hostname)")
    assert not problems, "; ".join(problems)
