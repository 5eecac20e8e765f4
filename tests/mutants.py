"""Images broken on purpose, as data: what each breaks and which scenarios must fail with
which cause. tests/test_mutants.py boots them and checks every scenario has one.

A mutant is the reference image with a second cpio archive appended to its initrd (the
kernel unpacks archives in order, later files win) that replaces files of the OS: the
service definitions (os-config.yml), the guest's `ros` code, a config file. Service
containers run from the system Docker's image, whose layer is laid out in the initrd as
hard links to the same files; an appended file breaks that link, so every file is
replaced in both places (the host root, for PID 1's side, and the layer, for the
containers'). The checks are never touched.

Breakages are grouped so that one machine breaks several independent features (boots
are the cost); each scenario then fails for its own named reason.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pycdlib
import yaml

from refimage import build

OS_CONFIG = "usr/share/ros/os-config.yml"
LAYER_RE = re.compile(r"^(var/lib/system-docker/overlay2/[0-9a-f]{64}/diff)/")


@dataclass(frozen=True)
class Edit:
    """Replace `old` by `new` in a file of the OS (`old` must be there: a guest change that
    removes it makes the mutant fail loudly, not pass quietly). `old=""` appends."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Breakage:
    what: str  # the broken feature, in words
    edits: tuple[Edit, ...] = ()
    services: Callable[[dict], None] | None = None  # changes rancher.services in os-config
    new_files: dict[str, str] = field(default_factory=dict)  # host path -> script (0755)
    # kernel modules made empty files: the driver is gone (modprobe cannot load it)
    emptied_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fails:
    """`scenario` (a pytest node id) must fail, its message holding every one of `causes`."""

    scenario: str
    causes: tuple[str, ...]


@dataclass(frozen=True)
class Mutant:
    name: str
    breakages: tuple[Breakage, ...]
    fails: tuple[Fails, ...]
    # where its scenarios run: the hardware a breakage matters on (a libvirt profile needs
    # a libvirtd; tests/test_mutants.py starts one)
    platform: tuple[str, ...] = ("--platform", "qemu")


# -- breakages of the service definitions ----------------------------------------------------


def _ntp_never_stays_up(services: dict) -> None:
    services["ntp"]["command"] = "false"


def _no_system_cron(services: dict) -> None:
    del services["system-cron"]


def _preload_exits_3(services: dict) -> None:
    services["preload-user-images"]["command"] = "sh -c 'ros preload-images; exit 3'"


def _preload_nothing(services: dict) -> None:
    services["preload-user-images"]["command"] = "true"


def _syslog_not_restarted(services: dict) -> None:
    services["syslog"]["restart"] = "no"


def _network_does_nothing(services: dict) -> None:
    services["network"]["command"] = "sleep 2147483647"


def _shared_socket(services: dict) -> None:
    # the "user Docker" is the system Docker's socket under the user's name
    services["docker"]["command"] = (
        "sh -c 'chmod 666 /var/run/system-docker.sock && "
        "ln -sf /var/run/system-docker.sock /var/run/docker.sock "
        "&& exec sleep 2147483647'"
    )


def _hostname_reset(services: dict) -> None:
    services["cloud-init-execute"]["command"] = (
        "sh -c 'cloud-init-execute -pre-console && hostname rancher'"
    )


def _docker_rm_removes_nothing(services: dict) -> None:
    volumes = services["command-volumes"]["volumes"]
    volumes[volumes.index("/usr/bin/docker:/usr/bin/docker:ro")] = (
        "/usr/lib/ros/docker-keeps:/usr/bin/docker:ro"
    )
    volumes.append("/usr/bin/docker:/usr/lib/ros/docker-real:ro")


def _console_shares_host_tmp(services: dict) -> None:
    services["user-volumes"]["volumes"].append("/tmp:/tmp")


def _user_container_named_like_a_service(services: dict) -> None:
    preload = services["preload-user-images"]
    preload["volumes_from"] = ["system-volumes", "command-volumes"]
    preload["command"] = ("sh -c 'ros preload-images && docker run -d --pull never "
                          "--name syslog busybox:latest sleep 86400'")


# without its foreground flag a daemon forks into the background and the container's
# process exits: the service is restarted for ever


def _acpid_forks(services: dict) -> None:
    services["acpid"]["command"] = "acpid -l"


def _crond_forks(services: dict) -> None:
    services["system-cron"]["command"] = "crond -c /var/spool/cron/crontabs"


def _rsyslogd_forks(services: dict) -> None:
    services["syslog"]["command"] = "rsyslogd"


def _renamed(services: dict, old: str, new: str) -> None:
    services[new] = services.pop(old)
    # the services that come after it still do (only the name is wrong)
    for spec in services.values():
        labels = spec.get("labels") or {}
        after = [d.strip() for d in str(labels.get("io.rancher.os.after", "")).split(",")]
        if old in after:
            labels["io.rancher.os.after"] = ", ".join(new if d == old else d for d in after)


def _console_renamed(services: dict) -> None:
    _renamed(services, "console", "default-console")


def _user_docker_renamed(services: dict) -> None:
    _renamed(services, "docker", "userdocker")


def _coldplug_renamed(services: dict) -> None:
    _renamed(services, "udev-cold", "udev-coldplug")


def _cloud_init_renamed(services: dict) -> None:
    _renamed(services, "cloud-init-execute", "cloud-init")


def _docker_container_gets_no_proxies(services: dict) -> None:
    del services["docker"]["environment"]


def _home_and_opt_not_shared(services: dict) -> None:
    volumes = services["user-volumes"]["volumes"]
    for folder in ("/home", "/opt"):
        volumes[volumes.index(f"{folder}:{folder}:rslave")] = f"{folder}:{folder}"


def _console_without_user_tools(services: dict) -> None:
    # the console's own copy of the image loses them; the host root keeps them
    services["console"]["command"] = (
        "sh -c 'rm -f /usr/sbin/parted /usr/sbin/blkid /usr/bin/lsblk /usr/bin/printenv "
        "/usr/bin/nohup /usr/bin/install /usr/bin/split; exec ros console-init'"
    )


