"""QEMU driver: direct kernel, ISO, disk and Pi SD card boot; serial on a unix socket; QMP.

Boards: `pc` (x86_64), `virt` (aarch64, cortex-a57) and `raspi3b` (a Pi SD card image,
booted the way the Pi's firmware does it: kernel, device tree and cmdline from the card's
boot partition, the card itself on the SD slot).

QEMU starts paused (`-S`) so the harness is connected to the serial socket and QMP
before the first instruction runs: the console log then has every byte with a host
timestamp, and t0 is the moment of `cont`. QEMU's own `logfile=` copy of the serial
keeps the whole boot even if the harness is gone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from drivers.qemu.boards import (
    BOARDS,
    Board,
    board_for,
    extra_nic_args,
    machine_args,
)
from drivers.qemu.host import (
    QEMU_BINARY,
    binary,
    free_port,
    kvm_usable,
    make_overlay,
    popen,
    probe_kernel,
    qemu_version,
    resolve_accel,
)
from lab import cloudconfig
from lab.driver import (
    Capabilities,
    Check,
    Driver,
    HostRoute,
    MachineSpec,
    Snapshot,
    kernel_cmdline_args,
    lab_kernel_args,
)
from lab.errors import BootError, ConfigError, EmulatorError, ImageError, LabError
from lab.images import DISK, GCE_TARBALL, ISO, KERNEL, SDCARD, Image, unpack_gce_disk

GUEST_HOST_IP = "10.0.2.2"  # the host as QEMU user-mode networking shows it to the guest
# slirp's own addresses in its virtual network, as host parts of 10.0.2.0/24's: on a wider
# `net=` (a cloud's metadata network) QEMU keeps them as far as the mask lets it, so on
# 169.254.0.0/16 the host is 169.254.2.2, not .0.2 (measured: the guest's DNS is .2.3)
HOST, FIRST_LEASE = 0x202, 0x20F


def slirp_address(network: str, host_part: int) -> str:
    """The address slirp gives `host_part` (HOST, FIRST_LEASE) on `network` (default
    10.0.2.0/24)."""
    net = ipaddress.ip_network(network or "10.0.2.0/24")
    return str(net[host_part & int(net.hostmask)])


MIGRATE_BANDWIDTH = 1 << 40  # bytes/s: QEMU's default 32 MiB/s would make a save take 10 s
MIGRATE_SECONDS = 120.0  # bound on saving or loading a machine's state


class _PeerHangUp(logging.Filter):
    """QEMU closing its QMP socket as it exits (a panic with panic=-1, a power-off) is how
    a machine stops, not an error: qemu.qmp logs it as one from its reader task."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(e in message for e in ("BrokenPipeError", "ConnectionResetError",
                                               "EOFError"))


logging.getLogger("qemu.qmp.protocol").addFilter(_PeerHangUp())


# -- the driver ----------------------------------------------------------------------------


