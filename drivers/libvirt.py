"""libvirt driver: transient domains defined from XML, with hardware profiles as data.

A domain starts paused (VIR_DOMAIN_START_PAUSED) so the console stream
(`virDomainOpenConsole`) is open before the first instruction: the lab's Console reads
it through a socketpair bridge fed by a thread, with the same host-monotonic timestamps
as on QEMU, and t0 is the moment of `resume`. libvirt chowns and relabels what it is
given, so it only ever gets copies and qcow2 overlays in the machine's workdir.

SSH from the host: libvirt 9 forwards ports on `<interface type='user'>` only with
passt, so the NIC is passed as QEMU arguments in the `qemu:commandline` namespace
(user-mode netdev with a hostfwd to 127.0.0.1) with the profile's NIC model.
"""

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
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from drivers.qemu import GUEST_HOST_IP
from drivers.qemu.host import QEMU_BINARY, free_port, make_overlay, probe_kernel, resolve_accel
from lab import cloudconfig, gc
from lab.driver import (
    Capabilities,
    Check,
    Driver,
    HostRoute,
    MachineSpec,
    Option,
    kernel_cmdline_args,
    lab_kernel_args,
)
from lab.errors import BootError, ConfigError, PlatformError
from lab.images import DISK, ISO, KERNEL, Image

DEFAULT_URI = "qemu:///system"
META_NS = "https://roslab.invalid/libvirt/1"  # our domain metadata namespace (a name only)
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


@dataclass(frozen=True)
class HwProfile:
    """The virtual hardware a guest sees: what a hypervisor shows it, as data."""

    nic: str  # QEMU -device model of the NIC
    disk_bus: str  # libvirt <target bus=> for the boot disk
    scsi_model: str  # libvirt <controller type='scsi' model=> ("" when no SCSI disks)
    cdrom_bus: str
    video: str  # libvirt <video><model type=>
    smbios_vendor: str = ""  # SMBIOS system manufacturer ("" = QEMU's own)
    smbios_product: str = ""
    why_not: tuple[tuple[str, str], ...] = ()  # capability -> why it is missing
    release_file: str = ""  # what that hypervisor's users boot from a release ("": the folder)


HW_PROFILES: dict[str, HwProfile] = {
    "default": HwProfile(nic="virtio-net-pci", disk_bus="virtio", scsi_model="",
                         cdrom_bus="sata", video="none"),
    "vmware": HwProfile(
        nic="vmxnet3", disk_bus="scsi", scsi_model="vmpvscsi", cdrom_bus="ide", video="vmvga",
        smbios_vendor="VMware, Inc.", smbios_product="VMware Virtual Platform",
        why_not=(("guestinfo", "QEMU does not emulate VMware's backdoor port, so "
                               "guestinfo cloud-config cannot be delivered"),),
        release_file="rancheros-vmware.iso"),
    # ESXi's older defaults; QEMU has no LSI53C1030 (mptspi): 53C895A is its LSI model
    "legacy-esxi": HwProfile(nic="e1000", disk_bus="scsi", scsi_model="lsilogic",
                             cdrom_bus="ide", video="vmvga", smbios_vendor="VMware, Inc.",
                             smbios_product="VMware Virtual Platform",
                             release_file="rancheros-vmware.iso"),
}


def hw_profile(name: str) -> HwProfile:
    if name not in HW_PROFILES:
        raise ConfigError(f"unknown hardware profile {name!r}: known are {', '.join(HW_PROFILES)}")
    return HW_PROFILES[name]


# Which QEMU devices a profile needs. Checked against the emulator's `-device help` list,
# not libvirt's domain capabilities: the NIC goes to QEMU as a raw -device argument that
# libvirt never sees, and libvirt 9's domain capabilities list no SCSI controller models;
# `-device help` names exactly what this binary can create, with or without libvirtd.
# Per field: libvirt's name -> the QEMU devices behind it (a name not listed is itself one).
_QEMU_DEVICES: tuple[tuple[str, str, dict[str, tuple[str, ...]]], ...] = (
    ("NIC", "nic", {}),
    ("disk controller", "scsi_model", {
        "vmpvscsi": ("pvscsi",), "lsilogic": ("lsi53c895a",), "lsisas1068": ("mptsas1068",),
        "lsisas1078": ("megasas",), "virtio-scsi": ("virtio-scsi-pci",)}),
    ("disk bus", "disk_bus", {"virtio": ("virtio-blk-pci",), "scsi": ("scsi-hd",),
                              "ide": ("ide-hd",), "sata": ("ich9-ahci", "ide-hd")}),
    ("CD-ROM bus", "cdrom_bus", {"scsi": ("scsi-cd",), "ide": ("ide-cd",),
                                 "sata": ("ich9-ahci", "ide-cd")}),
    ("video", "video", {"none": (), "vga": ("VGA",), "cirrus": ("cirrus-vga",),
                        "vmvga": ("vmware-svga",), "qxl": ("qxl-vga",),
                        "virtio": ("virtio-vga",), "bochs": ("bochs-display",),
                        "ramfb": ("ramfb",)}),
)


