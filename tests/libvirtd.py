"""A real libvirtd + virtlogd for the project's own tests (no systemd on CI hosts).

The daemons run in their own mount namespace where `/dev/kvm` is a bind-mounted copy of
the device node at 0660 root:kvm: with the host's 0600 root:root node libvirt re-probes
QEMU on every call (40-60 s each). The host's node is never touched. Logs go to the
given directory; `stop()` kills exactly the daemons it started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SCRIPT = r"""
set -e
mount --make-rprivate /
cp -a /dev/kvm "$LVDIR/kvm"
chown root:kvm "$LVDIR/kvm"; chmod 0660 "$LVDIR/kvm"
mount --bind "$LVDIR/kvm" /dev/kvm
virtlogd -f "$LVDIR/virtlogd.conf" -p "$LVDIR/virtlogd.pid" &
exec libvirtd -f "$LVDIR/libvirtd.conf" -p "$LVDIR/libvirtd.pid"
"""


def _destroy_domains(uri: str) -> None:
    """Destroy every domain of this test daemon: they are all the tests' own."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    finally:
        conn.close()


class Libvirtd:
    def __init__(self, logdir: Path) -> None:
        self.dir = logdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start the daemons; returns the URI to connect to."""
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # refused while starting
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("virtlogd", "libvirtd"):
            (self.dir / f"{name}.conf").write_text(
                f'log_outputs="3:file:{self.dir / name}.log"\n')
        log = (self.dir / "daemons.out").open("wb")
        self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", SCRIPT],
                                     env={**os.environ, "LVDIR": str(self.dir)},
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        uri = "qemu:///system"
        deadline = time.monotonic() + timeout
        while True:
            try:
                _destroy_domains(uri)  # a crashed run's domains are re-attached at start
                return uri
            except libvirt.libvirtError as err:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"libvirtd did not come up: {err}; see {self.dir}") from err
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        # transient domains outlive libvirtd (their QEMU is not its child): end them first
        with contextlib.suppress(Exception):
            _destroy_domains("qemu:///system")
        # libvirtd is the exec'd shell; virtlogd its child in the same session
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        pid_file = self.dir / "virtlogd.pid"
        if pid_file.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
        self.proc = None


LOCK = Path(tempfile.gettempdir()) / "roslab-test-libvirtd.lock"


@contextlib.contextmanager
def held_daemon(logdir: Path) -> Iterator[str]:
    """A test libvirtd for the block, under a file lock: there is one system socket, so one
    test daemon at a time across xdist workers and test modules (the others wait)."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        daemon = Libvirtd(logdir)
        try:
            yield daemon.start()
        finally:
            daemon.stop()


if __name__ == "__main__":  # python tests/libvirtd.py [LOGDIR]: daemons until Ctrl-C
    import sys

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with held_daemon(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/roslab-libvirtd")) as uri:
        print(f"libvirtd up at {uri}; Ctrl-C stops it", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