def _network_without_bash(services: dict) -> None:
    services["network"]["command"] = "sh -c 'rm -f /usr/bin/bash; exec ros netconf'"


MOUNT_STATE = "usr/lib/ros/mount-state"
INSTALL_PY = "usr/lib/ros/ros/install.py"
SERVICES_PY = "usr/lib/ros/ros/services.py"
COMMANDS_PY = "usr/lib/ros/ros/commands.py"
CLOUDINIT_PY = "usr/lib/ros/ros/cloudinit.py"
CLI_PY = "usr/lib/ros/ros/cli.py"
CONFIG_CLI_PY = "usr/lib/ros/ros/config_cli.py"
SERVICE_CLI_PY = "usr/lib/ros/ros/service_cli.py"
TLS_PY = "usr/lib/ros/ros/tls.py"
ROS_CLI = "scenarios/test_ros_cli.py::"
REGISTRY = "scenarios/test_registry.py::"
CONFIG_PY = "usr/lib/ros/ros/config.py"
HOSTKEYS_PY = "usr/lib/ros/ros/hostkeys.py"

NTP_DOWN = Breakage("ntp exits at once (restarted for ever)", services=_ntp_never_stays_up)
PRELOAD_FAILS = Breakage("preload-user-images exits 3", services=_preload_exits_3)

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "boot-slow-and-failing",
        (
            NTP_DOWN,
            Breakage("system-cron is not declared", services=_no_system_cron),
            Breakage("services start 30 s after the system Docker answers", edits=(
                Edit(SERVICES_PY, "    failed = Starter(docker).run()\n",
                     "    time.sleep(30)\n    failed = Starter(docker).run()\n"),)),
            PRELOAD_FAILS,
            Breakage("/etc/os-release names another OS", edits=(
                Edit("etc/os-release", 'NAME="RoslabOS"', 'NAME="ImposterOS"'),)),
        ),
        (
            Fails("scenarios/test_boot.py::test_reaches_every_boot_milestone",
                  ("milestones never reached: services", "'ntp'")),
            Fails("scenarios/test_boot.py::test_every_service_container_has_a_start_time",
                  ("no start time recorded for service containers: system-cron",)),
            Fails("scenarios/test_boot.py::test_each_boot_phase_within_budget",
                  ("init -> system-docker",)),
            Fails("scenarios/test_boot.py::test_console_shows_no_kernel_error_or_failed_service",
                  ("a system service that failed", "preload-user-images")),
            Fails("scenarios/test_boot.py::test_boot_completes_with_started_banner",
                  ("the console says ImposterOS", "expects RoslabOS")),
        ),
    ),
    Mutant(
        "services-broken",
        (
            NTP_DOWN,
            PRELOAD_FAILS,
            Breakage("`ros service ps` says every service is up", edits=(
                Edit(SERVICE_CLI_PY, 'c.get("Command", ""), c.get("Status", ""), ports))',
                     'c.get("Command", ""), "Up 1 minute", ports))'),)),
            Breakage("syslog is not restarted when it dies", services=_syslog_not_restarted),
            Breakage("rsyslog writes elsewhere", edits=(
                Edit("etc/rsyslog.conf", "-/var/log/syslog", "-/var/log/elsewhere"),)),
            Breakage("the network service configures nothing", services=_network_does_nothing),
            Breakage("services from cloud-config exit after 2 s", edits=(
                Edit(SERVICES_PY, "                self.services[name] = spec",
                     "                self.services[name] = "
                     "{**spec, 'command': \"sh -c 'sleep 2; exit 1'\"}"),)),
        ),
        (
            Fails("scenarios/test_services.py::"
                  "test_long_running_service_runs_under_system_docker[ntp]",
                  ("system service 'ntp' does not stay up",)),
            Fails("scenarios/test_services.py::"
                  "test_one_shot_service_completed[preload-user-images]",
                  ("one-shot service 'preload-user-images' is exited(3)",)),
            Fails("scenarios/test_services.py::test_ros_service_ps_agrees_with_system_docker",
                  ("`ros service ps` says ntp is running, the system Docker says",)),
            Fails("scenarios/test_services.py::test_killed_service_comes_back",
                  ("was killed and did not come back",)),
            Fails("scenarios/test_services.py::test_syslog_stores_what_logger_sends",
                  ("never reached /var/log/syslog",)),
            Fails("scenarios/test_services.py::test_network_service_gave_eth0_an_address",
                  ("eth0 has no IPv4 address",)),
            Fails("scenarios/test_services.py::"
                  "test_custom_service_runs_under_system_docker_not_user_docker",
                  ("'roslab-custom' does not stay up",)),
        ),
    ),
    Mutant(
        # the console, the user Docker and the one-shots the others come after must work
        # for the lab to log in and see the boot end: theirs run under another name
        "services-looping-or-renamed",
        (
            Breakage("acpid runs without -f: it forks away, restarted for ever",
                     services=_acpid_forks),
            Breakage("crond runs without -f: it forks away, restarted for ever",
                     services=_crond_forks),
            Breakage("rsyslogd runs without -n: it forks away, restarted for ever",
                     services=_rsyslogd_forks),
            Breakage("udevd detaches (--daemon): the udev container exits, restarted for ever",
                     edits=(Edit(COMMANDS_PY, 'os.execv(UDEVD, [UDEVD, "--resolve-names=never"])',
                                 'os.execv(UDEVD, [UDEVD, "--daemon", '
                                 '"--resolve-names=never"])'),)),
            Breakage("`ros netconf` writes what it applied to a folder nobody makes: the "
                     "network service fails at start, restarted for ever", edits=(
                Edit(CLOUDINIT_PY, 'NETCONF_APPLIED = "/run/ros-netconf.json"',
                     'NETCONF_APPLIED = "/run/ros/netconf.json"'),)),
            Breakage("the console's container is named default-console",
                     services=_console_renamed),
            Breakage("the user Docker's container is named userdocker (RancherOS 0.x's name)",
                     services=_user_docker_renamed),
            # not their containers removed on exit: preload-user-images would go while the
            # lab lists the containers, and its listing fails
            Breakage("the one-shot udev-cold is named udev-coldplug", services=_coldplug_renamed),
            Breakage("the one-shot cloud-init-execute is named cloud-init (RancherOS 0.x's name)",
                     services=_cloud_init_renamed),
        ),
        (
            *(Fails("scenarios/test_services.py::"
                    f"test_long_running_service_runs_under_system_docker[{name}]",
                    (f"system service {name!r} does not stay up",))
              for name in ("acpid", "system-cron", "syslog", "udev", "network")),
            *(Fails("scenarios/test_services.py::"
                    f"test_long_running_service_runs_under_system_docker[{name}]",
                    (f"system service {name!r} does not stay up under the system Docker: "
                     "it was absent, then 3 s later absent",))
              for name in ("console", "docker")),
            *(Fails(f"scenarios/test_services.py::test_one_shot_service_completed[{name}]",
                    (f"one-shot service {name!r} is absent, expected exited(0)",))
              for name in ("udev-cold", "cloud-init-execute")),
        ),
    ),
    Mutant(
        "user-docker-misconfigured",
        (
            Breakage("the user Docker keeps its data outside /var/lib/user-docker", edits=(
                Edit(COMMANDS_PY, '"--data-root=/var/lib/docker",',
                     '"--data-root=/var/lib/rancher/user-docker-elsewhere",'),)),
            Breakage("rancher.docker.extra_args dropped; no iptables, no userland proxy",
                     edits=(Edit(COMMANDS_PY, "*[str(a) for a in extra],",
                                 '"--iptables=false", "--userland-proxy=false",'),)),
            Breakage("`system-docker restart` does nothing", edits=(
                Edit("usr/bin/system-docker", "exec docker",
                     '[ "$1" = restart ] && exit 0\nexec docker'),)),
            Breakage("`docker rm` removes nothing", services=_docker_rm_removes_nothing,
                     new_files={"usr/lib/ros/docker-keeps":
                                '#!/bin/sh\n[ "$1" = rm ] && exit 0\n'
                                'exec /usr/lib/ros/docker-real "$@"\n'}),
            Breakage("a user container is named syslog",
                     services=_user_container_named_like_a_service),
        ),
        (
            Fails("scenarios/test_docker.py::test_data_roots_are_separate",
                  ("/var/lib/rancher/user-docker-elsewhere", "expected /var/lib/user-docker")),
            Fails("scenarios/test_docker.py::test_extra_args_reach_the_user_daemon",
                  ("did not reach the user Docker",)),
            Fails("scenarios/test_docker.py::test_published_port_is_reachable_in_the_guest",
                  ("(18080 -> 80) is not reachable",)),
            Fails("scenarios/test_docker.py::test_containers_are_invisible_across_the_two_dockers",
                  ("system containers show in the user Docker: ['syslog']",)),
            Fails("scenarios/test_docker.py::"
                  "test_removing_every_user_container_leaves_the_os_running",
                  ("`docker rm -f $(docker ps -qa)` left user containers",)),
            Fails("scenarios/test_docker.py::"
                  "test_restarting_the_docker_service_brings_the_user_docker_back",
                  ("did not restart the user Docker",)),
        ),
    ),
    Mutant(
        "user-docker-is-the-system-docker",
        (
            Breakage("/var/run/docker.sock is the system Docker's socket",
                     services=_shared_socket),
            Breakage("no user image is preloaded", services=_preload_nothing),
        ),
        (
            Fails("scenarios/test_docker.py::test_sockets_are_separate",
                  ("are the same socket",)),
            Fails("scenarios/test_docker.py::test_daemons_are_separate_processes",
                  ("no dockerd runs in the `docker` system container",)),
            Fails("scenarios/test_docker.py::test_user_docker_runs_a_container_from_a_local_image",
                  ("`docker run busybox:latest` did not run", "busybox:latest")),
        ),
    ),
    Mutant(
        "cloud-init-half-done",
        (
            Breakage("the hostname is reset after cloud-init", services=_hostname_reset),
            Breakage("ssh_authorized_keys go to a file sshd does not read", edits=(
                Edit(CLOUDINIT_PY, 'os.path.join(ssh_dir, "authorized_keys")',
                     'os.path.join(ssh_dir, "authorized_keys.elsewhere")'),)),
            Breakage("write_files: plain content loses its last newline, b64 is not decoded, "
                     "gzip is not decompressed, permissions and owner are ignored", edits=(
                Edit(CLOUDINIT_PY, "    data = content.encode() if",
                     '    data = content.rstrip("\\n").encode() if'),
                Edit(CLOUDINIT_PY, 'if enc in ("b64", "base64",', 'if enc in ("base64",'),
                Edit(CLOUDINIT_PY, 'if enc.startswith(("gz", "gzip")):',
                     'if enc.startswith("never"):'),
                Edit(CLOUDINIT_PY, "os.chmod(tmp, mode)", "os.chmod(tmp, 0o644)"),
                Edit(CLOUDINIT_PY, "os.chown(tmp, uid, gid)", "os.chown(tmp, 0, 0)"),
            )),
            Breakage("a user-data script is saved but never run", edits=(
                Edit(CLOUDINIT_PY, "        subprocess.run([SCRIPT])", "        pass"),)),
            Breakage("runcmd runs backwards", edits=(
                Edit(CLOUDINIT_PY, '_commands(config.get(cfg, "runcmd"), "runcmd")',
                     '_commands(list(reversed(config.get(cfg, "runcmd") or [])), "runcmd")'),)),
            Breakage("the merged cloud-config is saved empty", edits=(
                Edit(CLOUDINIT_PY, "config.dump_yaml(full, fh,", "config.dump_yaml({}, fh,"),)),
            Breakage("`ros config get` reads os-config.yml only", edits=(
                Edit(CLI_PY, "config.get(config.load(), args.key)",
                     "config.get(config._yaml_file(config.OS_CONFIG), args.key)"),)),
        ),
        (
            Fails("scenarios/test_cloud_config.py::test_hostname_is_set",
                  ("hostname is 'rancher', cloud-config asked for 'roslab-cc'",)),
            Fails("scenarios/test_cloud_config.py::test_ssh_with_the_authorized_key_works",
                  ("SSH with the key from ssh_authorized_keys failed",)),
            Fails("scenarios/test_cloud_config.py::test_write_files_content_permissions_owner"
                  "[plain]",
                  ("content b'plain text from write_files', expected", "mode 644, expected 640",
                   "owner root:root, expected rancher:rancher")),
            Fails("scenarios/test_cloud_config.py::test_write_files_content_permissions_owner"
                  "[base64]",
                  ("content b'YmFzZTY0", "mode 644, expected 600")),
            Fails("scenarios/test_cloud_config.py::test_write_files_content_permissions_owner"
                  "[gzip+base64]",
                  ("content b'\\x1f\\x8b", "mode 644, expected 755")),
            Fails("scenarios/test_cloud_config.py::test_runcmd_ran_in_order",
                  ("runcmd entries ran as ['third', 'second', 'first']",)),
            Fails("scenarios/test_cloud_config.py::test_user_data_script_runs_at_boot",
                  ("the #!/bin/bash user-data did not run as root in bash",)),
            Fails("scenarios/test_cloud_config.py::test_merged_cloud_config_is_saved",
                  ("has hostname None, not the user data's 'roslab-cc'",)),
            Fails("scenarios/test_cloud_config.py::test_ros_config_get_reads_the_merged_config",
                  ("`ros config get hostname` says 'rancher'",)),
        ),
    ),
    Mutant(
        "cloud-config-apply-broken",
        (
            Breakage("cloud-config.d files merge in reverse name order", edits=(
                Edit(CONFIG_PY, 'sorted(glob.glob(f"{CLOUD_CONFIG_D}/*.yml"))',
                     'sorted(glob.glob(f"{CLOUD_CONFIG_D}/*.yml"), reverse=True)'),)),
            Breakage("services get no rancher.environment: no ${VAR}, no bare entries, and "
                     "their restart policy is dropped", edits=(
                Edit(SERVICES_PY, "    spec = config.substitute(spec, environment)\n", ""),
                Edit(SERVICES_PY, "env.update({k: v for k, v in environment.items()",
                     "env.update({k: v for k, v in {}.items()"),
                Edit(SERVICES_PY, 'policy: dict = {"Name": name}', 'policy: dict = {"Name": "no"}'),
            )),
            Breakage("write_files for system containers are written in the console", edits=(
                Edit(CLOUDINIT_PY,
                     'if isinstance(e, dict) and str(e.get("container") or "console")',
                     'if isinstance(e, dict) and container == "console" or '
                     'str(e.get("container") or "console")'),)),
            Breakage("the hostname gets no /etc/hosts line", edits=(
                Edit(CLOUDINIT_PY, 'lines.append(f"{LOOPBACK_NAME} {name}")', "pass"),)),
            Breakage("rancher.sysctl and rancher.modules are not applied", edits=(
                Edit(CLOUDINIT_PY, "for key, value in settings.items() if isinstance(",
                     "for key, value in {}.items() if isinstance("),
                Edit(CLOUDINIT_PY, 'argv = ["modprobe", *str(name).split()]', 'argv = ["true"]'),
            )),
            Breakage("mounts are made in cloud-init's own mount namespace", edits=(
                Edit(CLOUDINIT_PY, 'host = ["nsenter", "-t", "1", "-m", "--"]', "host = []"),)),
            Breakage("mounts under /home and /opt do not reach the console",
                     services=_home_and_opt_not_shared),
            Breakage("`cloud-init-execute` run by hand applies nothing", edits=(
                Edit(CLI_PY, "else cloudinit.execute())", "else 0)"),)),
            Breakage("bootcmd does not run", edits=(
                Edit(CLOUDINIT_PY, '    _commands(config.get(cfg, "bootcmd"), "bootcmd")\n', ""),)),
            Breakage("the user Docker gets no proxies", edits=(
                Edit(COMMANDS_PY, "    env.update(proxy_environment(cfg))\n", ""),)),
            Breakage("the docker system container gets no proxies in its environment",
                     services=_docker_container_gets_no_proxies),
            Breakage("only .tgz tarballs are preloaded", edits=(
                Edit(COMMANDS_PY, 'if name.endswith((".tar", ".tar.gz", ".tgz")):',
                     'if name.endswith((".tgz",)):'),)),
            Breakage("keys this image ignores are not said", edits=(
                Edit(CLOUDINIT_PY, "for key in sorted(set(user) - APPLIED):",
                     "for key in sorted(set()):"),)),
        ),
        (
            Fails("scenarios/test_cloud_config_apply.py::test_config_files_merge_in_order",
                  ("'ROSLAB_ORDER': 'ten'",)),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_service_gets_environment_volumes_labels_restart",
                  ("its environment lacks ROSLAB_GREETING=", "ROSLAB_TAGGED=tag-v42",
                   "label io.roslab.tag is '${ROSLAB_TAG}'", "restart policy 'no'")),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_write_files_into_a_system_container[created-after-cloud-init]",
                  ("it was written in the console too",)),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_write_files_into_a_system_container[running-before-cloud-init]",
                  ("it was written in the console too",)),
            Fails("scenarios/test_cloud_config_apply.py::test_hostname_is_in_etc_hosts",
                  ("/etc/hosts names 'roslab-apply' on no loopback line",)),
            Fails("scenarios/test_cloud_config_apply.py::test_sysctl_and_modules_applied",
                  ("rancher.sysctl net.ipv4.tcp_keepalive_time is",
                   "rancher.modules: sch_prio is not loaded")),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_mount_is_made_and_seen_in_the_console",
                  ("the console sees nothing mounted there",)),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_four_field_mounts_reach_the_console",
                  ("the console sees nothing mounted at /home/rancher/roslab-mnt (tmpfs), "
                   "/mnt/roslab-defaults (tmpfs), /opt/roslab-bind",)),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_cloud_init_execute_makes_the_mounts_again",
                  ("after `sudo cloud-init-execute` (exit 0) the console sees nothing mounted "
                   "at /home/rancher/roslab-mnt",)),
            Fails("scenarios/test_cloud_config_apply.py::test_bootcmd_runs_before_runcmd",
                  ("bootcmd and runcmd ran as ['runcmd']",)),
            Fails("scenarios/test_cloud_config_apply.py::test_proxies_reach_the_user_docker",
                  ("the user Docker's proxies are []",)),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_proxies_are_in_the_docker_system_containers_environment",
                  ("the docker system container's environment lacks "
                   "['HTTP_PROXY=http://10.0.2.2:3128'",)),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_preloaded_image_is_in_the_user_docker",
                  ("roslab/preloaded:1 from /var/lib/rancher/preload/docker is not in",)),
            Fails("scenarios/test_cloud_config_apply.py::"
                  "test_unknown_key_is_ignored_and_the_rest_applied",
                  ("nor the console says the key 'packages' is ignored",)),
        ),
    ),
    Mutant(
        "network-config-ignored",
        (
            Breakage("mac= interface entries match nothing", edits=(
                Edit(COMMANDS_PY, "if pattern[4:].lower() == _mac(link):", "if False:"),)),
            Breakage("addresses (the list) and mtu are ignored", edits=(
                Edit(COMMANDS_PY, '[conf.get("address"), *(conf.get("addresses") or [])]',
                     '[conf.get("address")]'),
                Edit(COMMANDS_PY, '    if conf.get("mtu"):\n', '    if False:\n'),
            )),
            Breakage("bond members are not enslaved", edits=(
                Edit(COMMANDS_PY, '            bonds.add(str(conf["bond"]))\n'
                                  '            members.append((link, str(conf["bond"])))\n',
                     "            pass\n"),)),
            Breakage("a port's `bridge:` is ignored", edits=(
                Edit(COMMANDS_PY, '        if isinstance(conf.get("bridge"), str):',
                     "        if False:"),)),
            Breakage("vlans are ignored", edits=(
                Edit(COMMANDS_PY, '        for vid, name in _vlans(conf.get("vlans")):',
                     "        for vid, name in []:"),)),
            Breakage("the gateway is ignored", edits=(
                Edit(COMMANDS_PY, '    if conf.get("gateway"):\n', '    if False:\n'),)),
            Breakage("DNS search domains are dropped", edits=(
                Edit(COMMANDS_PY, "        if search:\n", "        if False:\n"),)),
            Breakage("post_cmds run before the interfaces are configured", edits=(
                Edit(COMMANDS_PY, '    _net_commands(net.get("post_cmds"), "post_cmds")\n'
                                  '    if not children:', "    if not children:"),
                Edit(COMMANDS_PY, '    _net_commands(net.get("pre_cmds"), "pre_cmds")\n',
                     '    _net_commands(net.get("pre_cmds"), "pre_cmds")\n'
                     '    _net_commands(net.get("post_cmds"), "post_cmds")\n'),
            )),
            Breakage("the DHCP-offered host name is not read", edits=(
                Edit(CLOUDINIT_PY, 'if lease.get("hostname", "").strip():',
                     'if lease.get("hostname-never", "").strip():'),)),
        ),
        (
            Fails("scenarios/test_network.py::test_interface_gets_its_static_addresses_and_mtu"
                  "[by-name]",
                  ("rl-static: got {'addresses': ['192.0.2.10/24'], 'mtu': '1500'}",)),
            Fails("scenarios/test_network.py::test_interface_gets_its_static_addresses_and_mtu"
                  "[by-glob]",
                  ("rl-glob0: got {'addresses': [], 'mtu': '1500'}",)),
            Fails("scenarios/test_network.py::test_interface_gets_its_static_addresses_and_mtu"
                  "[by-mac]",
                  ("rl-mac: got {'addresses': ['203.0.113.99/24'], 'mtu': '1500'}",)),
            Fails("scenarios/test_network.py::test_bond_bridge_and_vlans_are_made[bond]",
                  ("rancher.network bond: bond0 has members [], expected",)),
            Fails("scenarios/test_network.py::test_bond_bridge_and_vlans_are_made[bridge]",
                  ("rancher.network bridge: br0 is not a bridge",)),
            Fails("scenarios/test_network.py::test_bond_bridge_and_vlans_are_made[vlans]",
                  ("rancher.network vlans: eth4.100 is not VLAN 100 on eth4",
                   "vlan200 is not VLAN 200")),
            Fails("scenarios/test_network.py::test_gateway_is_the_default_route",
                  ("gateway 192.0.2.1 is not the default route",)),
            Fails("scenarios/test_network.py::test_dns_nameservers_and_search",
                  ("search [], expected ['roslab.test', 'lab.example']",)),
            Fails("scenarios/test_network.py::test_pre_cmds_then_post_cmds_ran",
                  ("post_cmds did not run after the interfaces were configured",)),
            Fails("scenarios/test_network.py::"
                  "test_dhcp_offered_hostname_is_used_when_none_is_set",
                  ("hostname is 'rancher'; no cloud-config hostname is set and DHCP offered",)),
        ),
    ),
    Mutant(
        # one machine: the state partition keeps /var/lib/rancher, where the settings live,
        # so the lost directories do not hide the forgotten settings, nor these them
        "reboot-forgets-state-and-settings",
        (
            Breakage("the state partition keeps /var/lib/rancher and /tmp (the console's "
                     "too), not the user Docker's data, /home or /opt", edits=(
                Edit(MOUNT_STATE, 'PERSIST="var/lib/rancher var/lib/user-docker home opt"',
                     'PERSIST="var/lib/rancher tmp"'),
                Edit(MOUNT_STATE, '  mount --bind "$STATE/$d" "/$d"',
                     '  chmod 1777 "$STATE/tmp" 2>/dev/null\n  mount --bind "$STATE/$d" "/$d"'),
            ), services=_console_shares_host_tmp),
            Breakage("rancher.state.directory is ignored (the state is kept at the "
                     "partition's root)", edits=(
                Edit(MOUNT_STATE, '    *) STATE="$STATE/$directory"; mkdir -p "$STATE" ;;',
                     "    *) ;;"),)),
            Breakage("kernel arguments after `--` are neither kept nor hidden", edits=(
                Edit("init", 'case " $(cat /proc/cmdline) " in', 'case "" in'),)),
            Breakage("`ros service enable` is ignored at boot (rancher.services_include)",
                     edits=(Edit(SERVICES_PY, "services = {**catalogue.included(cfg), ",
                                 "services = {"),)),
            Breakage("new SSH host keys every boot (rancher.ssh.keys ignored)", edits=(
                Edit(HOSTKEYS_PY, "        if saved and saved_pub:", "        if False:"),)),
            Breakage("images in preload/system-docker are not loaded", edits=(
                Edit(SERVICES_PY, 'commands.load_preloaded(docker, f"{commands.PRELOAD}/'
                     'system-docker")', "pass"),)),
            Breakage("the system Docker gets no rancher.network proxies", edits=(
                Edit("init", "if grep -qs '_proxy'", "if false && grep -qs '_proxy'"),)),
            Breakage("the cloud's instance keys replace the user-data's ssh_authorized_keys",
                     edits=(Edit(CONFIG_PY, "have + [k for k in keys if k not in have]",
                                 "keys"),)),
        ),
        (
            Fails("scenarios/test_persistence.py::test_state_persists_across_a_power_cycle",
                  ("lost on the state partition: /home/rancher/kept.txt, /opt/kept.txt",
                   "the user Docker lost the image", "kept though they live in RAM: /tmp",
                   "roslab-httpd, enabled with `ros service enable` before the reboot, is not "
                   "running after it", "the SSH host keys changed",
                   "the system Docker did not load", "`sudo system-docker info` shows proxy",
                   "rancher.state.directory=roslab-state: /home is '/home' of its filesystem",
                   "after `--`: /proc/cmdline shows them",
                   "after `--`: cc.hostname=roslab-hidden was not applied")),
            Fails("scenarios/test_cloud_config.py::test_metadata_ssh_keys_join_the_user_datas",
                  ("`ros config get ssh_authorized_keys` lacks the user-data's key",
                   "~rancher/.ssh/authorized_keys lacks the user-data's key")),
        ),
    ),
    Mutant(
        "install-broken",
        (
            Breakage("ros install drops the -c cloud-config", edits=(
                Edit(INSTALL_PY, 'cmdline, title, cc)', 'cmdline, title, None)'),)),
        ),
        (
            Fails("scenarios/test_install.py::test_ros_install_then_boot_from_the_disk",
                  ("the -c cloud-config was not applied on the installed disk",)),
        ),
    ),
    Mutant(
        "cloud-init-too-lenient",
        (
            Breakage("sshd takes any key", edits=(
                Edit("etc/ssh/sshd_config", "",
                     "AuthorizedKeysCommand /bin/echo %t %k\n"
                     "AuthorizedKeysCommandUser nobody\n"),)),
            Breakage("the nocloud datasource is not read", edits=(
                Edit(CLOUDINIT_PY, 'if kind == "nocloud":', 'if kind == "nocloud-never":'),)),
            Breakage("the url datasource is not read", edits=(
                Edit(CLOUDINIT_PY, 'if kind == "url":', 'if kind == "url-never":'),)),
            # the cmdline datasource's keys are merged into every config load too, so
            # skipping the datasource alone would change nothing: their reading is broken
            Breakage("cc.* keys on the kernel cmdline are ignored", edits=(
                Edit(CONFIG_PY, 'if key.startswith("cc."):', 'if key.startswith("cc-never."):'),)),
            Breakage("invalid YAML is read line by line, silently", edits=(
                Edit(CLOUDINIT_PY,
                     '    except yaml.YAMLError as exc:\n'
                     '        _invalid(source, " ".join(str(exc).split()))\n'
                     '        return None\n',
                     '    except yaml.YAMLError:\n'
                     '        return dict(line.split(": ", 1) for line in text.splitlines()\n'
                     '                    if ": " in line)\n'),)),
        ),
        (
            Fails("scenarios/test_cloud_config.py::test_ssh_with_another_key_is_refused",
                  ("sshd let rancher in with a key that is not in ssh_authorized_keys",)),
            *(Fails(f"scenarios/test_cloud_config.py::test_datasource_delivers_cloud_config[{ds}]",
                    (f"cloud-config from the {ds} datasource: its hostname was not applied",
                     "its runcmd did not run"))
              for ds in ("nocloud", "url", "cmdline")),
            Fails("scenarios/test_cloud_config.py::"
                  "test_malformed_cloud_config_boots_to_a_usable_console",
                  ("applied in part", "the YAML error is neither in")),
        ),
    ),
    Mutant(
        "ros-cli-broken",
        (
            Breakage("`ros -v` names another version", edits=(
                Edit(CLI_PY, 'print(f"ros version {_version()}")',
                     'print("ros version v0.0.1")'),)),
            Breakage("`ros config set` saves numbers and lists as strings", edits=(
                Edit(CONFIG_CLI_PY, "    return text if value is None else _unhide(value)",
                     "    return _unhide(value) if isinstance(value, bool) else text"),)),
            Breakage("`ros config merge` replaces the saved config", edits=(
                Edit(CLI_PY, "config_cli.write_saved(config.merge(config_cli.saved(), data))",
                     "config_cli.write_saved(data)"),)),
            Breakage("`ros config validate` lets unknown keys through", edits=(
                Edit(CONFIG_CLI_PY,
                     'errors.append(f"{where}: Additional property {key} is not allowed")',
                     "pass"),)),
            Breakage("`ros config export` shows private keys without --private", edits=(
                Edit(CONFIG_CLI_PY, "for key in ADDITIONAL + (() if private else PRIVATE_KEYS):",
                     "for key in ADDITIONAL:"),)),
            Breakage("`ros service disable` leaves the service enabled", edits=(
                Edit(SERVICE_CLI_PY, "                include[name] = False",
                     "                pass"),)),
            Breakage("`ros service up` creates the container but never starts it", edits=(
                Edit(SERVICE_CLI_PY,
                     '        if not (existing and existing["State"]["Running"]):\n'
                     "            docker.start(name)\n", ""),)),
            Breakage("`ros env` drops rancher.environment", edits=(
                Edit(CLI_PY, "    env.update(os.environ)", "    env = dict(os.environ)"),)),
            Breakage("`ros dev` prints /dev/<label> without resolving it", edits=(
                Edit(CLI_PY, 'path = os.path.realpath(link) if os.path.exists(link) else ""',
                     'path = f"/dev/{value}"'),)),
            Breakage("`ros engine list` marks no engine current", edits=(
                Edit(CLI_PY, 'print(f"current  docker-', 'print(f"enabled  docker-'),)),
            Breakage("`ros console list` marks no console current", edits=(
                Edit(CLI_PY, 'state = "current " if name == current else',
                     'state = "enabled " if name == current else'),)),
            Breakage("rancher.docker.tls does not reach the user Docker", edits=(
                Edit(TLS_PY, '    if config.get(cfg, "rancher.docker.tls") is not True:\n',
                     "    if True:\n"),)),
        ),
        (
            Fails(ROS_CLI + "test_ros_version_is_the_os_version",
                  ("`ros -v` says 'ros version v0.0.1'",)),
            Fails(ROS_CLI + "test_config_set_saves_typed_values",
                  ("rancher.network.dhcp_timeout: saved '12', expected 12",
                   "rancher.docker.insecure_registry: saved '[registry.example:5000")),
            Fails(ROS_CLI + "test_config_merge_adds_to_the_saved_config",
                  ("the value set before (rancher.upgrade.image) is gone",)),
            Fails(ROS_CLI + "test_config_validate_reports_unknown_keys_and_bad_yaml",
                  ("an unknown key was not named",)),
            Fails(ROS_CLI + "test_config_export_shows_private_keys_only_when_asked",
                  ("plain export shows",)),
            Fails(ROS_CLI + "test_service_enable_and_disable_persist_in_services_include",
                  ("after disable: listed 'enabled'",)),
            Fails(ROS_CLI + "test_service_up_logs_stop_drive_its_system_container",
                  ("after `up` the container is not running",)),
            Fails(ROS_CLI + "test_ros_env_exports_rancher_environment",
                  ("the command saw ROSLAB_GREETING=''",)),
            Fails(ROS_CLI + "test_ros_dev_resolves_a_label",
                  ("LABEL=config-2 gave '/dev/config-2', not a block device",)),
            Fails(ROS_CLI + "test_ros_engine_list_names_the_running_user_docker",
                  ("`ros engine list` marks no engine current",)),
            Fails(ROS_CLI + "test_ros_console_list_marks_the_console_in_use_current",
                  ("`ros console list` does not mark 'default' current",)),
            Fails(ROS_CLI + "test_tls_gen_makes_the_user_docker_serve_tls_on_2376",
                  ("a TLS client with ~/.docker's certificates got no answer on 2376",)),
        ),
    ),
    Mutant(
        "console-tools-missing",
        (
            Breakage("the network container has no bash", services=_network_without_bash),
            Breakage("the console has no parted, blkid, lsblk, printenv, nohup, install, "
                     "split", services=_console_without_user_tools),
            Breakage("the console never runs /etc/rc.local", edits=(
                Edit(COMMANDS_PY, "    cloudinit.runcmd(cfg)\n    rc_local()\n",
                     "    cloudinit.runcmd(cfg)\n"),)),
            Breakage("write_files skips a path that is a link (busybox's applets)", edits=(
                Edit(CLOUDINIT_PY, '"console") == container]',
                     '"console") == container\n'
                     '            and not os.path.islink(str(e.get("path")))]'),)),
            Breakage("the btrfs module is missing (btrfs.ko emptied)",
                     emptied_modules=("btrfs",)),
        ),
        (
            Fails("scenarios/test_console_tools.py::"
                  "test_bash_runs_scripts_in_the_console_and_the_network_container",
                  ("the network container's #!/bin/bash pre_up hook",)),
            Fails("scenarios/test_console_tools.py::test_console_has_the_tools_users_expect",
                  ("parted: `sudo parted --version` exited", "blkid: ", "; printenv: ",
                   "ros env printenv: ", "split: ")),
            Fails("scenarios/test_console_tools.py::test_rc_local_starts_a_container",
                  ("/etc/rc.local did not start roslab-rc-local",
                   "rc.local.log: 'cat: /var/log/boot/rc.local.log: No such file")),
            Fails("scenarios/test_console_tools.py::"
                  "test_write_files_replacing_usr_bin_test_leaves_the_console_usable",
                  ("/usr/bin/vi is not the user's file",)),
            Fails("scenarios/test_console_tools.py::test_rancher_modules_loads_btrfs",
                  ("rancher.modules: [btrfs]: btrfs is not loaded",)),
        ),
    ),
    Mutant(
        "registry-mirror-ignored",
        (
            Breakage("the user Docker ignores rancher.docker.registry_mirror", edits=(
                Edit(COMMANDS_PY,
                     '        *[f"--registry-mirror={m}" for m in registry["registry-mirrors"]],\n',
                     ""),)),
            Breakage("the system Docker ignores rancher.system_docker.registry_mirror", edits=(
                Edit(COMMANDS_PY, 'registry_settings(cfg, "system_docker").items() if v}',
                     'registry_settings(cfg, "system_docker").items()\n'
                     '                if v and k != "registry-mirrors"}'),)),
        ),
        (
            Fails(REGISTRY + "test_user_docker_pulls_and_runs_busybox",
                  ("`docker pull busybox` exited 1",)),
            Fails(REGISTRY + "test_system_docker_pulls_and_runs_busybox",
                  ("`sudo system-docker pull busybox` exited 1",)),
            Fails(REGISTRY + "test_an_image_nobody_has_fails_fast_with_not_found",
                  ("the user Docker never heard the registry mirror",)),
            Fails(REGISTRY + "test_rc_local_pulls_and_starts_a_container",
                  ("/etc/rc.local did not pull busybox and start roslab-rc-pulled",)),
        ),
    ),
    Mutant(
        "no-vmxnet3-driver",
        (Breakage("the vmxnet3 NIC driver is missing (vmxnet3.ko emptied)",
                  emptied_modules=("vmxnet3",)),),
        (
            Fails("scenarios/test_services.py::test_network_service_gave_eth0_an_address",
                  ("eth0 has no IPv4 address",)),
        ),
        platform=("--platform", "libvirt", "--hw", "vmware"),
    ),
)


