"""The farm's Raspberry Pi box: *QEMU raspi3b behind an SD-card file as a Raspberry Pi box*.

Real parts, as a Pi on a labgrid farm is wired:
- the SD card: a file the size of a real card (QEMU's SD model takes powers of two) seen by
  the exporter host as a block device (a loop device: what an SD mux's card reader shows),
  exported as labgrid's `NetworkUSBMassStorage`; labgrid's `USBStorageDriver` writes it
  with `dd` over SSH to the exporter host, so this host runs a real sshd on loopback (own
  host key and client key in the farm folder) and the lab's `ssh` finds it by
  `ssh_config()` (the farm's `bin/ssh` adds `-F`, as a user's ~/.ssh/config would);
- power: a USB relay with a REST interface (labgrid's `NetworkPowerPort` model `rest`)
  served by the farm; switching it on runs the Pi's GPU firmware stand-in, which takes
  config.txt, cmdline.txt, the kernel, device tree and initramfs off the card's FAT
  partition, as the real firmware does, and starts QEMU raspi3b booting the card;
- its UART (the mini UART, ttyS1) on a pty behind a real ser2net, as on the x86 box.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from lab import sdcard

PI_BOARD = "raspi3b-sd-box"
CARD_BYTES = 1 << 30  # the reference Pi zip's card (816 MiB) fits


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


class PiBox:
    """The card, its loop device, the exporter host's sshd, the relay, the firmware."""

    def __init__(self, workdir: Path, ports: dict[str, int]) -> None:
        self.dir = workdir / "pi"
        self.ports = ports  # cable, sshd, relay
        self.card = self.dir / "sdcard.img"
        self.loop = ""
        self.sshd: subprocess.Popen[bytes] | None = None
        self.relay: http.server.ThreadingHTTPServer | None = None
        self.qemu: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.card.open("wb") as f:
            f.truncate(CARD_BYTES)  # an empty card
        self.loop = _run(["losetup", "--find", "--show", str(self.card)]).strip()
        self._start_sshd()
        self._start_relay()

    # -- the exporter host's sshd -----------------------------------------------------------

    def _start_sshd(self) -> None:
        d = self.dir
        for key in ("host_key", "client_key"):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)])
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        port = self.ports["sshd"]
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} "
                                       f"{(d / 'host_key.pub').read_text()}")
        (d / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1:{port}\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n")
        (d / "ssh_config").write_text(
            f"Host 127.0.0.1\n  Port {port}\n  User {os.environ.get('USER', 'root')}\n"
            f"  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {d / 'known_hosts'}\n  BatchMode yes\n")
        (d / "bin").mkdir(exist_ok=True)
        for tool in ("ssh", "scp", "rsync"):
            real = "/usr/bin/" + tool
            extra = (f'-e "/usr/bin/ssh -F {d / "ssh_config"}"' if tool == "rsync"
                     else f"-F {d / 'ssh_config'}")
            shim = d / "bin" / tool
            shim.write_text(f"#!/bin/sh\nexec {real} {extra} \"$@\"\n")
            shim.chmod(0o755)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        log = (d / "sshd.log").open("wb")
        self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        from tests.labfarm import _wait_port

        _wait_port(port)

    def ssh_path(self) -> str:
        """PATH for a labgrid client on this farm: the shims that find the exporter's sshd."""
        return f"{self.dir / 'bin'}:{os.environ.get('PATH', '')}"

    # -- the relay and the firmware ---------------------------------------------------------

    def _start_relay(self) -> None:
        box = self

        class Relay(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._answer(b"1" if box.powered() else b"0")

            def do_PUT(self) -> None:  # noqa: N802
                value = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    box.power_on() if value.strip() == b"1" else box.power_off()
                except Exception as exc:  # the firmware found no bootable card
                    self._answer(str(exc).encode(), 500)
                    return
                self._answer(value)

            def _answer(self, body: bytes, code: int = 200) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.relay = http.server.ThreadingHTTPServer(("127.0.0.1", self.ports["relay"]), Relay)
        threading.Thread(target=self.relay.serve_forever, daemon=True, name="pi-relay").start()

    def relay_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['relay']}/relay/{{index}}"

    def powered(self) -> bool:
        return self.qemu is not None and self.qemu.poll() is None

    def power_on(self) -> None:
        with self.lock:
            if self.powered():
                return
            argv = self.firmware()
            with (self.dir / "qemu.log").open("ab") as log:
                self.qemu = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)

    def power_off(self) -> None:
        with self.lock:
            if self.qemu is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.qemu.pid, signal.SIGKILL)
                self.qemu.wait()
                self.qemu = None

    def firmware(self) -> list[str]:
        """What the Pi's GPU firmware does: read config.txt and cmdline.txt on the card's
        first (FAT) partition, load the kernel, device tree and initramfs they name."""
        boot = Path(tempfile.mkdtemp(prefix="firmware-", dir=self.dir))
        names = sdcard.boot_names(self.card)  # raises if the card has no FAT boot partition
        for name in names:
            sdcard.copy_from_boot(self.card, name, boot / name)
        conf = sdcard.pi_config((boot / "config.txt").read_text(errors="replace")
                                if "config.txt" in names else "")
        cmdline = (boot / "cmdline.txt").read_text().strip() if "cmdline.txt" in names else ""
        if conf["kernel"] not in names or conf["device_tree"] not in names:
            raise RuntimeError(f"the card's boot partition lacks {conf['kernel']} or "
                               f"{conf['device_tree'] or 'a device_tree'}: {names}")
        initrd = ["-initrd", str(boot / conf["initramfs"])] if conf["initramfs"] else []
        return ["qemu-system-aarch64", "-name", "roslab-farm-pi", "-M", "raspi3b",
                "-accel", "tcg,thread=single", "-m", "1024", "-nodefaults", "-display", "none",
                "-kernel", str(boot / conf["kernel"]), "-dtb", str(boot / conf["device_tree"]),
                *initrd, "-append", cmdline,
                "-drive", f"if=sd,format=raw,file={self.card}",
                "-chardev", f"socket,id=ser0,host=127.0.0.1,port={self.ports['cable']},"
                            "reconnect=1",
                "-serial", "null", "-serial", "chardev:ser0"]  # the mini UART is the second

    def resources(self, console_port: int) -> str:
        return (f"  NetworkSerialPort: {{host: 127.0.0.1, port: {console_port}, protocol: raw}}\n"
                f"  NetworkPowerPort: {{model: rest, host: '{self.relay_url()}', index: 0}}\n"
                f"  NetworkUSBMassStorage: {{host: 127.0.0.1, path: {self.loop}, busnum: null,"
                f" devnum: null, vendor_id: null, model_id: null}}\n")

    def stop(self) -> None:
        self.power_off()
        if self.relay is not None:
            self.relay.shutdown()
            self.relay.server_close()
            self.relay = None
        if self.sshd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.sshd.pid, signal.SIGTERM)
            self.sshd.wait(10)
            self.sshd = None
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
            self.loop = ""
