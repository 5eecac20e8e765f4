"""The driver protocol: what every platform (QEMU, libvirt, clouds, physical boxes) offers.

A driver turns a `MachineSpec` into a running machine and gives back two endpoints: a
console byte stream and an SSH address. Everything above it (console, login, SSH,
timeline, fixtures) is platform-neutral. `capabilities` says what a driver can do, so
the lab refuses, before anything starts, a request the platform cannot serve.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lab.cloudconfig import CloudConfig
from lab.gc import Garbage
from lab.images import Image
from lab.timeline import Timeline

DEFAULT_WHY_NOT = {
    "disks": "gets no blank disk kept across a power cycle from the lab (not built for this "
             "platform yet)",
    "disk_boot": "cannot be powered on from a disk the guest installed (not built for this "
                 "platform yet)",
    "extra_nics": "gives the guest one network interface only",
}


@dataclass(frozen=True)
class Option:
    """A command-line option a platform takes, the same in pytest and in `roslab` commands;
    its value reaches the driver as `MachineSpec.options[dest]`."""

    flag: str  # "--region"
    help: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, add_option: Callable[..., Any], platforms: list[str]) -> None:
        """Declare it with `add_option` (argparse's add_argument or pytest's addoption)."""
        extra = {k: v for k, v in (("metavar", self.metavar), ("type", self.type)) if v}
        add_option(self.flag, default=None, help=f"{', '.join(platforms)}: {self.help}",
                   **extra)


@dataclass(frozen=True)
class Check:
    """One line of `roslab doctor`: what was checked, whether it holds, how to fix it."""

    ok: bool
    what: str
    fix: str = ""
    required: bool = True  # False: a failing check is advice, not a problem


@dataclass(frozen=True, eq=False)
class Capabilities:
    arches: tuple[str, ...]
    console: bool  # a serial console the lab can read and type into
    ssh: bool  # an SSH endpoint reachable from the host (the network)
    power_button: bool  # an ACPI power button press (graceful shutdown)
    snapshot: bool  # save and restore a running machine
    datasources: tuple[str, ...]  # cloud-config delivery this platform can do; first = default
    image_kinds: tuple[str, ...]  # lab.images kinds it boots
    network: bool = True  # a network interface the guest configures (eth0)
    # a console log the lab can read (its serial console, or the platform's console output)
    console_log: bool = True
    disks: bool = False  # blank disks attached, kept across a power cycle (persistence)
    disk_boot: bool = False  # power on again from a disk the guest installed itself to
    extra_nics: bool = False  # network interfaces beyond the first (bonds, bridges, VLANs)
    board: str = ""  # the machine model, when a platform has several (qemu: pc, virt, raspi3b)
    # how much slower than x86_64 under TCG this machine runs; timeouts are scaled by it
    slowdown: float = 1.0
    why_not: dict[str, str] = field(default_factory=dict)  # capability -> why it is missing

    def lacks(self, capability: str) -> str | None:
        """Why this machine cannot do `capability` (None when it can)."""
        if getattr(self, capability, True):
            return None
        default = DEFAULT_WHY_NOT.get(capability, f"has no {capability}")
        return self.why_not.get(capability, f"{self.board or 'this machine'} {default}")


@dataclass(frozen=True)
class HostRoute:
    """How a machine reaches a service the lab runs on this host (the registry)."""

    listen: str  # the host address such a service listens on
    guest: str  # the same host, as the guest reaches it


@dataclass
class MachineSpec:
    """Everything a driver needs to make one machine; validated before `prepare`."""

    name: str
    arch: str
    image: Image
    workdir: Path  # the driver's scratch space; removed by the machine on stop
    cloud_config: CloudConfig | None
    datasource: str  # one of lab.cloudconfig.DATASOURCES
    password: str  # rancher's console password (kernel cmdline on direct kernel boot)
    accel: str = "tcg"  # already resolved: never "auto" here
    memory_mb: int = 2048
    cpus: int = 2
    cmdline_extra: list[str] = field(default_factory=list)
    # the instance's SSH keys where a cloud hands them over by metadata (as a key pair)
    ssh_keys: list[str] = field(default_factory=list)
    blank_disks: list[int] = field(default_factory=list)  # sizes in bytes (needs `disks`)
    # MACs of NICs after the first (needs `extra_nics`), in the guest's order: eth1, eth2...
    # each on a link of its own that leads nowhere
    extra_nics: list[str] = field(default_factory=list)
    keep_on_exit: bool = False  # survive the harness (--keep-failed); otherwise die with it
    options: dict[str, Any] = field(default_factory=dict)  # platform options (--region, --hw, ...)


def lab_kernel_args(spec: MachineSpec, datasource: str | None,
                    cloud_config_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """What the lab adds to a kernel command line it writes, on every platform: rancher's
    console password, the datasource (None keeps the image's own, "" empties them),
    panic=-1 (a panic ends the guest instead of hanging it), cloud-config given by the
    cmdline, then the run's extra arguments, last so that they win."""
    return [
        f"rancher.password={spec.password}",
        *([] if datasource is None else [f"rancher.cloud_init.datasources=[{datasource}]"]),
        "panic=-1", *cloud_config_args, *spec.cmdline_extra,
    ]


# QEMU's config-file reader takes lines of at most 1023 bytes (`  append = "..."`)
READCONFIG_VALUE_MAX = 1000


def kernel_cmdline_args(args: list[str], path: Path) -> list[str]:
    """QEMU arguments that give a directly booted kernel the command line `args`.

    The command line holds rancher's console password, and every local user can read a
    process's arguments (`ps`, /proc/PID/cmdline). So it goes in a file only its owner
    reads, named by `-readconfig` (its `[machine]` section sets the machine's `append`
    property, as `-append` does): the guest, RancherOS too, still finds it on its own
    /proc/cmdline. QEMU's reader takes no `"` and about 1000 bytes in a value, so a
    command line it cannot hold (a long or quoted `cmdline` cloud-config) falls back to
    `-append`, visible as before.
    """
    text = " ".join(args)
    if '"' in text or "\n" in text or len(text.encode()) > READCONFIG_VALUE_MAX:
        return ["-append", text]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f'[machine]\n  append = "{text}"\n')
    return ["-readconfig", str(path)]


