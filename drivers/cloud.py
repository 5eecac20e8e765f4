"""What every cloud driver shares: its SDK imported only when used, settings read from the
environment, a ledger of what it created (deleted newest first on every exit path), bounded
waits, and the SSH source a firewall rule admits.

A cloud machine has no interactive serial console: the lab reaches it by SSH as `rancher`,
and where the cloud keeps a console log (GCE serial port output, OpenStack's console log)
the driver reads it as text (`console_text`). Checks that need to type on a console or
press a power button are not applicable there, with the reason in `Capabilities.why_not`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import secrets
import socket
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from lab.driver import Capabilities, Driver, HostRoute, MachineSpec, Option
from lab.errors import BootTimeout, ConfigError, LabError, PlatformError
from lab.images import CLOUD
from lab.redact import keep_secret, redact

T = TypeVar("T")

SSH_SOURCE_ENV = "ROSLAB_SSH_SOURCE"  # CIDR the per-run SSH rule admits (the runner's address)
INSTALL_HINT = "pip install 'roslab[clouds]'"

NO_CONSOLE = ("a cloud instance has no serial console the lab can type into (the lab "
              "reaches it by SSH; the console log, where the cloud keeps one, is read-only)")
NO_POWER_BUTTON = ("the cloud API offers stop/delete, not an ACPI power-button press "
                   "the lab can time")
NO_SNAPSHOT = "the lab does not snapshot cloud instances"


def cloud_capabilities(datasource: str, image_kinds: tuple[str, ...] = (CLOUD,),
                       **why_not: str) -> Capabilities:
    """What a cloud machine can do: SSH and network, no console to type on, no power button;
    a console log unless `why_not` says why the cloud keeps none (`console_log=...`)."""
    reasons = {"console": NO_CONSOLE, "power_button": NO_POWER_BUTTON, "snapshot": NO_SNAPSHOT}
    reasons.update(why_not)
    return Capabilities(arches=("x86_64",), console=False, ssh=True, power_button=False,
                        snapshot=False, datasources=(datasource,), image_kinds=image_kinds,
                        console_log="console_log" not in why_not, why_not=reasons)


def import_sdk(module: str, package: str, platform: str) -> ModuleType:
    """The cloud's SDK, imported on first use; a clear error naming the package if absent."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"platform {platform} needs the Python package {package} "
                          f"(`{INSTALL_HINT}` or `pip install {package}`): {exc}") from None


def setting(name: str, default: str | None = None, *, why: str = "") -> str:
    """An environment setting; a missing required one is a ConfigError naming it."""
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigError(f"{name} is not set{': ' + why if why else ''}")
    return value


def secret_env(name: str) -> str:
    """A credential from the environment, registered so that no evidence ever quotes it."""
    value = os.environ[name]
    keep_secret(value, name)
    return value


def require_env(platform: str, names: tuple[str, ...], what: str) -> None:
    """ConfigError naming every credential variable that is not set (`what`: what they are)."""
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"platform {platform}: {', '.join(missing)} not set ({what})")


def ssh_source(given: str | None = None) -> str:
    """The CIDR allowed to reach port 22 (the CI runner's public address, e.g. 203.0.113.7/32):
    the `ssh_from` platform option, else ROSLAB_SSH_SOURCE."""
    value = given or setting(SSH_SOURCE_ENV, why="the per-run SSH rule admits only the "
                             "runner; set it (or the ssh_from platform option) to the "
                             "runner's public address as a CIDR (e.g. 203.0.113.7/32)")
    if "/" not in value:
        value += "/32"
    return value


