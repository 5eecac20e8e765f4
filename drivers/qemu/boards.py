"""QEMU's machine models as the lab drives them (pc, virt, raspi3b: each with its
capabilities) and the device arguments they share."""

from __future__ import annotations

from dataclasses import dataclass

from lab import cloudconfig
from lab.driver import Capabilities
from lab.images import DISK, GCE_TARBALL, ISO, KERNEL, SDCARD, Image

# -- boards --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Board:
    """A QEMU machine model and how the lab drives it."""

    machine: str  # -M ("" for QEMU's default, the x86 pc)
    cpu: str  # -cpu under TCG ("" for the machine's default); KVM always takes the host's
    tcg: str  # the -accel value under TCG
    tty: str  # the guest's name for the console the lab attaches to
    serial_index: int  # which -serial that console is (those before it get null)
    caps: Capabilities
    memory_mb: int | None = None  # fixed by the board (None: as the spec asks)


BOARDS = {
    # single-threaded: under multi-threaded TCG a vCPU can keep running a stale translation
    # of kernel text another vCPU has just patched (a static key flipping: x86 patches
    # through a temporary int3) and trap on that int3 for ever. QEMU 7.2 hung an idle
    # boot so about once in a hundred; 10.0 hung the contract test's flip loop once in 69
    # runs on a loaded host (docs/design-notes.md)
    "pc": Board("", "", "tcg,thread=single", "ttyS0", 0, Capabilities(
        arches=("x86_64",), console=True, ssh=True, power_button=True,
        snapshot=True,  # migrate to a file, restore with -incoming
        datasources=cloudconfig.DATASOURCES, image_kinds=(KERNEL, ISO, DISK, GCE_TARBALL),
        board="pc", disks=True, disk_boot=True, extra_nics=True)),
    "virt": Board("virt", "cortex-a57", "tcg", "ttyAMA0", 0, Capabilities(
        arches=("aarch64",), console=True, ssh=True, power_button=False, snapshot=True,
        datasources=cloudconfig.DATASOURCES, image_kinds=(KERNEL,), board="virt", disks=True,
        extra_nics=True,
        # emulated arm64 on x86, from `roslab bench` medians to the user Docker: virt 1.3x
        # pc, raspi3b 2.7x; timeouts get more room than that
        slowdown=2.0,
        why_not={"power_button": "acpid is x86 only, as on RancherOS: nothing in an arm64 "
                                 "guest handles the power button",
                 "disk_boot": "the lab boots QEMU virt by its kernel (no firmware boots an "
                              "installed disk), and ros install writes BIOS (syslinux) disks"})),
    # 4 vCPUs spin in the boot stub under multi-threaded TCG: single-threaded boots 5x faster
    "raspi3b": Board("raspi3b", "", "tcg,thread=single", "ttyS1", 1, Capabilities(
        arches=("aarch64",), console=True, ssh=False, power_button=False, snapshot=False,
        datasources=("cmdline",), image_kinds=(SDCARD,), network=False, board="raspi3b",
        slowdown=4.0,  # see virt
        why_not={
            "snapshot": "the lab does not save raspi3b machines (its SD card model is not "
                        "restored over a new overlay)",
            "ssh": "QEMU's raspi3b model has no network (no USB Ethernet), so no SSH",
            "network": "QEMU's raspi3b model has no network interface (no USB Ethernet)",
            "power_button": "a Raspberry Pi 3 has no power button and QEMU's raspi3b cannot "
                            "power off",
            "disks": "a Raspberry Pi 3 has one SD slot (the card) and no other disk",
            "disk_boot": "a Raspberry Pi 3 boots its SD card only",
        }), memory_mb=1024),
}
GENERAL_BOARD = {"x86_64": BOARDS["pc"], "aarch64": BOARDS["virt"]}


def machine_args(board: Board, accel: str) -> list[str]:
    """-M, -accel and -cpu for `board` under "kvm" or "tcg"."""
    args = ["-M", board.machine] if board.machine else []
    if accel == "kvm":
        return [*args, "-accel", "kvm", "-cpu", "host"]
    return [*args, "-accel", board.tcg, *(["-cpu", board.cpu] if board.cpu else [])]


def board_for(image: Image, arch: str) -> Board:
    """raspi3b for a Pi SD card (as flashed), else the arch's general-purpose board."""
    return BOARDS["raspi3b"] if image.kind == SDCARD else GENERAL_BOARD[image.arch or arch]


def extra_nic_args(macs: list[str], model: str = "virtio-net-pci") -> list[str]:
    """QEMU arguments for NICs after the first, all on one hub and nothing else: a switch
    with no uplink and no DHCP server (a user-mode link would answer DHCP with the same
    address and route as eth0's). A guest's bond, bridge or VLAN over them is made and
    checked without touching any network; QEMU warns that the hub reaches no host network."""
    argv: list[str] = []
    for i, mac in enumerate(macs, start=1):
        argv += ["-netdev", f"hubport,id=nic{i},hubid=1",
                 "-device", f"{model},netdev=nic{i},mac={mac},romfile="]
    return argv
