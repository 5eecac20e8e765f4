"""A Machine: one guest made by a driver from an image and a cloud-config.

`drivers.make_machine` checks everything a user can get wrong (platform, image, arch,
cloud-config, datasource) before anything starts; `Machine.boot` powers on, records the
timeline, and logs in on the console. A machine removes its work directory on stop;
`keep_artifacts` copies the evidence out first when someone wants it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import re
import secrets
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lab import timeline as tl
from lab.console import Console
from lab.driver import Driver, MachineSpec, Snapshot
from lab.errors import (
    BootError,
    BootTimeout,
    CommandError,
    ConfigError,
    LabError,
    ServiceFailed,
)
from lab.images import Image
from lab.redact import keep_secret, redact_bytes
from lab.result import Result
from lab.ssh import SSH, KeyPair

__all__ = ["Machine", "Result", "RUN_PASSWORD"]

USER = "rancher"
RUN_PASSWORD = secrets.token_hex(8)  # rancher's console password on direct kernel boot
keep_secret(RUN_PASSWORD, "console password")  # the kernel prints its cmdline on the console
BAKED_PASSWORD = "rancher"  # what ISO and disk images bake into their own cmdline
DEFAULT_MEMORY_MB, DEFAULT_CPUS = 2048, 2
DEFAULT_BOOT_TIMEOUT = 300.0  # TCG on a busy 2-core host; KVM boots need a fraction
# what the user-Docker wait watches: its own container (a broken ntp is a scenario's
# finding, not a reason to stop waiting)
USER_DOCKER_SERVICES = ("docker",)
SERVICE_CHECK_INTERVAL = 5.0  # seconds between looks at the system containers while waiting
CRASH_LOOP_RESTARTS = 3  # a service restarted this often during one wait is not recovering
SERVICE_LOG_LINES = 15
SERVICE_STATE_FORMAT = ("{{.Name}}|{{.State.Status}}|{{.State.ExitCode}}|{{.RestartCount}}|"
                        "{{.HostConfig.RestartPolicy.Name}}")
# the evidence every machine keeps; a driver adds its own files (Driver.artifacts)
ARTIFACTS = ("console.log", "cloud-config.yml", "timeline.json")



@dataclass(frozen=True)
class ServiceState:
    """One system container as `system-docker inspect` reports it."""

    status: str  # running, restarting, exited, created, dead
    exit_code: int
    restarts: int  # restarts by its restart policy (not by `system-docker restart`)
    policy: str  # restart policy: always, unless-stopped, on-failure, no

    @property
    def keeps_running(self) -> bool:
        return self.policy in ("always", "unless-stopped", "on-failure")

    def __str__(self) -> str:  # "running", "exited(0)": how scenarios quote a state
        return f"exited({self.exit_code})" if self.status == "exited" else self.status


_live: weakref.WeakSet[Machine] = weakref.WeakSet()
log = logging.getLogger(__name__)


@atexit.register
def _stop_all() -> None:
    """Second line of defence (the first is each owner's finally): nothing outlives the run."""
    for machine in list(_live):
        with contextlib.suppress(Exception):
            machine.stop()


class Machine:
    def __init__(self, driver: Driver, spec: MachineSpec, platform: str, image: Image,
                 ssh_key: KeyPair | None, password: str, accel_reason: str = "",
                 boot_timeout: float = DEFAULT_BOOT_TIMEOUT) -> None:
        self.driver = driver
        self.capabilities = driver.capabilities_for(image, spec.arch)
        self.spec = spec
        self.name = spec.name
        self.arch = spec.arch
        self.platform = platform
        self.image = image
        self.workdir = spec.workdir
        self.console_log = spec.workdir / "console.log"
        self.timeline = tl.Timeline()
        # system container -> {"created", "started", "finished"}: seconds since power-on
        self.service_spans: dict[str, dict[str, float]] = {}
        self.ssh_key = ssh_key
        self.password = password
        self.boot_timeout = boot_timeout
        self.console: Console | None = None
        self.keep = False  # left running on purpose (--keep-failed)
        self._ssh: SSH | None = None
        self._stopped = False
        self._paused = False
        # boot (or restore) and stop may come from two threads (a machine booted ahead):
        # a machine stopped before its emulator started never starts it
        self._power = threading.RLock()
        self._on_stop: list[Callable[[], object]] = []  # after the machine is gone
        self.info: dict[str, Any] = {
            "platform": platform, "arch": spec.arch, "accel": spec.accel,
            "accel_reason": accel_reason, "image": str(image.path), "image_kind": image.kind,
            "image_version": image.version, "datasource": spec.datasource,
            "board": self.capabilities.board,
        }
        _live.add(self)

    def __repr__(self) -> str:
        return f"<Machine {self.name} {self.platform}/{self.arch} {self.image.path}>"

    # lifecycle -----------------------------------------------------------------------------

    def scaled(self, seconds: float) -> float:
        """A timeout written for x86_64 under TCG, stretched for this (maybe emulated) machine."""
        return seconds * self.capabilities.slowdown

    def wait_until(self, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
        """Poll `check` until it returns something truthy (`timeout` in x86_64-TCG seconds,
        scaled for this machine); returns that value, or the last falsy one."""
        deadline = time.monotonic() + self.scaled(timeout)
        value = check()
        while not value and time.monotonic() < deadline:
            time.sleep(interval)
            value = check()
        return value

    def _need_not_stopped(self) -> None:
        if self._stopped:
            raise LabError(f"machine {self.name} was stopped before it started")

    def _need(self, capability: str, action: str) -> None:
        why = self.capabilities.lacks(capability)
        if why is not None:
            raise ConfigError(f"machine {self.name} cannot {action}: {why}")

    def host_threads(self) -> int:
        """Host threads this machine keeps busy while it starts (lab/admission.py)."""
        spec = self.spec
        return self.driver.host_threads_for(spec.image, spec.arch, spec.accel, spec.cpus)

    def boot(self, timeout: float | None = None) -> Machine:
        """Power on and log in on the console; BootError (GuestPanic, BootTimeout) if not."""
        timeout = self.scaled(timeout or self.boot_timeout)
        with self._power:
            self._need_not_stopped()
            self.driver.prepare(self.spec)
            self.timeline.t0 = self.driver.start()
        self.driver.watch(self.timeline)
        self.info.update(self.driver.info())
        if not self.capabilities.console:
            # a cloud machine: no console to log in on; it is up once SSH lets the lab in
            self.ssh(timeout)
            return self
        self.console = Console(self.driver.console_stream(), self.timeline, self.console_log,
                               self._exit_reason)
        self.console.login(USER, self.password, timeout)
        if self.console.started:
            self.info["os"] = " ".join(self.console.started)
        return self

    def settle(self, timeout: float = 60, quiet: float = 1.0) -> None:
        """Before a snapshot: let the boot finish. A template saved before its user Docker
        answers leaves each copy to finish the boot, and one saved before its "<OS>
        started" banner has each copy print it into its first command's output."""
        console = self._need_console()
        if self.run("command -v docker >/dev/null").ok:  # an OS image, not a tiny test guest
            self.wait_for_user_docker(timeout=300)
        deadline = time.monotonic() + self.scaled(timeout)
        while time.monotonic() < deadline:
            silent = time.monotonic() - console.last_rx
            # an image without the banner: a console quiet for long is all there is
            if silent > (quiet if tl.STARTED in self.timeline.marks else 10 * quiet):
                return
            time.sleep(0.1)

    def snapshot(self, dest: Path, keep_running: bool = False) -> Snapshot:
        """Save this running machine into the new folder `dest` and stop it (it becomes
        the template of the machines `restore` makes); with `keep_running` it goes on,
        as it was, where the driver can (`live_snapshot_unsupported`)."""
        self._need("snapshot", "be saved")
        why = self.driver.snapshot_unsupported(self.spec)
        if why is not None:
            raise ConfigError(f"machine {self.name} cannot be saved: {why}")
        if self._ssh is not None:  # a copy would inherit a TCP session nobody holds
            self._ssh.close()
            self._ssh = None
        snapshot = self.driver.snapshot(dest, keep_running)
        if not keep_running:
            self.stop()
        return snapshot

    def restore(self, snapshot: Snapshot, timeout: float = 60) -> Machine:
        """Start this (new) machine from `snapshot` instead of booting it: its own disk
        layer, SSH port, console log and timeline; usable once the console shell answers.

        The timeline's t0 is the start of the restore, and its milestones say so
        (resumed, restored), so no boot time is read from a restored machine.
        """
        self._need("snapshot", "be restored")
        self.timeline.t0 = time.monotonic()
        with self._power:
            self._need_not_stopped()
            self.timeline.mark(tl.RESUMED, self.driver.restore(self.spec, snapshot))
        self.info.update(self.driver.info())
        self.info.update(started="restored", snapshot=str(snapshot.path))
        self.console = Console(self.driver.console_stream(), self.timeline, self.console_log,
                               self._exit_reason)
        self.console.sync()  # the template's shell was synced, quiet and waiting: so is this one
        self.timeline.mark(tl.RESTORED)
        self._set_clock(timeout)  # the guest's clock stood still while the state was on disk
        return self

    def _set_clock(self, timeout: float) -> None:
        self.run(f"s=; command -v sudo >/dev/null && s=sudo; $s date -u -s @{time.time():.0f} "
                 ">/dev/null", timeout=timeout, check=True)

    def pause(self) -> None:
        """Stop the guest until `resume` (a machine booted ahead waits so, taking no host
        CPU from the machine in use); on a platform that cannot, it runs on."""
        with self._power:
            self._need_not_stopped()
            self._paused = self.driver.pause()

    def resume(self, timeout: float = 60) -> None:
        """Let a paused machine run on, its wall clock set again (it stood still)."""
        with self._power:
            if not self._paused:
                return
            self._need_not_stopped()
            self.driver.resume()
            self._paused = False
        self._set_clock(timeout)

    def _exit_reason(self) -> str:
        """Why the machine stopped, naming it (a session may have many)."""
        reason = self.driver.exit_reason()
        return f"machine {self.name} stopped: {reason}" if reason else ""

    def _context(self) -> dict[str, Any]:
        if self.console is not None:
            last = self.console.last_lines()
        else:  # a platform whose driver copies its (read-only) console output to the log
            text = self.console_log.read_text(errors="replace") if self.console_log.exists() \
                else ""
            last = text.splitlines()[-10:]
        return {"milestone": self.timeline.last_reached(), "last_lines": last,
                "log_path": str(self.console_log)}

    def _need_console(self) -> Console:
        if self.console is None:
            raise BootError("the machine is not booted: call boot() first", **self._context())
        return self.console

    def run(self, cmd: str, timeout: float = 60, check: bool = False) -> Result:
        """Run `cmd` as rancher in the console shell, or over SSH on a platform without an
        interactive console (`timeout` in x86_64-TCG seconds)."""
        if not self.capabilities.console:
            return self.ssh().run(cmd, self.scaled(timeout), check)
        return self._need_console().run(cmd, self.scaled(timeout), check)

    def ssh(self, timeout: float = 120) -> SSH:
        """SSH as rancher with the lab's key; connects on first use, waiting up to
        `timeout` seconds for sshd to answer and take the key."""
        self._need("ssh", "be reached by SSH")
        if self.ssh_key is None:
            raise ConfigError(f"machine {self.name} was made without an SSH key")
        if self._ssh is None:
            host, port = self.driver.ssh_endpoint()
            self._ssh = SSH(host, port, USER, self.ssh_key, self.timeline, self._context,
                            self._gone)
        return self._ssh.connect(timeout)

    def _gone(self) -> str | None:
        """Why the machine ended (its platform's words), None while it runs or when the
        platform cannot say right now (an API that did not answer is not an ending)."""
        try:
            return None if self.driver.alive() else self.driver.exit_reason()
        except LabError:
            return None

    def wait_for_user_docker(self, timeout: float = 180) -> None:
        expected = "`docker version` to succeed as rancher"
        checked = time.monotonic()

        def answering() -> bool:
            nonlocal checked
            try:
                if self.run("docker version >/dev/null 2>&1").ok:
                    return True
            except CommandError:  # a daemon still starting can hold the client past 60 s
                pass
            # a crash-looping service never recovers: say why now, not at the timeout
            if time.monotonic() - checked >= SERVICE_CHECK_INTERVAL:
                checked = time.monotonic()
                self.check_services(expected, USER_DOCKER_SERVICES)
            return False

        if self.wait_until(answering, timeout):
            self.timeline.mark(tl.USER_DOCKER)
            return
        self.check_services(expected, USER_DOCKER_SERVICES)
        raise BootTimeout(f"the user Docker did not answer within {self.scaled(timeout):.0f} s",
                          expected=expected, **self._context())

    def service_states(self, check: bool = True) -> dict[str, ServiceState]:
        """Every system Docker container by name, as `system-docker inspect` sees it.

        With check=False, a system Docker that does not answer (yet) gives {}."""
        listing = self.run(f"sudo system-docker inspect --format '{SERVICE_STATE_FORMAT}' "
                           "$(sudo system-docker ps -aq) 2>/dev/null", timeout=30, check=check)
        states = {}
        for line in listing.output.splitlines() if listing.ok else []:
            parts = line.split("|")
            if len(parts) == 5 and parts[2].lstrip("-").isdigit() and parts[3].isdigit():
                name, status, code, restarts, policy = parts
                states[name.lstrip("/")] = ServiceState(status, int(code), int(restarts), policy)
        return states

    def failing_services(self, only: Collection[str] | None = None) -> list[str]:
        """System containers (of `only`, when given) that should run and do not:
        crash-looping or exited despite a restart policy; each with its log tail."""
        faults = []
        for name, state in self.service_states(check=False).items():
            if only is not None and name not in only:
                continue
            if state.restarts >= CRASH_LOOP_RESTARTS:  # one restart may be a recovery
                # a running container's ExitCode was reset at its last start
                last = "" if state.status == "running" else f", last exit code {state.exit_code}"
                why = (f"is crash-looping (restarted {state.restarts} times, "
                       f"now {state.status}{last})")
            elif state.keeps_running and state.status in ("exited", "dead"):
                why = (f"exited with code {state.exit_code} although it should keep running "
                       f"(restart: {state.policy})")
            else:
                continue
            log = self.run(f"sudo system-docker logs --tail {SERVICE_LOG_LINES} {name} 2>&1",
                           timeout=30).output
            faults.append(f"system service {name} {why}; its log ends:\n"
                          + "\n".join(f"    | {x}" for x in log.splitlines()[-SERVICE_LOG_LINES:]))
        return faults

    def check_services(self, expected: str, only: Collection[str] | None = None) -> None:
        """Raise ServiceFailed naming every system service that should run and does not."""
        faults = self.failing_services(only)
        if faults:
            raise ServiceFailed("\n".join(faults), expected=expected, **self._context())

    def collect_boot_times(self, services: list[str] | None = None) -> dict[str, float]:
        """Milestones from the guest's own records (system-docker start times).

        The guest's wall clock is mapped to the host timeline through uptime: the KERNEL
        milestone (host time) is taken as uptime 0. SERVICES is marked only once every
        one of `services` (default: the running containers) is running. Each container's
        create, start and (one-shots) finish times go to `service_spans`. Returns the
        timeline as a dict.
        """
        # busybox date has no %N: wait for the wall clock's second to tick, then read
        # uptime, which pins the boot's wall-clock time to within one loop turn
        clock = self.run('s=$(date +%s); while [ "$(date +%s)" = "$s" ]; do :; done; '
                         "cat /proc/uptime; date +%s", check=True).output.split()
        uptime, guest_now = float(clock[0]), float(clock[2])
        boot_wall = guest_now - uptime
        kernel_at = self.timeline.marks.get(tl.KERNEL, 0.0)
        fmt = "{{.Name}} {{.Created}} {{.State.StartedAt}} {{.State.FinishedAt}} {{.State.Status}}"
        out = self.run(f"sudo system-docker inspect --format '{fmt}' $(sudo system-docker ps -aq)",
                       timeout=60, check=True).output
        created, started_running, running_names = [], [], set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue
            name, created_s, started_s, finished_s, status = parts
            name = name.lstrip("/")
            created.append(_rfc3339(created_s))
            started = _rfc3339(started_s)
            spans = {what: kernel_at + at - boot_wall for what, at in (
                ("created", created[-1]), ("started", started),
                ("finished", _rfc3339(finished_s) if status == "exited" else None))
                if at is not None}
            if spans:
                self.service_spans[name] = spans
            if started is not None:
                self.timeline.mark_offset(tl.service_milestone(name),
                                          kernel_at + started - boot_wall)
                if status == "running":  # not "restarting": Running is true then too
                    started_running.append(started)
                    running_names.add(name)
        stamps = [c for c in created if c is not None]
        if stamps:
            self.timeline.mark_offset(tl.SYSTEM_DOCKER, kernel_at + min(stamps) - boot_wall)
        if started_running and running_names.issuperset(services or ()):
            self.timeline.mark_offset(tl.SERVICES, kernel_at + max(started_running) - boot_wall)
        return self.timeline.to_dict()

    def blank_disks(self) -> list[str]:
        """The guest's device names of the blank disks the machine was made with."""
        self._need("disks", "attach blank disks")
        return self.driver.blank_disk_devices()

    def power_cycle(self, boot_from_disk: int | None = None,
                    timeout: float | None = None) -> Machine:
        """Shut down (power button, then hard after a while) and power on again with the
        same disks, or from blank disk `boot_from_disk` once the guest installed itself on
        it; then log in again. The console log goes on in the same file."""
        self._need("disks", "be powered on again with its disks")
        if boot_from_disk is not None:
            self._need("disk_boot", "boot from a disk it installed")
        if self.driver.alive() and not self.capabilities.lacks("power_button"):
            self.driver.power_button()
            self.wait_stopped(self.scaled(120))
        self.driver.stop()
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
        if self.console is not None:
            self.console.close()
            self.console = None
        if boot_from_disk is not None:
            self.driver.boot_from_disk(boot_from_disk)
            self.password = BAKED_PASSWORD
        self.info["boot_complete"] = False
        self.timeline = tl.Timeline()
        self.service_spans = {}
        self.timeline.t0 = self.driver.start()
        self.console = Console(self.driver.console_stream(), self.timeline, self.console_log,
                               self._exit_reason)
        self.console.login(USER, self.password, self.scaled(timeout or self.boot_timeout))
        return self

    def power_button(self) -> None:
        self._need("power_button", "press a power button")
        self.driver.power_button()

    def wait_stopped(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while self.driver.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.driver.alive()

    def keep_artifacts(self, dest: Path) -> Path:
        """Copy the evidence (console log, cloud-config, timeline) to `dest`; returns the log."""
        try:
            dest.mkdir(parents=True, exist_ok=True)
            (self.workdir / "timeline.json").write_text(
                json.dumps(self.timeline.to_dict(), indent=1))
            for name in (*ARTIFACTS, *self.driver.artifacts):
                if (self.workdir / name).exists():
                    # the emulator's own serial copy was written without the lab's redaction
                    (dest / name).write_bytes(redact_bytes((self.workdir / name).read_bytes()))
        except OSError as exc:  # a full disk must not hide the failure being reported
            log.warning("could not keep all of %s's evidence in %s: %s", self.name, dest, exc)
        return dest / "console.log"

    def attach_hint(self) -> str:
        hint = self.driver.attach_hint()
        if self.ssh_key is not None:
            hint = hint.replace("ssh -p", f"ssh -i {self.ssh_key.private_path} -p")
        return hint

    def stop(self) -> None:
        """Power off, release everything and remove the work directory (unless kept)."""
        with self._power:
            if self._stopped or self.keep:
                return
            self._stopped = True
        try:
            if self._ssh is not None:
                self._ssh.close()
            self.driver.stop()
            if self.console is not None:
                self.console.close()
            self.driver.cleanup()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            _live.discard(self)
            for release in self._on_stop:
                release()

    @property
    def stopped(self) -> bool:
        """stop() was called (the emulator may have died before, by itself)."""
        return self._stopped

    def on_stop(self, release: Callable[[], object]) -> None:
        """Call `release` once the machine has stopped (its admission slot, say)."""
        self._on_stop.append(release)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _rfc3339(text: str) -> float | None:
    """Docker's nanosecond RFC 3339 time as epoch seconds; None for the zero time."""
    if text.startswith("0001-"):
        return None
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        return None
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    base = datetime.fromisoformat(m.group(1) + zone).timestamp()
    return base + float("0." + (m.group(2) or "0"))
