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
import socket
import threading
from pathlib import Path
from typing import Any

from drivers.qemu import QemuDriver
from lab.cloudconfig import CloudConfig
from lab.driver import MachineSpec
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
                 cpus: int = 1) -> None:
        self.name, self.workdir = name, workdir
        self.driver = QemuDriver()
        self.address = ""
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
        """Power on; the address is taken here and given back if the start fails."""
        self.address = loopback_address()
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