def resource_name() -> str:
    """A name unique to one machine that every cloud accepts (GCE's rule is the strictest:
    lowercase letters, digits and `-`, starting with a letter, at most 63 characters)."""
    from lab.gc import run_id

    run = re.sub(r"[^a-z0-9-]", "-", run_id().lower())[:40].strip("-")
    return f"roslab-{run}-{secrets.token_hex(3)}"


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 2.0,
             evidence: Callable[[], list[str]] = list) -> T:
    """Poll `check` until it returns something truthy; BootTimeout naming `what` if not.

    `evidence` gives the last console lines for the error (the cloud's console log).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            lines = []
            with contextlib.suppress(Exception):  # evidence is best effort: the wait failed
                lines = evidence()
            raise BootTimeout(f"{what} did not happen within {timeout:.0f} s",
                              expected=what, last_lines=lines)
        time.sleep(interval)


@dataclass
class Created:
    kind: str  # "instance", "image", "firewall", ...
    ident: str
    delete: Callable[[], None]  # removes it and returns once the cloud says it is gone


class Ledger:
    """What one machine created, deleted newest first (an instance before its image)."""

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self.items: list[Created] = []

    def add(self, kind: str, ident: str, delete: Callable[[], None]) -> None:
        self.items.append(Created(kind, ident, delete))

    def forget(self, kind: str, ident: str) -> None:
        self.items = [c for c in self.items if (c.kind, c.ident) != (kind, ident)]

    def release(self) -> None:
        """Delete everything; a failure does not stop the rest and is reported at the end."""
        failed = []
        while self.items:
            item = self.items.pop()
            try:
                item.delete()
            except KeyboardInterrupt:
                self.items.append(item)  # a second Ctrl-C: still try the rest, then stop
                self._release_quietly()
                raise
            except Exception as exc:  # the cloud's own errors: name them, delete the rest
                failed.append(f"{item.kind} {item.ident}: {type(exc).__name__}: {exc}")
        if failed:
            raise LabError(f"{self.platform}: could not delete " + "; ".join(failed)
                           + f" (they carry the run's marks: `roslab gc --platform "
                           f"{self.platform}` removes them once expired)")

    def _release_quietly(self) -> None:
        while self.items:
            with contextlib.suppress(Exception):
                self.items.pop().delete()


# what every cloud takes on the command line
CLOUD_OPTIONS = (
    Option("--region", "the region (default: the SDK's, e.g. AWS_REGION)"),
    Option("--instance-type", "the machine size (aws default: t3.small, t4g.small)"),
)


class CloudDriver(Driver):
    """A machine on a cloud: create with user-data and marks, reach by SSH, always delete.

    Subclasses create the instance (`_launch`), read its state (`_status`, `_address`), its
    console log (`console_text`) and find what dead runs left (`collect_garbage`).
    """

    in_cloud = True
    leaves_garbage = True
    options = CLOUD_OPTIONS
    sdk_module: ClassVar[str]
    sdk_package: ClassVar[str]
    boot_wait: ClassVar[float] = 600.0  # creation to running with an address
    delete_wait: ClassVar[float] = 300.0
    poll_interval: ClassVar[float] = 2.0  # between reads of a state the cloud changes
    console_poll: ClassVar[float] = 10.0  # clouds refresh their console logs every few seconds

    def __init__(self) -> None:
        self.ledger = Ledger(self.name)
        self.spec: MachineSpec | None = None
        self.instance: str | None = None  # the cloud's id of the running instance
        self._address: str | None = None
        self._console = ""
        self._api: Any = None
        self._stop_polling = threading.Event()

    # the SDK and its settings ----------------------------------------------------------------

    @classmethod
    def sdk(cls) -> ModuleType:
        return import_sdk(cls.sdk_module, cls.sdk_package, cls.name)

    @classmethod
    @abstractmethod
    def _connect(cls) -> Any:
        """The SDK's client for this cloud, from the user's credentials and settings."""

    @property
    def api(self) -> Any:
        """This machine's client, made on first use."""
        if self._api is None:
            self._api = self._connect()
        return self._api

    @classmethod
    def not_ready(cls, options: dict[str, Any]) -> str | None:
        """Why this cloud cannot be used here (SDK or credentials missing), or None."""
        try:
            cls.sdk()
            cls.check_credentials(options)
        except ConfigError as exc:
            return str(exc)
        return None

    @classmethod
    @abstractmethod
    def check_credentials(cls, options: dict[str, Any]) -> None:
        """ConfigError naming the variables or config file when credentials are missing."""

    # the protocol ----------------------------------------------------------------------------

    def prepare(self, spec: MachineSpec) -> None:
        self.sdk()
        self.check_credentials({})
        self.spec = spec

    def option(self, key: str, env: str, default: str | None = None) -> str | None:
        """A platform option (`--platform-option KEY=VALUE`, --region, --instance-type),
        else the environment variable, else the default."""
        given = self.spec.options.get(key) if self.spec is not None else None
        return given or os.environ.get(env) or default

    def start(self) -> float:
        """Create the instance and wait until it runs with an address; delete it if not.
        Where the cloud keeps a console log, it is copied to console.log meanwhile."""
        assert self.spec is not None, "prepare() first"
        t0 = time.monotonic()
        # --platform-option address_timeout=SECONDS: where capacity is short
        timeout = float(self.spec.options.get("address_timeout") or self.boot_wait)
        try:
            try:
                self._launch(self.spec)
            except LabError:
                raise
            except Exception as exc:  # the SDK's own: an unreachable API, a refused call
                raise self.sdk_error(exc, "create the machine") from exc
            if self.has_console_log:
                threading.Thread(target=self._poll_console, daemon=True,
                                 name=f"console-{self.instance}").start()
            try:
                self._address = wait_for(self._running_address, timeout,
                                         f"{self.name} instance {self.instance} running with "
                                         "an address", self.poll_interval, self._last_lines)
            except LabError:
                raise
            except Exception as exc:
                raise self.sdk_error(exc, f"ask about instance {self.instance}") from exc
        except BaseException:
            self._abandon()
            raise
        return t0

    @classmethod
    def host_address_for_guest(cls, datasource: str,
                               options: dict[str, Any]) -> HostRoute | None:
        """A cloud's machines use their own network (None), unless the run says how they
        reach this host: `lab_host=ADDRESS` (a private cloud whose instances reach the
        runner; a rehearsal's guests), the lab's services listening on `lab_listen`
        (default: that same address)."""
        host = options.get("lab_host")
        return HostRoute(options.get("lab_listen") or host, host) if host else None

    def sdk_error(self, exc: Exception, doing: str) -> LabError:
        """The SDK's own exception as a lab error naming the cloud and what failed; a cloud
        that knows its error codes says more (quota, credentials, an unknown image)."""
        return PlatformError(f"{self.name}: could not {doing}: {type(exc).__name__}: {exc}")

    has_console_log: ClassVar[bool] = False  # the cloud's API returns the console output

    def _poll_console(self) -> None:
        while not self._stop_polling.is_set():
            with contextlib.suppress(Exception):  # a transient API error: try next turn
                self.fetch_console()
            self._stop_polling.wait(self.console_poll)

    def fetch_console(self) -> str:
        """Copy the instance's console log (as the cloud last captured it) to console.log,
        redacted: the guest prints what it was given (its cmdline, user-data) and the log is
        evidence attached to reports."""
        if self.instance is not None and self.spec is not None:
            text = redact(self.console_text() or "")
            if text and text != self._console:
                self._console = text
                (self.spec.workdir / "console.log").write_text(text)
        return self._console

    def _create(self, kind: str, name: str, create: Callable[[], str],
                find: Callable[[str], list[str]], delete: Callable[[str], None]) -> str:
        """Create the object called `name` (unique to this machine) and put it in the ledger.

        If the call fails (an API error, a lost connection, Ctrl-C) the cloud may have made
        it anyway: whatever carries that name is looked up and deleted before re-raising.
        """
        try:
            ident = create()
        except BaseException:
            with contextlib.suppress(Exception):
                for orphan in find(name):
                    delete(orphan)
            raise
        self.ledger.add(kind, ident, lambda: delete(ident))
        return ident

    def _abandon(self) -> None:
        """A failed start: delete what was made, keeping the first error the one raised."""
        with contextlib.suppress(Exception):
            self.stop()
        with contextlib.suppress(Exception):
            self.cleanup()

    def _running_address(self) -> str | None:
        status = self._status()
        if self._has_failed(status):
            reason = ""
            with contextlib.suppress(Exception):  # the cause is best effort: the boot failed
                reason = self._state_reason()
            raise BootTimeout(f"{self.name} instance {self.instance} went to {status}"
                              + (f": {reason}" if reason else ""),
                              expected="the instance running", last_lines=self._last_lines())
        return self._address_now() if status in self.running_states else None

    failed_states: ClassVar[tuple[str, ...]] = ("ERROR",)
    running_states: ClassVar[tuple[str, ...]] = ("RUNNING",)

    def _has_failed(self, status: str | None) -> bool:
        """Whether the instance, waited on to run, will not: it is in a failed state."""
        return status in self.failed_states

    @abstractmethod
    def _launch(self, spec: MachineSpec) -> None:
        """Create the instance (and what it needs), registering each object in the ledger
        before waiting on it; set `self.instance`."""

    @abstractmethod
    def _status(self) -> str | None:
        """The instance's state as the cloud names it; None once it is gone."""

    def _state_reason(self) -> str:
        """Why the cloud says the instance is in its state, where it says."""
        return ""

    @abstractmethod
    def _address_now(self) -> str | None:
        """The address the harness reaches it at (public, else private)."""

    def console_text(self) -> str | None:
        """The cloud's console log of the instance (read-only); None where it keeps none."""
        return None

    def _last_lines(self, n: int = 15) -> list[str]:
        text = self.console_text() if self.instance else None
        return redact(text).splitlines()[-n:] if text else []  # quoted in errors: evidence

    def console_stream(self) -> socket.socket:
        raise ConfigError(f"platform {self.name}: {NO_CONSOLE}")

    def ssh_endpoint(self) -> tuple[str, int]:
        if self._address is None:
            raise ConfigError(f"{self.name} instance has no address yet: start() first")
        return self._address, 22

    def power_button(self) -> None:
        raise ConfigError(f"platform {self.name}: {NO_POWER_BUTTON}")

    def alive(self) -> bool:
        """Whether the instance runs; an API that does not answer is a PlatformError, never
        "dead" (the lab would boot another machine) nor "alive"."""
        if self.instance is None:
            return False
        try:
            status = self._status()
        except LabError:
            raise
        except Exception as exc:  # the SDK's own: throttled, unreachable, refused
            raise self.sdk_error(exc, f"ask whether instance {self.instance} runs") from exc
        return status in self.running_states

    def exit_reason(self) -> str:
        status = self._status() if self.instance else None
        return f"{self.name} instance {self.instance} is {status or 'gone'}"

    def stop(self, timeout: float = 10.0) -> None:
        """Delete the instance (a cloud machine is not kept powered off: it still costs);
        its console log is kept first, as evidence."""
        self._stop_polling.set()
        if self.has_console_log:
            with contextlib.suppress(Exception):
                self.fetch_console()
        instance, self.instance = self.instance, None
        if instance is not None:
            self.ledger.forget("instance", instance)
            self._delete_instance(instance)

    def cleanup(self) -> None:
        self.ledger.release()

    @abstractmethod
    def _delete_instance(self, instance: str) -> None:
        """Delete and wait (bounded) until the cloud no longer lists it."""

    def info(self) -> dict[str, Any]:
        return {"instance": self.instance, "address": self._address}

    def attach_hint(self) -> str:
        return f"ssh -p 22 rancher@{self._address}" if self._address else ""