# -- making the image ------------------------------------------------------------------------


def _cpio_in(initrd: Path, *args: str, cwd: Path | None = None) -> str:
    """Run `cpio -i ARGS` on the (lz4) initrd's first archive."""
    lz4 = subprocess.Popen(["lz4", "-dcq", str(initrd)], stdout=subprocess.PIPE)
    try:
        out = subprocess.run(["cpio", "-i", "--quiet", *args], stdin=lz4.stdout, cwd=cwd,
                             capture_output=True, text=True, check=True).stdout
    finally:
        assert lz4.stdout is not None
        lz4.stdout.close()
        lz4.wait()
    return out


@functools.cache
def _layer_dir(initrd: Path) -> str:
    """The folder of the system Docker's image layer inside the initrd."""
    for name in _cpio_in(initrd, "-t").splitlines():
        if m := LAYER_RE.match(name):
            return m.group(1)
    raise AssertionError(f"{initrd} has no system Docker image layer")


def _mutated(text: str, edits: list[Edit], path: str) -> str:
    for edit in edits:
        if not edit.old:
            text += edit.new
            continue
        assert edit.old in text, f"mutant edit of {path}: {edit.old!r} is not in it any more"
        text = text.replace(edit.old, edit.new)
    return text


def make_image(mutant: Mutant, out: Path) -> Path:
    """The reference image with `mutant`'s breakages appended to its initrd, in `out`."""
    image = build.ensure_image("x86_64")
    initrd = image / "initrd"
    layer = _layer_dir(initrd)
    edits: dict[str, list[Edit]] = {}
    for breakage in mutant.breakages:
        for edit in breakage.edits:
            edits.setdefault(edit.path, []).append(edit)
        if breakage.services is not None:
            edits.setdefault(OS_CONFIG, [])
    with tempfile.TemporaryDirectory(prefix="roslab-mutant-") as tmp:
        original, overlay = Path(tmp) / "original", Path(tmp) / "overlay"
        original.mkdir()
        _cpio_in(initrd, "-dm", *edits, cwd=original)
        for path, file_edits in edits.items():
            source = original / path
            text = _mutated(source.read_text(), file_edits, path)
            if path == OS_CONFIG:
                config = yaml.safe_load(text)
                for breakage in mutant.breakages:
                    if breakage.services is not None:
                        breakage.services(config["rancher"]["services"])
                text = yaml.safe_dump(config)
            for where in (path, f"{layer}/{path}"):
                dest = overlay / where
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text)
                dest.chmod(source.stat().st_mode & 0o7777)
        listing = _cpio_in(initrd, "-t").splitlines() if any(
            b.emptied_modules for b in mutant.breakages) else []
        for breakage in mutant.breakages:
            for module in breakage.emptied_modules:
                paths = [p for p in listing if p.rsplit("/", 1)[-1].split(".ko")[0] == module
                         and ".ko" in p]
                assert paths, f"mutant {mutant.name}: the image has no module {module}"
                for path in paths:
                    dest = overlay / path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(b"")
            for path, script in breakage.new_files.items():
                dest = overlay / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(script)
                dest.chmod(0o755)
        # files only: a folder entry would reset the mode of the OS's own folder
        # lz4 as the initrd: the kernel's lz4 (legacy) reader takes a second stream where
        # the first ends, but fails on anything else appended to it (zeros, a plain cpio)
        cpio = subprocess.run("find . ! -type d | cpio --quiet -o -H newc | lz4 -l -q -c",
                              shell=True, cwd=overlay, capture_output=True, check=True).stdout
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "manifest.json"):
        shutil.copy2(image / name, out / name)
    with open(out / "initrd", "wb") as fh, open(initrd, "rb") as base:
        shutil.copyfileobj(base, fh)
        fh.write(cpio)
    _release_iso(image / "rancheros.iso", out / "initrd", out / "rancheros.iso")
    return out


def _release_iso(reference: Path, initrd: Path, out: Path) -> None:
    """The reference ISO with the mutant's initrd: what `ros install` installs from."""
    iso = pycdlib.PyCdlib()
    iso.open(str(reference))
    try:
        iso.rm_file("/BOOT/INITRD.;1", rr_name="initrd", joliet_path="/boot/initrd")
        iso.add_file(str(initrd), "/BOOT/INITRD.;1", rr_name="initrd",
                     joliet_path="/boot/initrd")
        iso.write(str(out))
    finally:
        iso.close()
