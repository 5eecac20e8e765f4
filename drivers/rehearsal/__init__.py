"""What the clouds' stand-ins share for a rehearsal: a real guest per instance.

A rehearsal runs a cloud driver, unchanged, against a stand-in of its cloud's API on this
host (`Driver.rehearsal()`). Where the real cloud would start a VM, the stand-in starts a
`Guest`: the QEMU driver booting the disk the cloud driver uploaded, with that cloud's
metadata service (drivers/qemu/metadata.py: user-data, SSH keys) and the guest's port 22
on a loopback address of its own, the instance's "public address". Binding port 22 takes
root or CAP_NET_BIND_SERVICE, as the CloudStack metadata stand-in's port 80 does.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from drivers.qemu import QemuDriver
from lab.cloudconfig import CloudConfig
from lab.driver import MachineSpec, Rehearsal
from lab.errors import ConfigError, LabError
from lab.images import Image

SSH_PORT = 22
CONSOLE_TAIL_LINES = 20  # what a guest that did not boot shows of its console
_taken: set[str] = set()  # addresses given out by this process and not yet released
_taken_lock = threading.Lock()


def loopback_address() -> str:
    """An address of 127.0.0.0/8 whose port 22 is free (127.0.0.1 is left to the host)."""
    with _taken_lock:
        for _ in range(200):
            # random, so that two rehearsals on one host rarely try the same one
            address = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}." \
                      f"{secrets.randbelow(253) + 2}"
            if address in _taken:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((address, SSH_PORT))
                except PermissionError:
                    raise ConfigError("a rehearsal gives each instance port 22 on a loopback "
                                      "address: run it as root or with "
                                      "CAP_NET_BIND_SERVICE") from None
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        continue
                    raise
            _taken.add(address)
            return address
    raise ConfigError("no loopback address with a free port 22 found")


def release_address(address: str) -> None:
    with _taken_lock:
        _taken.discard(address)


def listening(address: str, port: int = SSH_PORT) -> bool:
    """Whether something still accepts connections there (a leftover, after a guest)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address, port)) == 0


