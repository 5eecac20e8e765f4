"""Persistence (RancherOS's state partition): across a power cycle, what lives on
RANCHER_STATE stays (a file in /home/rancher, /opt and /var/lib/rancher, a user Docker
image) and what lives in RAM goes (/tmp, /etc); and what was set with `ros` before the
reboot is what the next boot does: an enabled service runs, the SSH host keys are the
same, images preloaded for the system Docker are loaded, and both Dockers use the proxy.

A kernel+initrd image is booted as RancherOS's iPXE docs show it, with a blank disk and
`rancher.state.dev=LABEL=RANCHER_STATE rancher.state.autoformat=[/dev/sda,/dev/vda]` (only
a blank disk is formatted) and `rancher.state.directory=roslab-state` (the state lives in
that folder of the partition), then `-- cc.hostname=...` (arguments after `--` are hidden
from /proc/cmdline, kept for root and applied); an installed disk image (`ros install`,
the cloud disks) carries its state partition and command line already. An ISO runs from RAM with its
command line baked in: not applicable there.
"""

from __future__ import annotations

import secrets

import pytest

from fixtures.guest import user_docker_image, wait_boot_complete
from fixtures.profiles import Profile
from lab.images import CMDLINE_KINDS, DISK, GCE_TARBALL, ISO
from lab.machine import Machine

STATE_DIRECTORY = "roslab-state"
HIDDEN_HOSTNAME = "roslab-hidden"
# after `--`: hidden from /proc/cmdline, kept for root, applied (RancherOS's PXE docs)
HIDDEN = ["--", f"cc.hostname={HIDDEN_HOSTNAME}", "rancher.environment.ROSLAB_HIDDEN=hush"]
STATE_CMDLINE = ["rancher.state.dev=LABEL=RANCHER_STATE",
                 "rancher.state.autoformat=[/dev/sda,/dev/vda]", "rancher.state.wait",
                 f"rancher.state.directory={STATE_DIRECTORY}", *HIDDEN]
BLANK_DISK = 2 << 30
KEPT = ("/home/rancher/kept.txt", "/opt/kept.txt", "/var/lib/rancher/kept.txt")
GONE = ("/tmp/gone.txt", "/etc/gone.txt")

pytestmark = pytest.mark.needs("disks")


def _boot_with_state(boot_machine, lab_config) -> Machine:  # type: ignore[no-untyped-def]
    image = lab_config.resolved_image()
    if image.kind in CMDLINE_KINDS:
        return boot_machine(blank_disks=[BLANK_DISK], cmdline_extra=STATE_CMDLINE)
    if image.kind in (DISK, GCE_TARBALL):
        return boot_machine()
    why = ("an ISO runs from RAM and its kernel command line (no rancher.state.dev) is baked in"
           if image.kind == ISO else f"a {image.kind} image gets no state disk here")
    pytest.skip(f"not applicable: {why}")


PRELOADED = "/var/lib/rancher/preload/system-docker/roslab-preload.tar"
PROXY = "http://proxy.roslab.invalid:3128"
NO_PROXY = "*"  # the proxy is only looked at: nothing may try to use it
HOST_KEYS = "cat /etc/ssh/ssh_host_*_key.pub | sort"
PROXY_OF = "{docker} info --format '{{{{.HTTPProxy}}}} {{{{.NoProxy}}}}'"


def _set_before_reboot(machine: Machine, profile: Profile, mark: str) -> dict[str, str]:
    """What the next boot should do, set the RancherOS way; returns what to compare."""
    if profile.optional_service:
        machine.run(f"sudo ros service enable {profile.optional_service}", check=True)
    machine.run(f"sudo ros config set rancher.network.http_proxy {PROXY}", check=True)
    machine.run(f"sudo ros config set rancher.network.no_proxy '{NO_PROXY}'", check=True)
    # a one-file image, saved where the system Docker preloads from, then removed
    machine.run(f"cd /etc && sudo tar -c hostname | sudo system-docker import - "
                f"roslab/preload:{mark} >/dev/null && sudo system-docker save -o {PRELOADED} "
                f"roslab/preload:{mark} && sudo system-docker rmi roslab/preload:{mark} "
                ">/dev/null", timeout=120, check=True)
    return {"host keys": machine.run(HOST_KEYS, check=True).output.strip()}


