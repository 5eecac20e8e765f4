"""Boot timeline: milestones with host-monotonic timestamps measured from power-on.

Every driver records the same milestones the same way, so bench history from QEMU,
clouds and physical boxes can be compared. Names are stable strings: they are the keys
of budgets files and of the bench history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# The milestones in boot order. `service:<name>` milestones (one per system container)
# sit between SYSTEM_DOCKER and LOGIN_PROMPT.
FIRMWARE = "firmware"  # first byte on the console (BIOS/bootloader) -- not all platforms
NETBOOT = "netboot"  # the box fetched its iPXE script from the lab (firmware + DHCP done)
NETBOOT_LOADED = "netboot-loaded"  # the lab sent the box its kernel and initrd
KERNEL = "kernel"  # "Linux version ..." on the console
UNPACK_START = "unpack-start"  # the kernel starts unpacking the initramfs
UNPACKED = "unpacked"  # ... and frees the initrd: the phase is the unpack itself
INIT = "init"  # the kernel ran the first user-space process
SYSTEM_DOCKER = "system-docker"  # system Docker answering (earliest system container created)
SERVICES = "services"  # every long-running system container running
LOGIN_PROMPT = "login-prompt"  # "login:" on the serial console (or autologin shell)
STARTED = "started"  # "<OS> <version> started" on the console
SSH = "ssh"  # the lab logs in over SSH with its key (a refused key is not reached)
USER_DOCKER = "user-docker"  # `docker version` answers as the user

# A machine restored from a snapshot has these instead: t0 is when the restore began
RESUMED = "resumed"  # the saved state is loaded and the guest runs again
RESTORED = "restored"  # its console shell answers: the machine is usable

ORDER = [FIRMWARE, NETBOOT, NETBOOT_LOADED, KERNEL, UNPACK_START, UNPACKED, INIT, SYSTEM_DOCKER,
         SERVICES, LOGIN_PROMPT, STARTED, SSH, USER_DOCKER]


def service_milestone(name: str) -> str:
    return f"service:{name}"


@dataclass
class Timeline:
    """Milestones of one boot. `t0` is the host-monotonic time of power-on."""

    t0: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)  # name -> seconds since t0

    def mark(self, name: str, at: float | None = None) -> None:
        """Record `name` at host-monotonic time `at` (now if None); first record wins."""
        if name not in self.marks:
            self.marks[name] = (time.monotonic() if at is None else at) - self.t0

    def mark_offset(self, name: str, seconds: float) -> None:
        """Record `name` at `seconds` after power-on (for milestones measured after the fact)."""
        self.marks.setdefault(name, seconds)

    def last_reached(self) -> str | None:
        if not self.marks:
            return None
        return max(self.marks.items(), key=lambda kv: kv[1])[0]

    def ordered(self) -> list[tuple[str, float]]:
        return sorted(self.marks.items(), key=lambda kv: kv[1])

    def phases(self) -> list[tuple[str, float, float]]:
        """(milestone, start, end) where start is the previous milestone in time."""
        out: list[tuple[str, float, float]] = []
        prev = 0.0
        for name, at in self.ordered():
            out.append((name, prev, at))
            prev = at
        return out

    def to_dict(self) -> dict[str, float]:
        return {name: round(at, 3) for name, at in self.ordered()}


# Pairs (earlier, later) every RancherOS-style boot keeps, whatever the image prints.
CAUSAL_ORDER = [
    (NETBOOT, NETBOOT_LOADED),
    (NETBOOT_LOADED, KERNEL),
    (KERNEL, INIT),
    (INIT, SYSTEM_DOCKER),
    (SYSTEM_DOCKER, SERVICES),
    (INIT, LOGIN_PROMPT),
    (INIT, SSH),
    (SYSTEM_DOCKER, USER_DOCKER),
]


def order_problems(marks: dict[str, float]) -> list[str]:
    """What is wrong with the order of `marks`: a milestone before power-on, or one that
    came before a milestone it depends on (a clock or a detection that is wrong)."""
    problems = [f"{name} at {at:.1f} s, before power-on"
                for name, at in marks.items() if at < 0]
    for earlier, later in CAUSAL_ORDER:
        if earlier in marks and later in marks and marks[later] < marks[earlier]:
            problems.append(f"{later} at {marks[later]:.1f} s comes before {earlier} "
                            f"at {marks[earlier]:.1f} s")
    return problems
