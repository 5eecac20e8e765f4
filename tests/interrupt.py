"""Interrupting a lab run the way people do: Ctrl-C at a terminal (SIGINT to the whole
process group) or a cancelled CI job (SIGTERM to the run alone)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from commands.matrix.run import listen_to_sigint

# preexec_fn of a run the test will Ctrl-C: SIGINT as a terminal gives it. A test run
# started in the background (a shell's `&`, nohup) ignores SIGINT, its children inherit
# that, and a Ctrl-C test would then only show that ignored signals are ignored.
at_a_terminal = listen_to_sigint


def ignoring_sigint() -> None:
    """preexec_fn of a run started the way nohup or a CI agent starts it: SIGINT ignored,
    so only SIGTERM (a cancelled job) can stop it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def interrupt_when(proc: subprocess.Popen[str], ready: Callable[[], bool], how: str,
                   never: str, wait: float = 300, settle: float = 0) -> tuple[str, float]:
    """Once `ready()` (within `wait` s, else fail saying `never`), and `settle` s later,
    interrupt `proc` (started with start_new_session=True) by `how` ("ctrl-c" or
    "sigterm"). Returns its output and how long it took to stop; never leaves it running."""
    try:
        deadline = time.monotonic() + wait
        while not ready():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, never
            time.sleep(0.2)
        time.sleep(settle)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out = proc.communicate(timeout=120)[0]
        return out, time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def emulators_under(folder: Path) -> list[str]:
    """PIDs of the QEMUs whose command line names `folder` (a run's TMPDIR or tmp_path)."""
    return subprocess.run(["pgrep", "-f", f"qemu-system.*{folder}"], capture_output=True,
                          text=True).stdout.split()


def nothing_left(scratch: Path) -> None:
    """A run under TMPDIR=`scratch` left no QEMU running and none of its files."""
    assert emulators_under(scratch) == [], "QEMU left running"
    # pytest's own basetemp (xdist makes one) is not ours to remove
    assert [p for p in scratch.rglob("*") if "roslab" in p.name or "qemu" in p.name] == []


# Leftovers of one run, told apart from other tests' (xdist runs two at once): the run's
# environment carries a tag its every process inherits (QEMU, servers, stand-ins)
RUN_TAG = "ROSLAB_TEST_RUN"


def tagged_env(**extra: str) -> tuple[dict[str, str], str]:
    """The environment for a run whose leftovers `survivors` will find, and its tag."""
    tag = uuid.uuid4().hex
    return {**os.environ, **extra, RUN_TAG: tag}, tag


def survivors(tag: str) -> list[str]:
    """"PID command" of each live process of the run tagged `tag`."""
    mark = f"{RUN_TAG}={tag}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"{pid} {cmd.decode(errors='replace').strip()}")
        except OSError:  # gone meanwhile, or a zombie
            continue
    return found


def listening_of(pids: Iterable[int]) -> set[tuple[str, int]]:
    """The TCP (IPv4) addresses and ports that processes `pids` listen on."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, held by one of them
            address, port = fields[1].split(":")
            found.add((".".join(map(str, bytes.fromhex(address)[::-1])), int(port, 16)))
    return found
