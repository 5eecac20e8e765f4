"""What QEMU needs of the host: processes that die with the harness, free ports, the
emulator binaries and their version, the accelerator (KVM probed, else TCG) and
copy-on-write overlays that keep a user's image unwritten."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from drivers.qemu.boards import GENERAL_BOARD, machine_args
from lab.errors import ConfigError, EmulatorError, ImageError
from lab.images import ISO, KERNEL, Image
from lab.process import die_with_parent

QEMU_BINARY = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
PROBE_SECONDS = 10.0


# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process:
# QEMU started by a short-lived thread (a machine booted ahead) was killed as that thread
# finished. Other threads fork through this one, which lives as long as the harness.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roslab-spawner")


def _from_a_lasting_thread(start: Callable[[], subprocess.Popen[bytes]]
                           ) -> subprocess.Popen[bytes]:
    if threading.current_thread() is threading.main_thread():
        return start()
    return _SPAWNER.submit(start).result()


def popen(argv: list[str], keep: bool = False, **kw: Any) -> subprocess.Popen[bytes]:
    # a session of its own: Ctrl-C reaches the harness, which stops QEMU in order
    if keep:
        return subprocess.Popen(argv, start_new_session=True, **kw)
    return _from_a_lasting_thread(lambda: subprocess.Popen(
        argv, preexec_fn=die_with_parent, start_new_session=True, **kw))


def free_port() -> int:
    """A free TCP port on 127.0.0.1, chosen by the kernel (safe across xdist workers)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1: each socket stays bound until all are
    chosen, so the kernel cannot hand the same port out twice."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def binary(arch: str) -> str:
    name = QEMU_BINARY.get(arch)
    if name is None:
        raise ConfigError(f"unknown arch {arch!r}: known arches are {', '.join(QEMU_BINARY)}")
    path = shutil.which(name)
    if path is None:
        package = "qemu-system-x86" if arch == "x86_64" else "qemu-system-arm"
        raise ConfigError(f"{name} is not installed: install the package {package}")
    return path


@functools.cache
def qemu_version(arch: str) -> tuple[int, int]:
    """(major, minor) of the arch's QEMU, from `--version` (once per process)."""
    out = subprocess.run([binary(arch), "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    found = re.search(r"version (\d+)\.(\d+)", out)
    if found is None:
        raise EmulatorError(f"{binary(arch)} --version did not say its version: {out[:200]!r}")
    return int(found[1]), int(found[2])


_accel_cache: dict[tuple[str, str], tuple[str, str]] = {}


def kvm_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    return True, "/dev/kvm is accessible"


def probe_kvm(arch: str, kernel: Path, budget: float = PROBE_SECONDS) -> tuple[bool, str]:
    """Boot `kernel` under KVM with no root and see whether it prints within `budget`.

    `/dev/kvm` being there is not enough: on some hosts a KVM guest hangs right after
    the kernel is decompressed. A kernel that says "Linux version" is running.
    """
    board = GENERAL_BOARD[arch]
    argv = [binary(arch), *machine_args(board, "kvm"), "-m", "256", "-nodefaults",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-append", f"console={board.tty} panic=-1"]
    proc = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + budget
    try:
        while time.monotonic() < deadline:
            chunk = proc.stdout.read() or b""
            seen += chunk
            if b"Linux version" in seen:
                return True, "KVM probe: the kernel ran"
            if proc.poll() is not None and not chunk:
                tail = seen.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                return False, f"KVM probe: QEMU exited ({tail[0]})"
            time.sleep(0.05)
        return False, f"KVM probe: no kernel output within {budget:.0f} s (KVM hangs here)"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def resolve_accel(requested: str, arch: str, kernel: Path | None) -> tuple[str, str]:
    """("kvm"|"tcg", why). `auto` probes KVM once per process and arch."""
    if requested == "tcg":
        return "tcg", "asked for"
    if requested not in ("auto", "kvm"):
        raise ConfigError(f"unknown accel {requested!r}: known are auto, kvm, tcg")
    usable, why = kvm_usable()
    if requested == "kvm":
        if not usable:
            raise ConfigError(f"--accel kvm: {why}")
        return "kvm", "asked for"
    if os.uname().machine != arch:
        return "tcg", f"guest arch {arch} differs from host {os.uname().machine}"
    if not usable:
        return "tcg", why
    if kernel is None:
        return "tcg", "no kernel to probe KVM with"
    key = (arch, str(kernel))
    if key not in _accel_cache:
        ok, why = probe_kvm(arch, kernel)
        _accel_cache[key] = ("kvm" if ok else "tcg", why)
    return _accel_cache[key]


@contextlib.contextmanager
def probe_kernel(image: Image, scratch: Path) -> Iterator[Path | None]:
    """A kernel of `image`'s arch to probe KVM with (extracted from an ISO if need be)."""
    if image.kind == KERNEL:
        yield image.kernel
        return
    if image.kind == ISO:
        from lab.images import extract_iso_kernel

        path = extract_iso_kernel(image.path, scratch / "probe-vmlinuz")
        try:
            yield path
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        return
    yield None


def make_overlay(workdir: Path, base: Path, fmt: str, size: int | None = None) -> Path:
    """A copy-on-write layer over `base` in `workdir` (`base` is never written)."""
    overlay = workdir / "overlay.qcow2"
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base.resolve()),
         str(overlay), *([str(size)] if size else [])],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise ImageError(f"could not make an overlay for {base}: {proc.stderr.strip()}")
    return overlay
