"""How many machines may run at once on this host, shared by every xdist worker of a run.

Two limits, each a set of slot files under one folder of the run (file locks: a worker
that dies releases its slots with its process, so nothing stays taken):
- memory: a running machine holds a slot for its life; slots = what the host has
  available at the start of the run (MemAvailable, less a reserve for the host) over
  what one machine takes (its RAM plus the emulator's own);
- CPU: one slot a host core; a machine holds, while it starts (boot or restore, the part
  that keeps the emulator busy), one slot for each host thread its emulator then keeps
  busy (`Driver.host_threads_for`): its vCPUs under KVM or multi-threaded TCG, one under
  single-threaded TCG. Two 1-thread boots share a 2-core host; a 2-thread boot waits
  for both cores, since a second boot beside it would only make both slower.
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
    def for_host(cls, memory_mb: int, available_mb: int | None = None,
                 cores: int | None = None) -> Limits:
        available = mem_available_mb() if available_mb is None else available_mb
        cores = (os.cpu_count() or 1) if cores is None else cores
        per_machine = memory_mb + EMULATOR_OVERHEAD_MB
        memory_slots = max(1, (available - HOST_RESERVE_MB) // per_machine)
        why = (f"memory: {available / 1024:.1f} GiB available - {HOST_RESERVE_MB} MiB reserve "
               f"/ {per_machine} MiB a machine = {memory_slots} running; CPU: {cores} cores, "
               f"a starting machine takes one for each emulator thread")
        return cls(memory_slots, cores, why)

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

    def _take(self, kind: str, slots: int, wanted: int = 1) -> list[IO[bytes]]:
        """`wanted` of the `slots` slots, all at once or none (so that two machines each
        holding part of what they want never wait on each other)."""
        wanted = min(wanted, slots)
        while True:
            held: list[IO[bytes]] = []
            for n in range(slots):
                handle = (self.folder / f"{kind}-{n}.lock").open("ab")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(handle)
                    if len(held) == wanted:
                        return held
                except BlockingIOError:
                    handle.close()
            for handle in held:
                handle.close()
            time.sleep(POLL_SECONDS)

    def running(self) -> IO[bytes]:
        """A memory slot for a machine's life: close the handle when the machine stops."""
        return self._take("memory", self.limits.memory_slots)[0]

    @contextlib.contextmanager
    def starting(self, threads: int = 1) -> Iterator[None]:
        """CPU slots while a machine boots or restores, one for each host thread it keeps
        busy."""
        handles = self._take("cpu", self.limits.cpu_slots, threads)
        try:
            yield
        finally:
            for handle in handles:
                handle.close()
