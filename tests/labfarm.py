"""A labgrid farm of real parts on loopback, for the lab's own tests and for demos.

    python -m tests.labfarm DIR [DISK] [--pi]   # until Ctrl-C; prints the options to use

Stand-in, named as such: *QEMU behind ipmi_sim as a physical x86 box*. Everything else
is the real program a farm runs:
- labgrid-coordinator on 127.0.0.1 (its gRPC port has no authentication) and one
  labgrid-exporter exporting the box's resources;
- ipmi_sim (OpenIPMI's BMC simulator): IPMI over LAN on 127.0.0.1; its `startcmd`
  starts the box's QEMU on power-on, and power-off goes to QEMU's external BMC;
- the box's serial cable: a pty the rig holds (a box's UART outlives its power, as a
  USB-serial adapter on an exporter does), joined to QEMU's serial socket;
- ser2net exporting that tty as raw TCP;
- the box's firmware: QEMU's iPXE ROM on a virtio NIC, whose DHCP boot file is the lab's
  netboot URL (the place's `netboot_url` tag), as a farm's DHCP server would hand out.
Places: `box` (all good), `box-deadbmc` (its BMC port answers nothing),
`box-deadconsole` (its ser2net port refuses), and with a DISK image `box-disk` (tag
boot=disk: a second such box with no netboot, booting a copy-on-write layer over that
installed disk). `stop()` ends every daemon it started.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

from drivers.qemu.host import free_port, free_ports

EXPORTER = "roslab-farm"
BOARD = "x86-ipmi-box"


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{proc.args[0]} did not say {text!r}: "
                       f"{path.read_text(errors='replace')[-1500:] if path.exists() else ''}")


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class SerialCable:
    """The box's UART: a pty (ser2net opens its tty) joined to QEMU's serial socket.

    Bytes the box sends while no one has the tty open are dropped, as on a real line."""

    def __init__(self, port: int) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="serial-cable")
        self.thread.start()

    def _run(self) -> None:
        box: socket.socket | None = None
        while not self.stopped.is_set():
            watched = [self.listener, self.master, *([box] if box else [])]
            ready, _, _ = select.select(watched, [], [], 0.2)
            if self.listener in ready:
                if box is not None:
                    box.close()
                box, _ = self.listener.accept()
            if box is not None and box in ready:
                data = box.recv(65536)
                if not data:
                    box.close()
                    box = None
                else:
                    with contextlib.suppress(BlockingIOError, OSError):
                        os.write(self.master, data)
            if self.master in ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    data = os.read(self.master, 65536)
                    if box is not None:
                        box.sendall(data)
        if box is not None:
            box.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()
        os.close(self.master)
        os.close(self.slave)


BOX_PORTS = ("ipmi", "bmc_link", "cable", "console", "ssh")
PI_PORTS = ("cable", "console", "sshd", "relay")


class Farm:
    def __init__(self, workdir: Path, disk: Path | None = None, pi: bool = False) -> None:
        """`disk`: also a second x86 box, `box-disk` (place tag boot=disk), whose disk is a
        copy-on-write layer over this installed disk image (it is never written).
        `pi`: also the Pi box, place `pi` (tests/labfarm_pi.py)."""
        from tests.labfarm_pi import PiBox

        self.dir = workdir
        self.disk = disk
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cables: list[SerialCable] = []
        self.password = secrets.token_hex(8)
        names = ("coordinator", "netboot", "dead_bmc", "dead_console", *BOX_PORTS,
                 *(f"disk_{n}" for n in BOX_PORTS), *(f"pi_{n}" for n in PI_PORTS))
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.pi = PiBox(workdir, {n: self.ports[f"pi_{n}"] for n in PI_PORTS}) if pi else None
        self.coordinator = f"127.0.0.1:{self.ports['coordinator']}"
        self.netboot_url = f"http://10.0.2.2:{self.ports['netboot']}"  # the host, to slirp
        self.netboot_listen = f"127.0.0.1:{self.ports['netboot']}"

    # -- daemons --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], **env: str) -> tuple[subprocess.Popen[bytes],
                                                                       Path]:
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, **env}, cwd=self.dir)
        self.procs.append(proc)
        return proc, log

    def start(self) -> Farm:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            # first: the boxes' QEMU connect out from ephemeral ports, which could take
            # the coordinator's
            self._start_coordinator()
            self._start_box("box", self.ports, f"-netdev user,id=n0,bootfile="
                            f"{self.netboot_url}/boot.ipxe,hostfwd=tcp:127.0.0.1:"
                            f"{self.ports['ssh']}-:22 -device virtio-net-pci,netdev=n0 -boot n")
            if self.disk is not None:
                from drivers.qemu.host import make_overlay
                from lab.images import Image

                (self.dir / "box-disk").mkdir(exist_ok=True)
                layer = make_overlay(self.dir / "box-disk", self.disk,
                                     Image.open(self.disk).disk_format or "raw")
                ports = {n: self.ports[f"disk_{n}"] for n in BOX_PORTS}
                self._start_box("box-disk", ports, f"-drive if=virtio,format=qcow2,file="
                                f"{layer} -netdev user,id=n0,hostfwd=tcp:127.0.0.1:"
                                f"{ports['ssh']}-:22 -device virtio-net-pci,netdev=n0 -boot c")
            if self.pi is not None:
                self.pi.start()
                self._start_console("pi", self.ports["pi_cable"], self.ports["pi_console"])
            self._start_labgrid()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_box(self, name: str, p: dict[str, int], boot: str) -> None:
        """One x86 box: its QEMU (started by its BMC), ipmi_sim, serial cable, ser2net."""
        box = self.dir / f"{name}.sh"
        # exec: ipmi_sim's power-off kill reaches QEMU itself
        box.write_text(
            f"#!/bin/sh\nexec qemu-system-x86_64 -name roslab-farm-{name} -nodefaults "
            "-display none -accel tcg -m 2048 -smp 2 "
            f"-pidfile {self.dir / (name + '.pid')} "
            f"-chardev socket,id=bmc,host=127.0.0.1,port={p['bmc_link']},reconnect=1 "
            "-device ipmi-bmc-extern,id=bmc0,chardev=bmc -device isa-ipmi-bt,bmc=bmc0 "
            f"-chardev socket,id=ser0,host=127.0.0.1,port={p['cable']},reconnect=1 "
            f"-serial chardev:ser0 {boot} -device virtio-rng-pci "
            f">> {self.dir / (name + '.log')} 2>&1\n")
        box.chmod(0o755)
        (self.dir / f"{name}-lan.conf").write_text(f"""name "roslab{name.replace('-', '')}"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {p['ipmi']}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 {p['bmc_link']} codec VM
  startcmd "{box}"
  startnow false
  poweroff_wait 5
  kill_wait 5
  user 2 true "admin" "{self.password}" admin 10 none md2 md5 straight
