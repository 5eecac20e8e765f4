"""How many machines may run at once on this host, shared by every xdist worker of a run.

Two limits, each a set of slot files under one folder of the run (file locks: a worker
that dies releases its slots with its process, so nothing stays taken):
- memory: a running machine holds a slot for its life; slots = what the host has
  available at the start of the run (MemAvailable, less a reserve for the host) over
  what one machine takes (its RAM plus the emulator's own);
- CPU: a machine holds a slot while it starts (boot or restore), the part that keeps
  the emulator busy; slots = host cores over the machine's vCPUs. Under TCG one boot
  with 2 vCPUs already uses both cores of a 2-core host, and a second boot beside it
  would only make both slower: `-n 2` then overlaps one worker's boot with the other's
  tests instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

EMULATOR_OVERHEAD_MB = 300  # QEMU's own memory beside the guest's RAM (TCG code cache...)
HOST_RESERVE_MB = 1024  # left to the harness, the other workers and the host
POLL_SECONDS = 0.2


def mem_available_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0  # unknown: admit one machine at a time


@dataclass(frozen=True)
class Limits:
    memory_slots: int
    cpu_slots: int
    why: str

    @classmethod
    def for_host(cls, memory_mb: int, cpus: int, available_mb: int | None = None,
                 cores: int | None = None) -> Limits:
        available = mem_available_mb() if available_mb is None else available_mb
        cores = (os.cpu_count() or 1) if cores is None else cores
        per_machine = memory_mb + EMULATOR_OVERHEAD_MB
        memory_slots = max(1, (available - HOST_RESERVE_MB) // per_machine)
        cpu_slots = max(1, cores // max(1, cpus))
        why = (f"memory: {available / 1024:.1f} GiB available - {HOST_RESERVE_MB} MiB reserve "
               f"/ {per_machine} MiB a machine = {memory_slots} running; CPU: {cores} cores / "
               f"{cpus} vCPUs a machine = {cpu_slots} starting at once")
        return cls(memory_slots, cpu_slots, why)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "limits").write_text(f"{self.memory_slots} {self.cpu_slots}\n{self.why}\n")

    @classmethod
    def load(cls, folder: Path) -> Limits:
        counts, why = (folder / "limits").read_text().split("\n", 1)
        memory_slots, cpu_slots = map(int, counts.split())
        return cls(memory_slots, cpu_slots, why.strip())


class Admission:
    """The run's slots; `running()` and `starting()` block until one is free."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.limits = Limits.load(folder)

    def _take(self, kind: str, slots: int) -> IO[bytes]:
        while True:
            for n in range(slots):
                handle = (self.folder / f"{kind}-{n}.lock").open("ab")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return handle
                except BlockingIOError:
                    handle.close()
            time.sleep(POLL_SECONDS)

    def running(self) -> IO[bytes]:
        """A memory slot for a machine's life: close the handle when the machine stops."""
        return self._take("memory", self.limits.memory_slots)

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """A CPU slot while a machine boots or restores."""
        handle = self._take("cpu", self.limits.cpu_slots)
        try:
            yield
        finally:
            handle.close()
