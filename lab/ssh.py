"""SSH into a guest with paramiko and a per-run ed25519 key the cloud-config delivers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab import timeline as tl
from lab.errors import BootError, BootTimeout, CommandError, SSHKeyRefused
from lab.redact import keep_secret
from lab.result import Result

# Connecting while sshd starts makes paramiko's transport thread log tracebacks; with no
# handler Python prints them on stderr (over the bench's progress bar). The retry loop
# here reports what matters, with the console context.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


BANNER_TIMEOUT = 10.0  # seconds an accepted connection may stay silent before retrying


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public: str  # one authorized_keys line

    @classmethod
    def generate(cls, directory: Path, comment: str = "roslab") -> KeyPair:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)  # the private key's folder is nobody else's to list
        for line in private.decode().splitlines()[1:-1]:  # the key's body, line by line
            keep_secret(line, "SSH private key")
        path = directory / "id_ed25519"
        path.touch(mode=0o600)
        path.write_bytes(private)
        (directory / "id_ed25519.pub").write_text(f"{public.decode()} {comment}\n")
        return cls(path, f"{public.decode()} {comment}")

    def pkey(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key_file(str(self.private_path))


class _AcceptOnce(paramiko.MissingHostKeyPolicy):
    """Guests are made fresh each run: their host keys are new by design, so never stored."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        return None


class SSH:
    def __init__(self, host: str, port: int, user: str, key: KeyPair, timeline: tl.Timeline,
                 context: Callable[[], dict[str, Any]] = dict,
                 gone: Callable[[], str | None] = lambda: None) -> None:
        self.host, self.port, self.user, self.key = host, port, user, key
        self.timeline = timeline
        self.context = context  # console context (last lines, log path) for errors
        # why the machine no longer runs (None while it does): a machine that ended while
        # the lab waits for sshd fails then, not when the wait runs out
        self.gone = gone
        self._client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 120) -> SSH:
        """Log in, retrying until `timeout`: sshd comes up late in boot."""
        if self._client is not None:
            return self
        deadline = time.monotonic() + timeout
        last = "nothing tried"
        refused: str | None = None  # sshd's refusal of the key, the last time it answered
        while time.monotonic() < deadline:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(_AcceptOnce())
            try:
                client.connect(self.host, self.port, username=self.user, pkey=self.key.pkey(),
                               timeout=5, banner_timeout=BANNER_TIMEOUT, auth_timeout=10,
                               allow_agent=False, look_for_keys=False)
                self.timeline.mark(tl.SSH)
                self._client = client
                return self
            except paramiko.AuthenticationException as exc:
                # not reachable for the lab: the key may still be on its way (cloud-init),
                # so try again, but a lab that cannot log in has not reached SSH
                refused = last = f"sshd refused the key ({exc})"
            except (paramiko.SSHException, OSError, EOFError) as exc:
                refused = None
                last = f"{type(exc).__name__}: {exc}"
                if "banner" in str(exc) or "No existing session" in str(exc):
                    # paramiko's words for a server that accepts and then says nothing
                    last = (f"the port accepted the connection but no SSH banner came "
                            f"within {BANNER_TIMEOUT:.0f} s ({last})")
            client.close()
            why = self.gone()
            if why is not None:
                raise BootError(f"the machine ended while the lab waited for SSH at "
                                f"{self.host}:{self.port}: {why}",
                                expected=f"SSH login as {self.user}", **self.context())
            time.sleep(1)
        if refused is not None:
            raise SSHKeyRefused(
                f"sshd at {self.host}:{self.port} refused the lab's key for {self.user} "
                f"until {timeout:.0f} s had passed ({refused}): the key "
                f"{self.key.private_path}.pub did not reach ~{self.user}/.ssh/authorized_keys "
                f"(the cloud-config's ssh_authorized_keys), or sshd does not read that file",
                expected=f"SSH login as {self.user} with the lab's key", **self.context())
        raise BootTimeout(f"no SSH login as {self.user} at {self.host}:{self.port} within "
                          f"{timeout:.0f} s (last: {last})",
                          expected="SSH login with the lab's key", **self.context())

    def run(self, cmd: str, timeout: float = 60, check: bool = False) -> Result:
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=timeout)
        chan.exec_command(cmd)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
            elif chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            elif chan.exit_status_ready() and (chan.eof_received or chan.closed):
                # the exit status can land before the last output: EOF comes after it all
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                break
            elif time.monotonic() > deadline:
                chan.close()
                raise CommandError(
                    f"command {cmd!r} over SSH did not finish within {timeout:.0f} s"
                )
            else:
                time.sleep(0.01)
        rc = chan.recv_exit_status()
        chan.close()
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        # `output` as a console would show it: what Machine.run's callers read on a
        # platform driven over SSH (a cloud) as on one with a console
        result = Result(cmd=cmd, rc=rc, output=stdout + stderr, stdout=stdout, stderr=stderr)
        return result.check() if check else result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
