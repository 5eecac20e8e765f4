"""Errors the lab raises. Each names its cause so a user can act without reading lab code."""

from __future__ import annotations


class LabError(Exception):
    """Base of every error the lab reports to a user (never quoting a secret it knows).

    `blame` says whose failure it is, for soak runs and flake rates: the guest's (the OS
    did not do what the contract says), the input's (options, image, cloud-config) or
    the lab's own (an emulator that would not start, a bug: a flake to fix).
    """

    blame = "lab"

    def __str__(self) -> str:
        from lab.redact import redact

        return redact(super().__str__())


class ConfigError(LabError):
    """Bad input found before any machine starts: options, cloud-config, inventory."""

    blame = "input"


class ImageError(LabError):
    """An image that is missing, corrupt, of the wrong kind or of the wrong arch."""

    blame = "input"


class BuildError(LabError):
    """The reference image could not be built (names what could not be fetched or made)."""


class PlatformError(LabError):
    """The platform refused or failed a request (a cloud API error: quota, permissions)."""


class BootError(LabError):
    """A guest that did not boot: panic, hang, or an early exit of the emulator.

    The message carries what was expected, the last milestone reached, the last
    console lines and where the full console log is.
    """

    blame = "guest"

    def __init__(
        self,
        summary: str,
        *,
        expected: str = "",
        milestone: str | None = None,
        last_lines: list[str] | None = None,
        log_path: str | None = None,
    ) -> None:
        self.summary = summary
        self.expected = expected
        self.milestone = milestone
        self.last_lines = last_lines or []
        self.log_path = log_path
        super().__init__(self.render())

    def render(self) -> str:
        parts = [self.summary]
        if self.expected:
            parts.append(f"expected: {self.expected}")
        parts.append(f"last milestone reached: {self.milestone or 'none'}")
        if self.last_lines:
            parts.append("last console lines:")
            parts.extend(f"    | {line}" for line in self.last_lines)
        if self.log_path:
            parts.append(f"full console log: {self.log_path}")
        return "\n".join(parts)


class GuestPanic(BootError):
    """The console watchers saw a kernel panic, oops, BUG or an init crash."""


class ServiceFailed(BootError):
    """A system service that should run is crash-looping or exited (names it, with its log)."""


class BootTimeout(BootError):
    """The guest did not reach an expected point in time."""


class SSHKeyRefused(BootTimeout):
    """sshd answers but refuses the lab's key: the guest cannot be reached over SSH."""


class HostError(LabError):
    """The host cannot do its part (a full disk, a missing tool): not the guest's fault."""


class EmulatorError(BootError):
    """The emulator or hypervisor would not start or run the machine: the host's fault."""

    blame = "lab"


class CommandError(LabError):
    """A command run in the guest failed where success was required."""

    blame = "guest"
