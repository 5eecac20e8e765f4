"""`ros install`: from the release's ISO to a blank disk, then the machine boots that disk
by its own boot loader, with the given cloud-config and kernel arguments, and the disk's
state partition keeps a file in /home/rancher and a user Docker image across a reboot.

RancherOS installs from its ISO (or, online, its installer image): a kernel+initrd run
boots the release's rancheros.iso next to them for this; a release without one (or an
image with nothing to install from) is not applicable.
"""

from __future__ import annotations

import secrets

import pytest

from fixtures.guest import user_docker_image, wait_boot_complete
from fixtures.profiles import Profile
from lab.images import DISK, ISO, KERNEL, Image

BLANK_DISK = 2 << 30
LOADER = "SYSLINUX"  # what the installed disk's loader prints (the ISO's says ISOLINUX)

pytestmark = pytest.mark.needs("disks", "disk_boot")


def _install_media(image: Image) -> Image:
    if image.kind in (ISO, DISK):
        return image
    if image.kind == KERNEL and (image.path / "rancheros.iso").is_file():
        return Image.open(image.path / "rancheros.iso")
    pytest.skip(f"not applicable: ros install installs from the release's ISO, and "
                f"{image.path} has no rancheros.iso")


def test_ros_install_then_boot_from_the_disk(boot_machine, lab_config,  # type: ignore[no-untyped-def]
                                            profile: Profile) -> None:
    mark = secrets.token_hex(4)
    machine = boot_machine(image=_install_media(lab_config.resolved_image()),
                           blank_disks=[BLANK_DISK])
    target = machine.blank_disks()[0]
    machine.run(f"printf '#cloud-config\\nhostname: installed-{mark}\\n' > /tmp/install.yml",
                check=True)
    done = machine.run(f"sudo ros install -f --no-reboot -d {target} -c /tmp/install.yml "
                       f"-a rancher.roslab_mark={mark} 2>&1", timeout=600)
    assert done.ok, f"ros install -d {target} failed: {done.output.strip()[-800:]}"

    before = machine.console_log.read_text(errors="replace").count(LOADER)
    machine.power_cycle(boot_from_disk=0)
    loaded = machine.console_log.read_text(errors="replace").count(LOADER) - before
    assert loaded >= 1, f"the machine did not boot by the disk's loader ({LOADER} not seen)"
    cmdline = machine.run("cat /proc/cmdline", check=True).output
    assert f"rancher.roslab_mark={mark}" in cmdline, f"-a did not reach the kernel: {cmdline}"
    hostname = machine.run("hostname", check=True).output.strip()
    assert hostname == f"installed-{mark}", (
        f"the -c cloud-config was not applied on the installed disk: hostname {hostname!r}")

    wait_boot_complete(machine, profile)
    tag = f"roslab/installed:{mark}"
    offline = user_docker_image(machine, profile)
    machine.run(f"echo {mark} > /home/rancher/kept.txt && docker tag {offline} "
                f"{tag} && sync", check=True)
    machine.power_cycle()
    wait_boot_complete(machine, profile)
    kept = machine.run("cat /home/rancher/kept.txt").output.strip()
    image = machine.run(f"docker image inspect --format ok {tag} 2>&1")
    assert kept == mark and image.ok, (
        f"the installed disk did not keep its state across a reboot: /home/rancher/kept.txt "
        f"holds {kept!r}; docker image {tag}: {image.output.strip()[-200:]}")