@dataclass(frozen=True)
class Snapshot:
    """A running machine's saved state, to start copies of it (`Driver.restore`).

    `path` holds everything the state needs that the template machine's work folder
    held (its writable disks, its config drive); `data` is the driver's own.
    """

    path: Path
    platform: str
    size: int  # bytes of saved state
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rehearsal:
    """A cloud's API stand-in running on this host, for a rehearsal: the driver's SDK is
    pointed at it by that SDK's own settings (`env`), and it does the cloud's work, booting
    a real guest under QEMU for each instance. The driver's code is the same as for the
    real cloud."""

    what: str  # one line for reports: which stand-in, booting what
    env: dict[str, str]  # the SDK's standard settings that point it at the stand-in
    # platform options a run needs against it (where SSH comes from: the loopback range)
    options: dict[str, str] = field(default_factory=dict)
    # what it still holds (instances, images, keys, firewall rules, buckets, guests,
    # listening ports), one line each; empty once a run and its gc cleaned up
    leftovers: Callable[[], list[str]] = list
    # the guests it booted: {"instance", "accel", "accel_reason", "address", "outcome"}
    guests: Callable[[], list[dict[str, str]]] = list


class Driver(ABC):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    # True when the driver hands `MachineSpec.ssh_keys` to the instance the way its cloud
    # does (a key pair, `ssh-keys` metadata) for a metadata datasource; otherwise the lab's
    # key travels in the cloud-config's ssh_authorized_keys
    delivers_instance_keys: ClassVar[bool] = False
    # its machines run on this host and take its memory and CPU (lab/admission.py)
    runs_on_host: ClassVar[bool] = False
    # its objects live in a cloud account (`roslab gc --all-clouds` visits each such one)
    in_cloud: ClassVar[bool] = False
    # it makes things outside the host process (domains, instances, held places) that
    # `roslab gc --platform` sweeps after a CI cell, whatever happened
    leaves_garbage: ClassVar[bool] = False
    # a shell command a CI job runs as root before a cell on this platform ("": none)
    ci_setup: ClassVar[str] = ""
    # credentials its SDK reads from a file named by a variable: a CI secret holding the
    # file's content is written to a private file and the variable set to its path
    file_secrets: ClassVar[tuple[str, ...]] = ()
    # files of its own in the machine's work folder that a failed test keeps as evidence
    artifacts: ClassVar[tuple[str, ...]] = ()
    # the command-line options it takes (MachineSpec.options), shown by pytest and roslab
    options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def not_ready(cls, options: dict[str, Any]) -> str | None:
        """Why this platform cannot be used from here (an SDK, credentials or a place
        missing), said before anything starts; None when it can."""
        return None

    @classmethod
    def rehearsal(cls) -> AbstractContextManager[Rehearsal] | None:
        """The stand-in of this platform's cloud API to rehearse against on this host
        (started on enter; on exit it stops every guest and port it made); None when the
        platform has none (or needs none: its machines already run here)."""
        return None

    @classmethod
    def host_address_for_guest(cls, datasource: str,
                               options: dict[str, Any]) -> HostRoute | None:
        """Where a service the lab runs on this host (its registry) listens, and the address
        a machine on `datasource` reaches it by; None when its machines are not on this
        host's network (a cloud, a box): they use their own, and get no such service."""
        return None

    @classmethod
    def doctor(cls, options: dict[str, Any], arch: str) -> list[Check]:
        """`roslab doctor`'s checks of what this platform needs on this host."""
        return []

    @classmethod
    def host_threads_for(cls, image: Image, arch: str, accel: str, cpus: int) -> int:
        """Host threads such a machine keeps busy while it starts: the CPU slots it takes
        (lab/admission.py). One a vCPU, unless the emulator runs them all on one."""
        return cpus

    @classmethod
    def most_cpus(cls, arch: str, accel: str) -> tuple[int, str] | None:
        """(vCPUs, why): the most this platform can safely give an `arch` guest under
        `accel`; None when it has no such limit."""
        return None

    @abstractmethod
    def prepare(self, spec: MachineSpec) -> None:
        """Make disks, config drives, servers: everything short of powering on."""

    @abstractmethod
    def start(self) -> float:
        """Power on; returns the host-monotonic time of power-on (the timeline's t0).

        When it returns, `console_stream()` is connected and has missed no byte.
        """

    @abstractmethod
    def console_stream(self) -> socket.socket:
        """The console as a connected byte stream (recv/sendall/fileno/close)."""

    @abstractmethod
    def ssh_endpoint(self) -> tuple[str, int]:
        """(host, port) where the guest's sshd (port 22) is reachable from the harness."""

    def dhcp_hostname(self) -> str | None:
        """The host name the machine's DHCP server offers it (None: none offered)."""
        return None

    @abstractmethod
    def power_button(self) -> None:
        """Press the power button (ACPI): the guest shuts down by itself."""

    @abstractmethod
    def alive(self) -> bool:
        """True while the machine runs."""

    @abstractmethod
    def exit_reason(self) -> str:
        """Why the machine stopped on its own (emulator exit code and last stderr lines)."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """Power off now (hard); idempotent."""

    @abstractmethod
    def cleanup(self) -> None:
        """Release everything prepare/start made (servers, cloud objects); idempotent."""

    def exclusive_resource(self, spec: MachineSpec) -> str | None:
        """What only one machine at a time can hold on this host (None: nothing): a
        physical box, a fixed host port. A test's own machine that needs it gets it from an
        idle shared machine, which is stopped first (and booted again when next needed)."""
        return None

    def pause(self) -> bool:
        """Stop the running guest's vCPUs until `resume`, keeping its memory, console and
        network: a machine that waits to be used then takes no host CPU. Returns whether
        it paused (False: this platform's machines run on)."""
        return False

    def resume(self) -> None:
        """Let a machine `pause` stopped run on."""
        raise NotImplementedError(f"{self.name} never pauses a machine")

    def snapshot_unsupported(self, spec: MachineSpec) -> str | None:
        """Why a machine made from `spec` cannot be snapshotted (None when it can)."""
        return self.capabilities_for(spec.image, spec.arch).lacks("snapshot")

    def snapshot(self, dest: Path, keep_running: bool = False) -> Snapshot:
        """Save the running machine into the new folder `dest`, then power it off (or,
        with `keep_running`, let it go on where `live_snapshot_unsupported` allows).

        Restored copies start from that state with disks of their own on top of it.
        """
        raise NotImplementedError(f"{self.name} cannot save a running machine")

    def live_snapshot_unsupported(self) -> str | None:
        """Why this running machine cannot be saved and go on running (None: it can)."""
        return f"{self.name} cannot save a machine and keep it running"

    def restore(self, spec: MachineSpec, snapshot: Snapshot) -> float:
        """Instead of prepare + start: a new machine running from `snapshot`, with its own
        work folder, disk layer, console and SSH endpoint; returns the host-monotonic
        time the guest resumed. The console is connected and has missed no byte."""
        raise NotImplementedError(f"{self.name} cannot restore a saved machine")

    @classmethod
    def capabilities_for(cls, image: Image, arch: str) -> Capabilities:
        """What the machine made for `image` can do (a platform may pick a board by image)."""
        return cls.capabilities

    @classmethod
    def reference_artifact(cls, options: dict[str, Any]) -> str | None:
        """The file of the reference release these options boot when no --image is given
        (None: the release folder, kernel and initrd), as a user of that hardware would."""
        return None

    def resolve_accel(self, requested: str, image: Image, scratch: Path) -> tuple[str, str]:
        """(accelerator to use, why): platforms without a choice keep what they have."""
        return "native", "the platform decides"

    def watch(self, timeline: Timeline) -> None:
        """Called once t0 is set: a driver that sees milestones the console cannot (a box
        fetching its netboot files) marks them on `timeline`."""
        return None

    def info(self) -> dict[str, Any]:
        return {}

    def blank_disk_devices(self) -> list[str]:
        """The guest's names of `MachineSpec.blank_disks` (/dev/vda ...), in order."""
        raise NotImplementedError(f"platform {self.name} attaches no blank disks")

    def boot_from_disk(self, index: int) -> None:
        """At the next `start`, boot blank disk `index` (now installed) instead of the image."""
        raise NotImplementedError(f"platform {self.name} cannot boot an installed disk")

    def attach_hint(self) -> str:
        """How a person reaches a machine left running (--keep-failed)."""
        return ""

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[Garbage]:
        """Find (and unless `dry_run`, remove) what dead runs left (see lab/gc.py).

        Platforms whose machines die with the harness (QEMU: PR_SET_PDEATHSIG) leave
        nothing outside the host process, so they have nothing to collect (the scratch
        folders of dead runs are swept for every platform: `lab.gc.stale_scratch`).
        """
        return []