@functools.cache
def qemu_device_names(binary: str) -> frozenset[str]:
    """Every device name and alias `binary -device help` lists."""
    try:
        out = subprocess.run([binary, "-machine", "none", "-device", "help"], check=True,
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ConfigError(f"cannot list the devices of {binary}: {err}") from err
    return frozenset(re.findall(r'(?:name|alias) "([^"]+)"', out))


def profile_gaps(name: str, binary: str) -> str:
    """"" when `binary` has every device hardware profile `name` needs, else what it lacks
    (shared by prepare() and `roslab doctor`)."""
    hw, have = hw_profile(name), qemu_device_names(binary)
    gaps = []
    for role, field, qemu_names in _QEMU_DEVICES:
        value = getattr(hw, field)
        needed = qemu_names.get(value, (value,)) if value else ()
        if lacking := [d for d in needed if d not in have]:
            gaps.append(f"{role} {value!r}"
                        + ("" if lacking == [value] else f" (QEMU device {', '.join(lacking)})"))
    return (f"hardware profile {name!r} needs what {binary} does not have: {'; '.join(gaps)}"
            if gaps else "")


def emulator(conn: Any, arch: str = "x86_64", virt_type: str = "qemu") -> str:
    """The QEMU binary libvirt runs for `arch` domains (what its domain capabilities name)."""
    import libvirt

    try:
        caps = ET.fromstring(conn.getDomainCapabilities(None, arch, None, virt_type, 0))
    except libvirt.libvirtError as err:
        raise ConfigError(f"libvirt names no QEMU for {arch} ({virt_type}) domains: "
                          f"{err.get_error_message()}") from err
    return caps.findtext("path") or QEMU_BINARY[arch]


def connect(uri: str) -> Any:
    """An open libvirt connection, or a ConfigError naming the URI and libvirt's reason."""
    try:
        import libvirt
    except ImportError as err:
        raise ConfigError("libvirt-python is not installed: run ./setup") from err
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise ConfigError(f"cannot reach libvirt at {uri}: {err.get_error_message()} "
                          f"(is libvirtd running? see docs/platforms/libvirt.md)") from err


START_DAEMON = ("systemctl start libvirtd (without systemd, as root: virtlogd -d && "
                "libvirtd -d)")


def doctor_checks(uri: str) -> list[tuple[bool, str, str]]:
    """`roslab doctor`'s libvirt lines: (ok, what, how to fix) for libvirt-python, the URI,
    and each hardware profile against the QEMU libvirt runs (else the one on PATH)."""
    binary = shutil.which(QEMU_BINARY["x86_64"]) or QEMU_BINARY["x86_64"]
    try:
        import libvirt  # noqa: F401 -- importable is the check
    except ImportError as err:
        checks = [(False, f"libvirt-python: {err}",
                   "apt-get install gcc pkg-config libvirt-dev python3-dev, then "
                   ".venv/bin/pip install libvirt-python (./setup does both)")]
        conn = None
    else:
        checks = [(True, "libvirt-python importable", "")]
        try:
            conn = connect(uri)
        except ConfigError as err:
            checks.append((False, str(err), START_DAEMON))
            conn = None
    if conn is not None:
        try:
            binary = emulator(conn)
            major, minor = divmod(conn.getLibVersion() // 1000, 1000)
            checks.append((True, f"libvirt {major}.{minor} at {uri} (runs {binary})", ""))
        except ConfigError as err:
            checks.append((False, str(err), "apt-get install libvirt-daemon-driver-qemu"))
        finally:
            conn.close()
    for name in HW_PROFILES:
        try:
            gaps = profile_gaps(name, binary)
        except ConfigError as err:
            gaps = str(err)
        checks.append((not gaps, gaps or f"hardware profile {name}: {binary} has its devices",
                       "use another --hw, or a QEMU that has them (apt-get install "
                       "qemu-system-x86)"))
    return checks


def domain_xml(name: str, spec: MachineSpec, hw: HwProfile, media: dict[str, Any],
               ssh_port: int, serial_log: str, marks: dict[str, str]) -> str:
    """The transient domain for `spec` on `hw`. media: kernel/initrd/cmdline/disk/cdrom/drives."""
    dom = ET.Element("domain", type="kvm" if spec.accel == "kvm" else "qemu")
    ET.SubElement(dom, "name").text = name
    meta = ET.SubElement(ET.SubElement(dom, "metadata"), f"{{{META_NS}}}owner",
                         created=str(int(time.time())))  # for gc --older-than
    for key, value in marks.items():
        ET.SubElement(meta, f"{{{META_NS}}}mark", key=key).text = value
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mb)
    ET.SubElement(dom, "vcpu").text = str(spec.cpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch=spec.arch, machine="pc").text = "hvm"
    if media.get("kernel"):
        ET.SubElement(os_el, "kernel").text = media["kernel"]
        ET.SubElement(os_el, "initrd").text = media["initrd"]
        if media.get("cmdline"):
            ET.SubElement(os_el, "cmdline").text = media["cmdline"]
    else:
        ET.SubElement(os_el, "boot", dev="cdrom" if media.get("cdrom") else "hd")
    if hw.smbios_vendor:
        ET.SubElement(os_el, "smbios", mode="sysinfo")
        sysinfo = ET.SubElement(dom, "sysinfo", type="smbios")
        system = ET.SubElement(sysinfo, "system")
        ET.SubElement(system, "entry", name="manufacturer").text = hw.smbios_vendor
        ET.SubElement(system, "entry", name="product").text = hw.smbios_product
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")  # without it the kernel finds no RSDP (PLATFORM-NOTES)
    ET.SubElement(features, "apic")
    ET.SubElement(dom, "on_reboot").text = "destroy"  # like QEMU's -no-reboot
    dev = ET.SubElement(dom, "devices")
    if hw.scsi_model:
        ET.SubElement(dev, "controller", type="scsi", index="0", model=hw.scsi_model)
    slots: dict[str, int] = {}  # per bus: the next letter (and SCSI target)
    if media.get("disk"):
        _disk(dev, "disk", media["disk"], "qcow2", hw.disk_bus, slots, readonly=False)
    if media.get("cdrom"):
        _disk(dev, "cdrom", media["cdrom"], "raw", hw.cdrom_bus, slots, readonly=True)
    for drive in media.get("drives", []):  # config drives ride on the profile's disk bus
        _disk(dev, "disk", drive, "raw", hw.disk_bus, slots, readonly=True)
    serial = ET.SubElement(dev, "serial", type="pty")
    ET.SubElement(serial, "log", file=serial_log, append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(ET.SubElement(dev, "console", type="pty"), "target", type="serial", port="0")
    ET.SubElement(dev, "rng", model="virtio").append(_backend())
    ET.SubElement(ET.SubElement(dev, "video"), "model", type=hw.video)
    ET.SubElement(dev, "memballoon", model="none")
    cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    for arg in ("-netdev", f"user,id=roslabnet0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
                # a fixed slot: libvirt assigns the others and does not know this device
                "-device", f"{hw.nic},netdev=roslabnet0,romfile=,bus=pci.0,addr=0x10"):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    if media.get("readconfig"):  # the kernel command line (lab.driver.kernel_cmdline_args)
        for arg in ("-readconfig", media["readconfig"]):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("roslab", META_NS)
    return ET.tostring(dom, encoding="unicode")


def _readable_by_qemu(conn: Any, path: Path) -> None:
    """Give the file (mode 0600) to the user libvirt runs QEMU as (its DAC base label,
    e.g. libvirt-qemu): libvirt relabels only the files its XML names, not a -readconfig."""
    found = re.search(r"<baselabel type='(?:qemu|kvm)'>\+?(\d+):\+?(\d+)</baselabel>",
                      conn.getCapabilities())
    if found and os.geteuid() == 0:
        os.chown(path, int(found.group(1)), int(found.group(2)))


def _backend() -> ET.Element:
    el = ET.Element("backend", model="random")
    el.text = "/dev/urandom"
    return el


def _disk(dev: ET.Element, device: str, path: str, fmt: str, bus: str, slots: dict[str, int],
          readonly: bool) -> None:
    prefix = {"virtio": "vd", "ide": "hd"}.get(bus, "sd")
    index = slots[prefix] = slots.get(prefix, -1) + 1
    disk = ET.SubElement(dev, "disk", type="file", device=device)
    ET.SubElement(disk, "driver", name="qemu", type=fmt)
    ET.SubElement(disk, "source", file=path)
    ET.SubElement(disk, "target", dev=f"{prefix}{'abcdefgh'[index]}", bus=bus)
    if bus == "scsi":  # one target per disk, LUN 0: libvirt's default puts sdb at LUN 1,
        # which pvscsi refuses ("bad scsi device lun")
        ET.SubElement(disk, "address", type="drive", controller="0", bus="0",
                      target=str(index), unit="0")
    if readonly:
        ET.SubElement(disk, "readonly")


def domain_marks(dom: Any) -> tuple[dict[str, str], float | None]:
    """The ownership marks in a domain's metadata ({} when it is not ours), and when it
    was created."""
    import libvirt

    try:
        owner = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, META_NS))
    except libvirt.libvirtError:
        return {}, None
    created = owner.get("created")
    return ({m.get("key", ""): m.text or "" for m in owner.iter("mark")},
            float(created) if created and created.isdigit() else None)