def _settings_lost(machine: Machine, profile: Profile, mark: str,
                   before: dict[str, str]) -> list[str]:
    problems = []
    name = profile.optional_service
    if name and machine.run(f"sudo system-docker inspect --format '{{{{.State.Running}}}}' "
                            f"{name}").output.strip() != "true":
        problems.append(f"{name}, enabled with `ros service enable` before the reboot, is not "
                        "running after it")
    if machine.run(HOST_KEYS).output.strip() != before["host keys"]:
        problems.append("the SSH host keys changed (RancherOS keeps them in rancher.ssh.keys)")
    if not machine.run(f"sudo system-docker image inspect --format ok roslab/preload:{mark}").ok:
        problems.append(f"the system Docker did not load {PRELOADED}")
    for docker in ("sudo system-docker", "docker"):
        seen = machine.run(PROXY_OF.format(docker=docker)).output.strip()
        if seen != f"{PROXY} {NO_PROXY}":
            problems.append(f"`{docker} info` shows proxy {seen!r}, not rancher.network's "
                            f"{PROXY} {NO_PROXY}")
    return problems


def _state_directory_problems(machine: Machine) -> list[str]:
    """rancher.state.directory: /home is that folder's home on the state partition (the
    mount's root within its filesystem, as /proc/self/mountinfo gives it)."""
    info = machine.run("cat /proc/self/mountinfo", check=True).output
    roots = [f[3] for f in (line.split() for line in info.splitlines())
             if len(f) > 4 and f[4] == "/home"]
    want = f"/{STATE_DIRECTORY}/home"
    if roots and roots[-1] == want:
        return []
    return [f"rancher.state.directory={STATE_DIRECTORY}: /home is {roots[-1] if roots else None!r}"
            f" of its filesystem, not {want} of the state partition"]


def _hidden_args_problems(machine: Machine) -> list[str]:
    """The kernel arguments after `--`, as RancherOS handles them."""
    problems = []
    cmdline = machine.run("cat /proc/cmdline", check=True).output.strip()
    if any(arg in cmdline.split() for arg in HIDDEN):
        problems.append(f"after `--`: /proc/cmdline shows them: {cmdline[-200:]!r}")
    extra = machine.run("sudo ros config get rancher.environment.EXTRA_CMDLINE").output.strip()
    if " ".join(HIDDEN[1:]) not in extra:
        problems.append(f"after `--`: rancher.environment.EXTRA_CMDLINE is {extra!r}")
    if machine.run("cat /var/lib/rancher/conf/cloud-config.d/init.yml").ok:
        problems.append("after `--`: cloud-config.d/init.yml is readable by rancher")
    hostname = machine.run("hostname", check=True).output.strip()
    if hostname != HIDDEN_HOSTNAME:
        problems.append(f"after `--`: cc.hostname={HIDDEN_HOSTNAME} was not applied "
                        f"(hostname {hostname!r})")
    return problems


def test_state_persists_across_a_power_cycle(boot_machine, lab_config,  # type: ignore[no-untyped-def]
                                             profile: Profile) -> None:
    mark = f"kept-{secrets.token_hex(4)}"
    machine = _boot_with_state(boot_machine, lab_config)
    wait_boot_complete(machine, profile)
    tag = f"roslab/persist:{mark}"
    offline = user_docker_image(machine, profile)
    machine.run(f"echo {mark} > {KEPT[0]} && docker tag {offline} {tag}", check=True)
    machine.run(f"for f in {' '.join(KEPT[1:] + GONE)}; do echo {mark} | sudo tee $f "
                ">/dev/null; done; sync", check=True)
    written = machine.run(f"cat {' '.join(KEPT + GONE)}").output.split().count(mark)
    assert written == len(KEPT + GONE), f"could not write the test files: {written} written"
    before = _set_before_reboot(machine, profile, mark)

    machine.power_cycle()
    wait_boot_complete(machine, profile)
    lost = [f for f in KEPT if machine.run(f"cat {f}").output.strip() != mark]
    images = machine.run(f"docker image inspect --format ok {tag}")
    kept_wrongly = [f for f in GONE if machine.run(f"test -e {f}").ok]
    problems = []
    if lost:
        problems.append(f"lost on the state partition: {', '.join(lost)}")
    if not images.ok:
        problems.append(f"the user Docker lost the image {tag}: {images.output.strip()[-200:]}")
    if kept_wrongly:
        problems.append(f"kept though they live in RAM: {', '.join(kept_wrongly)}")
    problems += _settings_lost(machine, profile, mark, before)
    if lab_config.resolved_image().kind in CMDLINE_KINDS:  # the lab gave the state arguments
        problems += _state_directory_problems(machine) + _hidden_args_problems(machine)
    if problems:
        log = machine.run("cat /var/log/boot/autoformat.log 2>&1").output.strip()[-600:]
        pytest.fail("after a power cycle " + "; ".join(problems)
                    + f"\n/var/log/boot/autoformat.log:\n{log}")