# -- garbage collection --------------------------------------------------------------------


def epoch(rfc3339: str | None) -> float | None:
    """A cloud's creation time ('2026-11-28T05:38:17Z', with or without fraction/offset)."""
    if not rfc3339:
        return None
    from datetime import datetime

    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    return None


@dataclass
class Candidate:
    """Something a cloud lists, with its marks, creation time and how to delete it."""

    kind: str
    ident: str
    marks: dict[str, str]
    created: float | None
    delete: Callable[[], None]


def sweep(candidates: list[Candidate], older_than: float | None, dry_run: bool) -> list[Any]:
    """Delete (unless `dry_run`) the candidates that are garbage, in the order given
    (instances before the images and rules they use); returns what was found.

    One failed delete does not stop the others; at the end a PlatformError names each
    thing left and why, so `roslab gc` can say what stays behind."""
    from lab.gc import RUN_KEY, Garbage, is_garbage

    found, left = [], []
    for item in candidates:
        why = is_garbage(item.marks, item.created, older_than)
        if why is None:
            continue
        if not dry_run:
            try:
                item.delete()
            except Exception as exc:  # the cloud refused or failed: keep sweeping the rest
                left.append(f"{item.kind} {item.ident} ({type(exc).__name__}: {exc})")
                continue
        found.append(Garbage(item.kind, item.ident, item.marks.get(RUN_KEY, "?"), why))
    if left:
        removed = ", ".join(f"{g.kind} {g.ident}" for g in found) or "nothing"
        raise PlatformError(f"could not remove {len(left)}: {'; '.join(left)} "
                            f"(removed: {removed})")
    return found