class QemuDriver(Driver):
    name = "qemu"
    delivers_instance_keys = True  # the lab's metadata stand-ins serve them
    runs_on_host = True
    artifacts = ("serial.raw", "qemu.stderr")  # the emulator's own copy of the serial port
    capabilities: ClassVar[Capabilities] = Capabilities(  # any board; see BOARDS
        arches=("x86_64", "aarch64"),
        console=True,
        ssh=True,
        power_button=True,
        snapshot=False,
        datasources=cloudconfig.DATASOURCES,
        image_kinds=(KERNEL, ISO, DISK, SDCARD, GCE_TARBALL),
        disks=True,
        disk_boot=True,
        extra_nics=True,
    )

    @classmethod
    def capabilities_for(cls, image: Image, arch: str) -> Capabilities:
        return board_for(image, arch).caps

    def __init__(self) -> None:
        self.spec: MachineSpec | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssh_port = 0
        self.argv: list[str] = []
        self._console: socket.socket | None = None
        self._qmp: Any = None
        self._exit_stack = contextlib.ExitStack()
        self._disks: list[str] = []
        self._blanks: list[Path] = []
        self._kernel_args: list[str] = []
        self.board = BOARDS["pc"]
        self.sockdir: Path | None = None
        self._net_options = ""  # slirp options of a cloud metadata stand-in
        self.metadata: Any = None  # that stand-in (drivers.qemu.metadata.MetadataServer)
        # where the guest's port 22 is forwarded on the host (default: 127.0.0.1 and a free
        # port); a cloud stand-in gives its instance an address of its own, port 22
        self.ssh_bind: tuple[str, int] | None = None

    @classmethod
    def host_threads_for(cls, image: Image, arch: str, accel: str, cpus: int) -> int:
        single = accel == "tcg" and "thread=single" in board_for(image, arch).tcg
        return 1 if single else cpus

    @classmethod
    def host_address_for_guest(cls, datasource: str, options: dict[str, Any]) -> HostRoute:
        """User-mode networking shows the host's loopback to the guest as the virtual
        network's .2 (10.0.2.2; a cloud's metadata network moves it, drivers/qemu/metadata)."""
        from drivers.qemu import metadata

        cloud = metadata.CLOUDS.get(datasource)
        return HostRoute("127.0.0.1", slirp_address((cloud.network if cloud else ""), HOST))

    @classmethod
    def doctor(cls, options: dict[str, Any], arch: str) -> list[Check]:
        """The emulators, their version, qemu-img, the Pi card's tools, KVM and the
        accelerator a run would use (probed with the reference image once it is built)."""
        checks = []
        for guest, program in QEMU_BINARY.items():
            package = "qemu-system-x86" if guest == "x86_64" else "qemu-system-arm"
            checks.append(Check(shutil.which(program) is not None or guest != arch, program,
                                f"apt-get install {package}"))
        if shutil.which(QEMU_BINARY["x86_64"]):
            version = qemu_version("x86_64")
            checks.append(Check(
                version >= (10, 0), f"QEMU {'.'.join(map(str, version))}: x86 guests under "
                "TCG run on one host thread (multi-threaded TCG can hang them)",
                "QEMU 10 or later boots them 1.4x as fast (on Debian 12, ./setup takes it "
                "from bookworm-backports)", required=False))
        checks.append(Check(shutil.which("qemu-img") is not None, "qemu-img (disk overlays)",
                            "apt-get install qemu-utils"))
        sd_tools = ("mkfs.vfat", "mcopy", "mdir", "mke2fs")
        checks.append(Check(all(shutil.which(t) for t in sd_tools) or arch != "aarch64",
                            "dosfstools, mtools, e2fsprogs (Raspberry Pi SD images)",
                            "apt-get install dosfstools mtools e2fsprogs"))
        usable, why = kvm_usable()
        checks.append(Check(True, f"KVM device: {why}"))
        image = None
        with contextlib.suppress(LabError, ImportError):
            from refimage.build import default_out

            if default_out(arch).exists():
                image = Image.open(default_out(arch))
        if image is None:
            # an unprobed KVM is not a working one (a guest can hang at 100% sys): say so
            accel, why = (("kvm if a guest runs on it, else tcg", "not probed yet: no "
                           "reference image built (`roslab image build`)") if usable
                          else ("tcg", "no usable KVM device"))
        else:
            with tempfile.TemporaryDirectory(prefix="roslab-doctor-") as scratch:
                accel, why = cls().resolve_accel("auto", image, Path(scratch))
        checks.append(Check(True, f"accelerator: {accel} ({why})"))
        return checks

    def resolve_accel(self, requested: str, image: Image, scratch: Path) -> tuple[str, str]:
        binary(image.arch or "x86_64")  # no emulator: say which package, before anything runs
        if requested == "auto" and kvm_usable()[0]:
            with probe_kernel(image, scratch) as kernel:
                return resolve_accel(requested, image.arch or "x86_64", kernel)
        return resolve_accel(requested, image.arch or "x86_64", None)

    # prepare ------------------------------------------------------------------------------

    def _take(self, spec: MachineSpec) -> Board:
        self.spec = spec
        self.board = board = board_for(spec.image, spec.arch)
        spec.workdir.mkdir(parents=True, exist_ok=True)
        self.sockdir = spec.workdir
        if len(str(spec.workdir / "console.sock")) > 100:  # sun_path holds 108 bytes
            base = tempfile.gettempdir()
            self.sockdir = Path(tempfile.mkdtemp(prefix="roslab-sock-",
                                                 dir=base if len(base) < 60 else "/tmp"))
        return board

    def prepare(self, spec: MachineSpec) -> None:
        # make_machine checked the spec against this board's capabilities
        board = self._take(spec)
        self._blanks = [self._blank(i, size) for i, size in enumerate(spec.blank_disks)]
        self._disks = self._boot_media(spec.image) + [
            a for b in self._blanks for a in ("-drive", f"if=virtio,format=qcow2,file={b}")]
        ds = self._deliver(spec)
        lab_args = lab_kernel_args(spec, ds or None, self._kernel_args)
        if spec.image.kind == KERNEL:
            tty = board.tty
            self._kernel_args = [f"console={tty},115200n8", f"rancher.autologin={tty}",
                                 *lab_args]
        elif spec.image.kind == SDCARD:  # the card's cmdline.txt, as the firmware passes it
            self._kernel_args = [*spec.image.cmdline.split(), *lab_args]
        cloudconfig.check_cmdline(self._kernel_args)

    def _boot_media(self, image: Image) -> list[str]:
        """QEMU args for the image; the user's file is never written."""
        assert self.spec is not None
        if image.kind == KERNEL:
            return ["-kernel", str(image.kernel), "-initrd", str(image.initrd)]
        if image.kind == ISO:
            # on virtio-scsi, not the default IDE: SeaBIOS reads an IDE CD by PIO, which
            # takes ~10 s under TCG to load the initrd; virtio's DMA takes under 1 s
            return ["-device", "virtio-scsi-pci,id=scsi0",
                    "-drive", f"if=none,id=cd0,media=cdrom,readonly=on,file={image.path}",
                    "-device", "scsi-cd,bus=scsi0.0,drive=cd0,bootindex=0"]
        if image.kind == SDCARD:
            assert image.card is not None and image.dtb is not None and image.kernel is not None
            # QEMU's SD model takes only power-of-two sizes: the overlay rounds the card up
            size = 1 << (image.card.stat().st_size - 1).bit_length()
            overlay = self._overlay(image.card, "raw", size)
            initrd = ["-initrd", str(image.initrd)] if image.initrd else []
            return ["-kernel", str(image.kernel), "-dtb", str(image.dtb), *initrd,
                    "-drive", f"if=sd,format=qcow2,file={overlay}"]
        if image.kind == GCE_TARBALL:  # GCE boots the tarball's disk.raw
            overlay = self._overlay(unpack_gce_disk(image.path, self.spec.workdir), "raw")
        else:
            overlay = self._overlay(image.path, image.disk_format or "raw")
        return ["-drive", f"if=virtio,format=qcow2,file={overlay}"]

    def _blank(self, index: int, size: int) -> Path:
        assert self.spec is not None
        path = self.spec.workdir / f"blank-{index}.qcow2"
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"could not make a blank disk {path}: {proc.stderr.strip()}")
        return path

    def blank_disk_devices(self) -> list[str]:
        # virtio disks are named in the order of their -drive options
        virtio = [a for a in self._disks if a.startswith("if=virtio")]
        names = []
        for blank in self._blanks:
            index = next(i for i, a in enumerate(virtio) if a.endswith(f"file={blank}"))
            names.append(f"/dev/vd{chr(ord('a') + index)}")
        return names

    def boot_from_disk(self, index: int) -> None:
        """Drop the image's boot media (kernel, CD, disk): the installed disk comes first
        and the BIOS boots it; config drives stay after it."""
        blank = self._blanks[index]
        keep = []
        args = iter(self._disks)
        for arg in args:
            value = next(args, "")
            if arg == "-drive" and "if=virtio" in value and "readonly=on" in value:
                keep += [arg, value]  # a config drive
        self._disks = ["-drive", f"if=virtio,format=qcow2,file={blank}", *keep]
        self._kernel_args = []

    def _overlay(self, base: Path, fmt: str, size: int | None = None) -> Path:
        assert self.spec is not None
        return make_overlay(self.spec.workdir, base, fmt, size)

    def _deliver(self, spec: MachineSpec) -> str:
        """Make the cloud-config reachable; returns the datasource for the kernel cmdline."""
        cc, ds = spec.cloud_config, spec.datasource
        if ds in cloudconfig.METADATA_DATASOURCES:
            return self._serve_metadata(spec)
        if cc is None or ds == "none":
            return ""
        if ds in ("configdrive", "nocloud"):
            kind = "config-2" if ds == "configdrive" else "cidata"
            iso = cloudconfig.config_drive(cc, spec.workdir / f"{kind}.iso", kind, spec.name)
            self._disks += ["-drive", f"if=virtio,format=raw,readonly=on,file={iso}"]
            return "configdrive:/media/config-2" if ds == "configdrive" else "nocloud"
        if ds == "url":
            port = self._exit_stack.enter_context(cloudconfig.http_server(cc))
            return f"url:http://{GUEST_HOST_IP}:{port}/user-data"
        if ds == "cmdline":
            self._kernel_args += cloudconfig.cmdline_args(cc)
            return "cmdline"
        raise ConfigError(
            f"unknown datasource {ds!r}: known are {', '.join(cloudconfig.DATASOURCES)}"
        )

    def _serve_metadata(self, spec: MachineSpec) -> str:
        """Start the cloud's metadata stand-in and route the guest's requests to it."""
        from drivers.qemu import metadata

        instance = metadata.Instance(
            user_data=spec.cloud_config.text.encode() if spec.cloud_config else None,
            ssh_keys=list(spec.ssh_keys), hostname=spec.name,
            local_ipv4=slirp_address(metadata.CLOUDS[spec.datasource].network, FIRST_LEASE),
        )
        server, self._net_options = metadata.serve(spec.datasource, instance)
        self.metadata = server
        self._exit_stack.callback(server.stop)
        return spec.datasource

    def _argv(self) -> list[str]:
        spec, board = self.spec, self.board
        assert spec is not None
        work = spec.workdir
        size = (["-m", str(board.memory_mb)] if board.memory_mb
                else ["-m", str(spec.memory_mb), "-smp", str(spec.cpus)])
        argv = [
            binary(spec.arch), "-name", spec.name, *machine_args(board, spec.accel),
            "-nodefaults", "-display", "none", "-no-reboot", "-S", *size,
            "-chardev", f"socket,id=ser0,path={self.sockdir / 'console.sock'},server=on,wait=off,"
                        f"logfile={work / 'serial.raw'},logappend=on",
            *["-serial", "null"] * board.serial_index, "-serial", "chardev:ser0",
            "-qmp", f"unix:{self.sockdir / 'qmp.sock'},server=on,wait=off",
        ]
        if board.caps.network:
            argv += [
                # QEMU's DHCP offers the machine's name, as clouds' DHCP servers do
                "-netdev", f"user,id=net0,hostfwd=tcp:{self.ssh_endpoint()[0]}:{self.ssh_port}-:22,"
                           f"hostname={self.dhcp_hostname()}"
                           + (f",{self._net_options}" if self._net_options else ""),
                # no option ROM: nothing here netboots, and iPXE's probe costs a second of TCG
                "-device", "virtio-net-pci,netdev=net0,romfile=",
                "-device", "virtio-rng-pci",  # entropy for sshd and dockerd early in boot
                *extra_nic_args(spec.extra_nics),
            ]
        argv += self._disks
        if self._kernel_args:  # by a file: the console password is not for `ps`
            argv += kernel_cmdline_args(self._kernel_args, work / "kernel.cfg")
        return argv

    # run ----------------------------------------------------------------------------------

    def start(self) -> float:
        self._launch()
        self._qmp.cmd("cont")
        return time.monotonic()

    def _launch(self, extra: tuple[str, ...] = ()) -> None:
        """Run QEMU paused, with a free SSH port, and connect console and QMP."""
        assert self.spec is not None, "prepare() first"
        for attempt in range(3):
            self.ssh_port = self.ssh_bind[1] if self.ssh_bind else free_port()
            self.argv = [*self._argv(), *extra]
            stderr = (self.spec.workdir / "qemu.stderr").open("wb")
            self.proc = popen(self.argv, keep=self.spec.keep_on_exit, stdin=subprocess.DEVNULL,
                              stdout=stderr, stderr=stderr)
            stderr.close()
            try:
                self._connect()
                break
            except BootError:
                # another process took the port between our probe and QEMU's bind: retry
                if attempt < 2 and "host forwarding" in self._stderr_tail():
                    self.proc.wait()
                    continue
                raise

    # snapshot and restore -----------------------------------------------------------------

    def exclusive_resource(self, spec: MachineSpec) -> str | None:
        if spec.datasource == "cloudstack":  # slirp joins 10.0.2.2:80 to the host's port 80
            return "127.0.0.1:80, where the CloudStack metadata stand-in listens"
        return None

    def snapshot_unsupported(self, spec: MachineSpec) -> str | None:
        if spec.datasource == "url" or spec.datasource in cloudconfig.METADATA_DATASOURCES:
            # the guest may ask that server again, and a copy would find nobody there
            return (f"its cloud-config is served by a host-side server ({spec.datasource}) "
                    "that does not outlive the saved machine")
        return super().snapshot_unsupported(spec)

    def snapshot(self, dest: Path, keep_running: bool = False) -> Snapshot:
        """Migrate the paused machine to a file (PLATFORM-NOTES: 0.2-1.4 s) and put its
        disks and config drive beside the state: moved, as the machine quits; or, with
        `keep_running`, linked, as it goes on (it must have no disk it writes)."""
        spec = self.spec
        assert spec is not None and self._qmp is not None, "start() first"
        why = self.snapshot_unsupported(spec) or (self.live_snapshot_unsupported()
                                                  if keep_running else None)
        if why is not None:
            raise ConfigError(f"cannot snapshot machine {spec.name}: {why}")
        dest.mkdir(parents=True)
        state = dest / "state"
        self._qmp.cmd("stop")
        try:
            self._qmp.cmd("migrate-set-parameters", **{"max-bandwidth": MIGRATE_BANDWIDTH})
            self._qmp.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(state))}")
            self._await_migration("save the machine's state")
        finally:
            if keep_running and self.alive():
                self._qmp.cmd("cont")
        if not keep_running:
            self.stop()
        disks = []
        for arg in self._disks:
            for path in re.findall(r"file=([^,]+)", arg):
                if Path(path).parent == spec.workdir:
                    (os.link if keep_running else shutil.move)(path, dest / Path(path).name)
                    arg = arg.replace(f"file={path}", f"file={dest / Path(path).name}")
            disks.append(arg)
        return Snapshot(dest, self.name, state.stat().st_size,
                        {"disks": disks, "kernel_args": list(self._kernel_args)})

    def pause(self) -> bool:
        if self._qmp is None or not self.alive():
            return False
        self._qmp.cmd("stop")
        return True

    def resume(self) -> None:
        self._qmp.cmd("cont")

    def live_snapshot_unsupported(self) -> str | None:
        """Why this machine cannot be saved and go on running (None when it can): the
        copies would share a disk layer it goes on writing."""
        writable = [a for a in self._disks if "readonly=on" not in a and "file=" in a]
        return f"it writes to a disk ({writable[0]})" if writable else None

    def _await_migration(self, what: str) -> None:
        assert self._qmp is not None
        deadline = time.monotonic() + MIGRATE_SECONDS
        while True:
            info = self._qmp.cmd("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return
            if status in ("failed", "cancelled") or time.monotonic() > deadline \
                    or not self.alive():
                detail = info.get("error-desc", status) if isinstance(info, dict) else status
                raise EmulatorError(f"QEMU could not {what}: {detail}",
                                    expected=f"the migration to end in {MIGRATE_SECONDS:.0f} s",
                                    last_lines=self._stderr_tail().splitlines()[-10:])
            time.sleep(0.02)

    def restore(self, spec: MachineSpec, snapshot: Snapshot) -> float:
        """A new QEMU with the template's devices (the state needs the same command line,
        but for paths and the SSH port), loading the state with -incoming."""
        self._take(spec)
        self._kernel_args = list(snapshot.data["kernel_args"])
        self._disks = []
        for arg in snapshot.data["disks"]:
            path = re.search(r"file=([^,]+)", arg)
            if path and "readonly=on" not in arg and "format=qcow2" in arg:
                # the saved disk stays as it was: this machine writes to a layer of its own
                overlay = make_overlay(spec.workdir, Path(path.group(1)), "qcow2")
                arg = arg.replace(path.group(0), f"file={overlay}")
            self._disks.append(arg)
        self._launch(("-incoming", "defer"))
        assert self._qmp is not None
        state = shlex.quote(str(snapshot.path / "state"))
        self._qmp.cmd("migrate-incoming", uri=f"exec:cat {state}")
        self._await_migration("load the saved machine")
        self._qmp.cmd("cont")  # the template was paused when saved: so is its copy
        return time.monotonic()

    def _connect(self) -> None:
        """Wait for QEMU's sockets and connect console, then QMP (QEMU is paused)."""
        from qemu.qmp import ConnectError
        from qemu.qmp.legacy import QEMUMonitorProtocol

        assert self.spec is not None and self.proc is not None and self.sockdir is not None
        work = self.sockdir
        deadline = time.monotonic() + 30
        # a socket file exists from QEMU's bind(), before its listen(): retry refused connects
        while True:
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            qmp = QEMUMonitorProtocol(str(work / "qmp.sock"))
            try:
                console.connect(str(work / "console.sock"))
                qmp.connect()
                break
            except (OSError, ConnectError) as err:
                console.close()
                with contextlib.suppress(Exception):
                    qmp.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise EmulatorError("QEMU did not start", expected="QEMU to open its sockets",
                                    last_lines=self._stderr_tail().splitlines()[-10:]) from err
                time.sleep(0.05)
        self._console, self._qmp = console, qmp

    def _stderr_tail(self) -> str:
        assert self.spec is not None
        try:
            return (self.spec.workdir / "qemu.stderr").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def console_stream(self) -> socket.socket:
        assert self._console is not None, "start() first"
        return self._console

    def ssh_endpoint(self) -> tuple[str, int]:
        return (self.ssh_bind[0] if self.ssh_bind else "127.0.0.1"), self.ssh_port

    def dhcp_hostname(self) -> str | None:
        if self.spec is None or not self.board.caps.network:
            return None
        return re.sub(r"[^A-Za-z0-9-]", "-", self.spec.name)  # a valid DNS label

    def power_button(self) -> None:
        self._qmp.cmd("system_powerdown")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_reason(self) -> str:
        if self.proc is None:
            return ""
        # Asked once the console has closed: QEMU's sockets close a moment before the
        # process can be reaped, so give it that moment rather than report nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)
        if self.proc.poll() is None:
            return ""
        tail = self._stderr_tail().strip().splitlines()[-3:]
        return f"QEMU exited with status {self.proc.returncode}" + (
            ": " + " / ".join(tail) if tail else ""
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                if self.alive():
                    self._qmp.cmd("quit")
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._console is not None:
            self._console.close()
            self._console = None

    def cleanup(self) -> None:
        self.stop()
        self._exit_stack.close()
        if self.spec is not None and self.sockdir not in (None, self.spec.workdir):
            shutil.rmtree(self.sockdir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "accel": spec.accel if spec else None,
            "ssh_port": self.ssh_port,
            "qemu": self.argv[0] if self.argv else None,
            "pid": self.proc.pid if self.proc else None,
        }

    def attach_hint(self) -> str:
        assert self.spec is not None and self.sockdir is not None
        work, sock = self.spec.workdir, self.sockdir / "console.sock"
        return (
            f"console: socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:{sock}\n"
            f"ssh:     ssh -p {self.ssh_port} rancher@127.0.0.1\n"
            f"stop:    kill {self.proc.pid if self.proc else '?'}; rm -rf {work}"
        )