class _ConsoleBridge:
    """A libvirt console stream as a socket: the lab's Console reads `harness` side."""

    def __init__(self, conn: Any, dom: Any) -> None:
        import libvirt

        self.stream = conn.newStream(0)
        dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self.harness, self._ours = socket.socketpair()
        self._threads = [threading.Thread(target=f, daemon=True, name=f"libvirt-console-{n}")
                         for n, f in (("out", self._pump_out), ("in", self._pump_in))]
        for t in self._threads:
            t.start()

    def _pump_out(self) -> None:  # guest -> harness
        with contextlib.suppress(Exception):
            while True:
                data = self.stream.recv(65536)
                if not data or not isinstance(data, bytes):
                    break
                self._ours.sendall(data)
        with contextlib.suppress(OSError):
            self._ours.shutdown(socket.SHUT_WR)

    def _pump_in(self) -> None:  # harness -> guest
        with contextlib.suppress(Exception):
            while data := self._ours.recv(4096):
                self.stream.send(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.abort()
        for sock in (self._ours, self.harness):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for t in self._threads:
            t.join(5)


class LibvirtDriver(Driver):
    name = "libvirt"
    runs_on_host = True  # qemu:///system on this host
    leaves_garbage = True  # domains
    artifacts = ("serial.raw",)  # libvirt's log of the serial port
    # the daemons (the lab starts none on a user's host): systemd where the runner has it,
    # else by hand, as in a GitLab job's container
    ci_setup = "systemctl start virtlogd libvirtd || { virtlogd -d && libvirtd -d; }"
    options = (
        Option("--hw", "the hardware profile: default (virtio), vmware, legacy-esxi"),
        Option("--libvirt-uri", f"the connection (default {DEFAULT_URI})", metavar="URI"),
    )

    @classmethod
    def host_address_for_guest(cls, datasource: str, options: dict[str, Any]) -> HostRoute:
        """Its domains' NIC is QEMU user-mode networking too (domain_xml): the host's
        loopback is 10.0.2.2 to the guest."""
        return HostRoute("127.0.0.1", GUEST_HOST_IP)

    @classmethod
    def doctor(cls, options: dict[str, Any], arch: str) -> list[Check]:
        return [Check(*c) for c in doctor_checks(options.get("libvirt_uri") or DEFAULT_URI)]
    capabilities: ClassVar[Capabilities] = Capabilities(
        arches=("x86_64",), console=True, ssh=True, power_button=True,
        snapshot=False, datasources=("configdrive", "nocloud", "cmdline"),
        image_kinds=(KERNEL, ISO, DISK), board="pc",
        why_not={"snapshot": "libvirt save/restore is not wired up yet"},
    )

    def __init__(self) -> None:
        self.spec: MachineSpec | None = None
        self.conn: Any = None
        self.dom: Any = None
        self.hw = HW_PROFILES["default"]
        self.uri = DEFAULT_URI
        self.ssh_port = 0
        self.xml = ""
        self._media: dict[str, Any] = {}
        self._bridge: _ConsoleBridge | None = None
        self._last_state = ""

    @classmethod
    def reference_artifact(cls, options: dict[str, Any]) -> str | None:
        return hw_profile(options.get("hw") or "default").release_file or None

    @classmethod
    def most_cpus(cls, arch: str, accel: str) -> tuple[int, str] | None:
        # QEMU's driver runs x86 TCG single-threaded (drivers/qemu/__init__.py says why); libvirt 9
        # has no domain setting for that, and an -accel passed through qemu:commandline
        # comes after libvirt's own, which QEMU takes
        if arch == "x86_64" and accel == "tcg":
            return 1, ("libvirt runs an x86 guest under TCG with a host thread per vCPU, and "
                       "multi-threaded TCG can hang an x86 guest that patches its own kernel")
        return None

    def resolve_accel(self, requested: str, image: Image, scratch: Path) -> tuple[str, str]:
        with probe_kernel(image, scratch) as kernel:
            return resolve_accel(requested, image.arch or "x86_64", kernel)

    def prepare(self, spec: MachineSpec) -> None:
        opts = spec.options
        hw_name = opts.get("hw") or "default"
        self.hw = hw_profile(hw_name)
        self.uri = opts.get("libvirt_uri") or DEFAULT_URI
        self.conn = connect(self.uri)  # unreachable: a clear error before anything is made
        binary = emulator(self.conn, spec.arch, "kvm" if spec.accel == "kvm" else "qemu")
        if gaps := profile_gaps(hw_name, binary):
            raise ConfigError(gaps)  # before any file is copied or domain defined
        if (most := self.most_cpus(spec.arch, spec.accel)) and spec.cpus > most[0]:
            raise ConfigError(f"{spec.cpus} vCPUs asked for, but {most[1]}: use --cpus "
                              f"{most[0]} (make_machine(cpus={most[0]})), or KVM")
        self.spec = spec
        spec.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(spec.workdir, 0o711)  # QEMU runs as libvirt-qemu: it must reach its files
        for parent in spec.workdir.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise ConfigError(f"{parent} is closed to other users, so libvirt's QEMU "
                                  f"(user libvirt-qemu) cannot reach {spec.workdir}: run from "
                                  f"a folder others may traverse (chmod o+x), e.g. under /tmp")
        self._media = self._boot_media(spec)
        ds = self._deliver(spec)
        if spec.image.kind == KERNEL:
            args = ["console=ttyS0,115200n8", "rancher.autologin=ttyS0",
                    *lab_kernel_args(spec, ds or None, self._media.pop("cmdline_cc", []))]
            cloudconfig.check_cmdline(args)
            # by a file QEMU reads, as on the qemu platform: the console password is not
            # for `ps` nor for the domain's XML
            how, what = kernel_cmdline_args(args, spec.workdir / "kernel.cfg")
            if how == "-readconfig":
                _readable_by_qemu(self.conn, Path(what))
                self._media["readconfig"] = what
            else:
                self._media["cmdline"] = what

    def _boot_media(self, spec: MachineSpec) -> dict[str, Any]:
        """Copies and overlays in the workdir: libvirt chowns what it is given."""
        image, work = spec.image, spec.workdir
        if image.kind == KERNEL:
            assert image.kernel is not None and image.initrd is not None
            return {"kernel": _copy(image.kernel, work / "vmlinuz"),
                    "initrd": _copy(image.initrd, work / "initrd")}
        if image.kind == ISO:
            return {"cdrom": _copy(image.path, work / "boot.iso")}
        fmt = image.disk_format or "raw"
        base = Path(_copy(image.path, work / f"base.{fmt}"))
        return {"disk": str(make_overlay(work, base, fmt))}

    def _deliver(self, spec: MachineSpec) -> str:
        """Config drive or kernel cmdline; returns the datasource for the kernel cmdline."""
        cc, ds = spec.cloud_config, spec.datasource
        if cc is None or ds == "none":
            return ""
        if ds == "cmdline":
            self._media["cmdline_cc"] = cloudconfig.cmdline_args(cc)
            return "cmdline"
        kind = "config-2" if ds == "configdrive" else "cidata"
        iso = cloudconfig.config_drive(cc, spec.workdir / f"{kind}.iso", kind, spec.name)
        self._media.setdefault("drives", []).append(str(iso))
        return "configdrive:/media/config-2" if ds == "configdrive" else "nocloud"

    def start(self) -> float:
        import libvirt

        assert self.spec is not None and self.conn is not None, "prepare() first"
        self.ssh_port = free_port()
        self.xml = domain_xml(self.spec.name, self.spec, self.hw, self._media, self.ssh_port,
                              str(self.spec.workdir / "serial.raw"), gc.owner_marks())
        (self.spec.workdir / "domain.xml").write_text(self.xml)
        try:
            self.dom = self.conn.createXML(self.xml, libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as err:
            raise BootError("libvirt refused the domain", expected="libvirt to create it",
                            last_lines=[err.get_error_message()]) from err
        try:
            self._bridge = _ConsoleBridge(self.conn, self.dom)
            self.dom.resume()
        except BaseException:
            self.stop()
            raise
        return time.monotonic()

    def console_stream(self) -> socket.socket:
        assert self._bridge is not None, "start() first"
        return self._bridge.harness

    def ssh_endpoint(self) -> tuple[str, int]:
        return "127.0.0.1", self.ssh_port

    def power_button(self) -> None:
        import libvirt

        self.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def alive(self) -> bool:
        import libvirt

        if self.dom is None:
            return False
        try:
            return bool(self.dom.isActive())
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # transient: gone = not alive
                self._last_state = err.get_error_message()
                return False
            # libvirtd not answering says nothing about the guest: not "dead"
            raise PlatformError(f"libvirt could not say whether domain "
                                f"{self.spec.name if self.spec else '?'} runs: "
                                f"{err.get_error_message()}") from err

    def exit_reason(self) -> str:
        try:
            if self.dom is None or self.alive():
                return ""
        except PlatformError as exc:
            return str(exc)
        return f"libvirt domain {self.spec.name if self.spec else '?'} is gone" + (
            f" ({self._last_state})" if self._last_state else " (shut off or destroyed)")

    def stop(self, timeout: float = 10.0) -> None:
        import libvirt

        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        if self.dom is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self.dom.destroy()
            self.dom = None

    def cleanup(self) -> None:
        self.stop()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def info(self) -> dict[str, Any]:
        hw = next(k for k, v in HW_PROFILES.items() if v is self.hw)
        # the board is the hardware the guest sees: history and reports group by it
        return {"uri": self.uri, "hw": hw, "board": "pc" if hw == "default" else hw,
                "ssh_port": self.ssh_port, "accel": self.spec.accel if self.spec else None}

    def attach_hint(self) -> str:
        name = self.spec.name if self.spec else "?"
        return (f"console: virsh -c {self.uri} console {name}\n"
                f"ssh:     ssh -p {self.ssh_port} rancher@127.0.0.1\n"
                f"stop:    virsh -c {self.uri} destroy {name}")

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[gc.Garbage]:
        """Our domains (by metadata marks) that expired; destroying a transient one removes
        it, and its files (the workdir holding its disks) go with it."""
        conn = connect(options.get("libvirt_uri") or DEFAULT_URI)
        found = []
        try:
            for dom in conn.listAllDomains():
                marks, created = domain_marks(dom)
                why = gc.is_garbage(marks, created, older_than)
                if why is None:
                    continue
                found.append(gc.Garbage("domain", dom.name(), marks.get(gc.RUN_KEY, "?"), why))
                if not dry_run:
                    files = _domain_dirs(dom.XMLDesc(0))
                    with contextlib.suppress(Exception):
                        dom.destroy()
                    with contextlib.suppress(Exception):
                        dom.undefine()
                    for d in files:
                        if os.path.basename(d).startswith(dom.name()):
                            shutil.rmtree(d, ignore_errors=True)
        finally:
            conn.close()
        return found


def _domain_dirs(xml: str) -> set[str]:
    """The folders of a domain's files: disks, kernel, initrd and the console log."""
    root = ET.fromstring(xml)
    paths = [el.get("file", "") for el in root.iter() if el.tag in ("source", "log")]
    paths += [el.text or "" for el in root.iter() if el.tag in ("kernel", "initrd")]
    return {os.path.dirname(p) for p in paths if p}


def _copy(src: Any, dst: Any) -> str:
    shutil.copyfile(src, dst)
    return str(dst)