class Guest:
    """One instance's real machine: `disk` booted by the QEMU driver with `datasource`'s
    metadata service, SSH on `address`:22. Its console is read from QEMU's own copy."""

    def __init__(self, name: str, disk: Path, workdir: Path, datasource: str,
                 user_data: bytes | None, ssh_keys: list[str], memory_mb: int = 2048,
                 cpus: int = 1, address: str = "") -> None:
        self.name, self.workdir = name, workdir
        self.driver = QemuDriver()
        self.address = address  # given: one the stand-in reserved (loopback_address)
        self.accel, self.accel_reason = "", ""
        self.stopping = False  # the stand-in asked it to end (terminate, stop)
        workdir.mkdir(parents=True, exist_ok=True)
        image = Image.open(disk)
        self.accel, self.accel_reason = self.driver.resolve_accel("auto", image, workdir)
        self.spec = MachineSpec(
            name=name, arch="x86_64", image=image, workdir=workdir,
            cloud_config=CloudConfig.parse(user_data.decode(errors="replace"), allow_invalid=True)
            if user_data else None,
            datasource=datasource, password=secrets.token_urlsafe(12), accel=self.accel,
            memory_mb=memory_mb, cpus=cpus, ssh_keys=ssh_keys)
        self._drain: threading.Thread | None = None

    def boot(self) -> None:
        """Power on; the address is taken here (unless given) and given back if the start
        fails."""
        self.address = self.address or loopback_address()
        self.driver.ssh_bind = (self.address, SSH_PORT)
        try:
            self.driver.prepare(self.spec)
            self.driver.start()
        except BaseException:
            self.stop()
            raise
        # nobody types into a cloud's console: read it so that QEMU never waits on it
        # (QEMU's logfile keeps every byte for the console-output API)
        stream = self.driver.console_stream()
        self._drain = threading.Thread(target=_drain, args=(stream,), daemon=True,
                                       name=f"console-{self.name}")
        self._drain.start()

    def console(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "serial.raw").read_text(errors="replace")
        return ""

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return "\n".join(self.console().replace("\r", "").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.driver.alive()

    def exit_reason(self) -> str:
        return self.driver.exit_reason()

    def power_button(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.power_button()

    def stop(self) -> None:
        """Power off and remove everything the guest had (idempotent)."""
        self.stopping = True
        with contextlib.suppress(LabError, OSError):
            self.driver.cleanup()
        if self.address:
            release_address(self.address)

    def record(self) -> dict[str, Any]:
        return {"instance": self.name, "address": self.address, "accel": self.accel,
                "accel_reason": self.accel_reason}


def _drain(stream: socket.socket) -> None:
    with contextlib.suppress(OSError, ValueError):
        while stream.recv(65536):
            pass


ALIVE_POLL = 1.0  # how often a running guest is checked for having ended by itself


class Fleet:
    """The guests of one stand-in's instances. Each boots in a thread of its own (the API
    answers at once, as a cloud's does) and is watched until it ends; its console is kept
    after it is gone, as clouds keep an instance's last console output."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.guests: dict[str, Guest] = {}
        self.consoles: dict[str, str] = {}  # the last console of guests gone
        self.booted: list[dict[str, Any]] = []  # every guest's record, for the report
        self.removed: set[str] = set()  # deleted before (or while) their guest started
        self.lock = threading.Lock()
        self.closed = False

    def launch(self, ident: str, disk: Callable[[], Path], datasource: str,
               user_data: bytes | None, ssh_keys: list[str],
               running: Callable[[Guest], None], ended: Callable[[str], None],
               hostname: str | None = None, address: str = "") -> None:
        """Boot `disk()` for instance `ident`: `running(guest)` once QEMU runs (its address
        is the instance's public one: `address` where the stand-in reserved it already),
        `ended(why)` when it could not start or ended by itself (why names the console's
        tail), never after the instance was deleted."""
        threading.Thread(target=self._run, daemon=True, name=f"boot-{ident}", args=(
            ident, disk, datasource, user_data, ssh_keys, running, ended,
            hostname or ident, address)).start()

    def _run(self, ident: str, disk: Callable[[], Path], datasource: str,
             user_data: bytes | None, ssh_keys: list[str], running: Callable[[Guest], None],
             ended: Callable[[str], None], hostname: str, address: str) -> None:
        guest: Guest | None = None
        try:
            guest = Guest(hostname, disk(), self.workdir / ident, datasource, user_data,
                          ssh_keys, address=address)
            with self.lock:
                if self.closed or ident in self.removed:
                    return  # deleted (or the stand-in stopped) while the disk was made
                self.guests[ident] = guest
            guest.boot()
        except Exception as exc:  # anything: the instance must not stay starting
            tail = guest.console_tail() if guest is not None else ""
            self.remove(ident)
            self.booted.append({"instance": ident, "outcome": f"did not start: {exc}"})
            ended(f"the instance could not start: {exc}"
                  + (f"\nconsole:\n{tail}" if tail else ""))
            return
        self.booted.append(guest.record())
        running(guest)
        while guest.alive():
            time.sleep(ALIVE_POLL)
        if guest.stopping:
            return
        tail = guest.console_tail()
        self.remove(ident)
        ended(f"{guest.exit_reason() or 'the guest stopped'}"
              + (f"; its console ended:\n{tail}" if tail else "; its console is empty"))

    def console(self, ident: str) -> str | None:
        guest = self.guests.get(ident)
        return guest.console() if guest is not None else self.consoles.get(ident)

    def remove(self, ident: str) -> None:
        """Power the instance's guest off and remove its files (idempotent)."""
        with self.lock:
            self.removed.add(ident)
            guest = self.guests.pop(ident, None)
        if guest is not None:
            guest.stop()
            self.consoles[ident] = guest.console()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            idents = list(self.guests)
        for ident in idents:
            self.remove(ident)

    def leftovers(self) -> list[str]:
        """Guests still running and ports still listening on the guests' addresses."""
        left = [f"guest of {i} (QEMU)" for i, g in list(self.guests.items()) if g.alive()]
        return left + [f"port 22 listening on {r['address']}" for r in self.booted
                       if r.get("address") and listening(r["address"])]



def reference_disk(name: str) -> Path:
    """A cloud disk of the reference build (built on first use): what a stand-in offers as
    the cloud's own public RancherOS image."""
    from refimage.build import ensure_image
    from refimage.disks import ensure_disks

    folder = ensure_image("x86_64")
    ensure_disks(folder)
    return folder / name


def offering(reference: dict[str, str],
             offered: dict[str, Path] | None = None) -> dict[str, Callable[[], Path]]:
    """What a stand-in offers by name (a template, a public image id) and the disk each
    boots: the reference build's disks by file name (made on first use), then `offered`."""
    disks: dict[str, Callable[[], Path]] = {
        name: (lambda file=file: reference_disk(file)) for name, file in reference.items()}
    disks.update({name: (lambda disk=disk: disk) for name, disk in (offered or {}).items()})
    return disks


def run_options(datasource: str, **more: str) -> dict[str, str]:
    """The platform options of a rehearsed run: how its guests (QEMU's, on `datasource`'s
    network) reach this host, so the lab's registry serves them as Docker Hub would serve
    the cloud's instances (the guests have no internet); `more` besides."""
    route = QemuDriver.host_address_for_guest(datasource, {})
    return {"lab_host": route.guest, "lab_listen": route.listen, **more}


@contextlib.contextmanager
def serving(standin: Any, fleet: Fleet, name: str, instances: str, env: dict[str, str],
            datasource: str, options: dict[str, str] | None = None) -> Iterator[Rehearsal]:
    """A started stand-in (`name`, whose `instances` boot with `datasource`'s metadata) as
    the run sees it; on exit every guest is powered off and the server stopped."""
    try:
        yield Rehearsal(what=f"{name} at {standin.url}, its {instances} booted under QEMU",
                        env=env, options=run_options(datasource, **(options or {})),
                        leftovers=standin.leftovers, guests=lambda: list(fleet.booted))
    finally:
        fleet.close()
        standin.stop()


@contextlib.contextmanager
def scratch(cloud: str) -> Iterator[tuple[Fleet, Path]]:
    """A rehearsal's folder and its fleet of guests; on exit every guest is powered off
    and the folder (disks, images, credentials the SDK was given) removed."""
    folder = Path(tempfile.mkdtemp(prefix=f"roslab-{cloud}-rehearsal-"))
    fleet = Fleet(folder / "guests")
    try:
        yield fleet, folder
    finally:
        fleet.close()
        shutil.rmtree(folder, ignore_errors=True)