""")
        (self.dir / "box.emu").write_text(
            "mc_setbmc 0x20\n"
            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
            "sel_enable 0x20 1000 0x0a\nmc_enable 0x20\n")
        (self.dir / f"{name}-ipmi-state").mkdir(exist_ok=True)
        self._spawn(f"{name}-ipmi_sim", ["ipmi_sim", "-c", f"{name}-lan.conf", "-f", "box.emu",
                                         "-s", f"{name}-ipmi-state", "-n"])
        self._start_console(name, p["cable"], p["console"])

    def _start_console(self, name: str, cable_port: int, console_port: int) -> None:
        """The box's serial cable and the ser2net that exports it."""
        cable = SerialCable(cable_port)
        self.cables.append(cable)
        (self.dir / f"{name}-ser2net.yaml").write_text(
            "connection: &box\n"
            f"    accepter: tcp,127.0.0.1,{console_port}\n"
            f"    connector: serialdev,{cable.path},115200n81,local\n"
            "    options:\n      kickolduser: true\n")
        self._spawn(f"{name}-ser2net", ["ser2net", "-n", "-c",
                                        str(self.dir / f"{name}-ser2net.yaml")])
        _wait_port(console_port)

    def _start_coordinator(self, attempts: int = 3) -> None:
        """labgrid-coordinator on a free port; a port taken between choosing it and the
        coordinator's bind (another process's connection) is chosen again."""
        for attempt in range(attempts):
            proc, log = self._spawn("coordinator", [
                str(Path(sys.executable).parent / "labgrid-coordinator"), "-l",
                self.coordinator], GRPC_ENABLE_FORK_SUPPORT="0")
            try:
                _wait_for(log, "Coordinator ready", proc, 30)
                return
            except RuntimeError:
                if attempt == attempts - 1 or "Address already in use" not in log.read_text(
                        errors="replace"):
                    raise
                proc.wait(5)
                self.ports["coordinator"] = free_port()
                self.coordinator = f"127.0.0.1:{self.ports['coordinator']}"

    def _start_labgrid(self) -> None:
        p, bin_dir = self.ports, Path(sys.executable).parent
        env = {"GRPC_ENABLE_FORK_SUPPORT": "0"}
        groups = {
            "box": (p["console"], p["ipmi"], p["ssh"]),
            "box-deadbmc": (p["console"], p["dead_bmc"], p["ssh"]),
            "box-deadconsole": (p["dead_console"], p["ipmi"], p["ssh"]),
        }
        if self.disk is not None:
            groups["box-disk"] = (p["disk_console"], p["disk_ipmi"], p["disk_ssh"])
        resources = "".join(
            f"{group}:\n"
            f"  NetworkSerialPort: {{host: 127.0.0.1, port: {console}, protocol: raw}}\n"
            f"  IPMIPowerPort: {{host: 127.0.0.1, port: {ipmi}, username: admin}}\n"
            f"  NetworkService: {{address: 127.0.0.1, port: {ssh}, username: rancher}}\n"
            for group, (console, ipmi, ssh) in groups.items())
        if self.pi is not None:
            resources += "pi:\n" + self.pi.resources(p["pi_console"])
        (self.dir / "exporter.yaml").write_text(resources)
        proc, log = self._spawn("exporter", [
            str(bin_dir / "labgrid-exporter"), "-c", self.coordinator, "-n", EXPORTER,
            "--hostname", "127.0.0.1", str(self.dir / "exporter.yaml")], **env)
        _wait_for(log, "connected to coordinator", proc, 30)
        for place in groups:
            self.client("-p", place, "create")
            self.client("-p", place, "add-match", f"{EXPORTER}/{place}/*")
            if place == "box-disk":
                self.client("-p", place, "set-tags", f"board={BOARD}", "arch=x86_64",
                            "boot=disk")
            else:
                self.client("-p", place, "set-tags", f"board={BOARD}", "arch=x86_64",
                            f"netboot_listen={self.netboot_listen}",
                            f"netboot_url={self.netboot_url}",
                            # QEMU's slirp fetches from the host's loopback address
                            "netboot_client=127.0.0.1")
        if self.pi is not None:
            from tests.labfarm_pi import PI_BOARD

            self.client("-p", "pi", "create")
            self.client("-p", "pi", "add-match", f"{EXPORTER}/pi/*")
            self.client("-p", "pi", "set-tags", f"board={PI_BOARD}", "arch=aarch64",
                        "slowdown=4")

    def client(self, *args: str) -> str:
        """labgrid-client against this farm (the rig's own setup and checks)."""
        proc = subprocess.run([str(Path(sys.executable).parent / "labgrid-client"),
                               "-x", self.coordinator, *args], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "0"})
        if proc.returncode != 0:
            raise RuntimeError(f"labgrid-client {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def ipmi(self, *args: str, box: str = "box") -> str:
        port = self.ports["ipmi" if box == "box" else "disk_ipmi"]
        return subprocess.run(
            ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port),
             "-U", "admin", "-E", "-C", "3", *args], capture_output=True, text=True,
            timeout=30, env={**os.environ, "IPMI_PASSWORD": self.password}).stdout

    def box_running(self, box: str = "box") -> bool:
        return "is on" in self.ipmi("chassis", "power", "status", box=box)

    def options(self, place: str = "box") -> dict[str, str]:
        return {"place": place, "labgrid_coordinator": self.coordinator}

    def stop(self) -> None:
        for box in ("box", "box-disk") if self.disk is not None else ("box",):
            with contextlib.suppress(Exception):
                self.ipmi("chassis", "power", "off", box=box)
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.dir / f"{box}.pid").read_text()), signal.SIGKILL)
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self.pi is not None:
            self.pi.stop()
        for cable in self.cables:
            cable.stop()
        self.cables.clear()


def main() -> None:
    import tempfile

    args = [a for a in sys.argv[1:] if a != "--pi"]
    workdir = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="roslab-farm-"))
    farm = Farm(workdir, Path(args[1]) if len(args) > 1 else None,
                pi="--pi" in sys.argv).start()
    print(f"farm up in {workdir}: QEMU behind ipmi_sim as a physical x86 box\n"
          f"export ROSLAB_IPMI_PASSWORD={farm.password}\n"
          f"--platform labgrid --place box --labgrid-coordinator {farm.coordinator}",
          flush=True)
    if farm.pi is not None:
        print(f"and QEMU raspi3b behind an SD-card file as a Raspberry Pi box:\n"
              f"export PATH={farm.pi.ssh_path()}  # ssh finds the exporter's sshd\n"
              f"--platform labgrid --place pi --image rancheros-raspberry-pi64.zip",
              flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        farm.stop()


if __name__ == "__main__":
    main()
