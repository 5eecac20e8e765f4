"""labgrid driver: a physical box on a labgrid farm (labgrid 26's Python API).

    --platform labgrid --place NAME [--labgrid-coordinator HOST:PORT] [--wait-place SECONDS]
    --platform labgrid --labgrid-env FILE [--labgrid-role NAME]

The place is acquired at `prepare()` for the run and released by `cleanup()`, which the
machine runs on every exit path (a failure, Ctrl-C, SIGTERM). Everything that can be
wrong is found before power-on: the coordinator, the place (unknown, or held: the holder
is named; `wait_place` waits for it), the BMC (unreachable, wrong password), the console
port (refused), the netboot port.

The console is labgrid's SerialDriver (ser2net RFC 2217 or raw TCP, or a local tty)
bridged into a socketpair, so the lab's Console stamps, watches and logs it exactly as
on QEMU. Power is the place's power driver: labgrid's own (NetworkPowerDriver for its PDU
backends, ExternalPowerDriver, relays...) or IPMIPowerDriver (drivers/labgrid/parts.py).
Boot: iPXE netboot from the lab's HTTP server (drivers/labgrid/netboot.py) with the release's
`rancheros.ipxe`; the place's tags say where the server listens (`netboot_listen`) and
the URL the box reaches it at (`netboot_url`), and name the `board`. A place tagged
`boot=disk` boots what is installed on its disk instead (no netboot, no run cloud-config).
A place with an SD card resource (a USB mass storage or an SD mux) boots a Pi release zip:
the card image (a copy, with the run's kernel arguments in cmdline.txt) is written to the
card through labgrid's USBStorageDriver before power-on.
A held place carries holder tags that `roslab gc --platform labgrid` reads once its run
is dead (labgrid has no lease).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from drivers.labgrid.netboot import SCRIPT, NetbootServer, ipxe_script
from drivers.labgrid.place import (
    DEFAULT_COORDINATOR,
    HOLDER_TAG,
    RUN_TAG,
    Session,
    check_options,
    coordinator_address,
    env_coordinator,
    env_remote_place,
    env_target_config,
    import_labgrid,
    place_facts,
)
from lab import cloudconfig, gc, sdcard
from lab import timeline as tl
from lab.driver import Capabilities, Check, Driver, MachineSpec, Option, lab_kernel_args
from lab.errors import ConfigError, ImageError, PlatformError
from lab.images import DISK, KERNEL, SDCARD, Image
from lab.redact import redact

# power-on to the box's last netboot request (boot.ipxe, kernel, initrd, user-data); a place
# option netboot_window=SECONDS changes it. Outside it the netboot server answers no one.
NETBOOT_WINDOW = 900.0
SERIAL_RESOURCES = ("NetworkSerialPort", "USBSerialPort", "RawSerialPort", "SerialPort")
POWER_DRIVERS = {  # resource -> labgrid power driver that drives it
    "IPMIPowerPort": "IPMIPowerDriver", "NetworkPowerPort": "NetworkPowerDriver",
    "PDUDaemonPort": "PDUDaemonDriver", "YKUSHPowerPort": "YKUSHPowerDriver",
    "USBPowerPort": "USBPowerDriver", "SiSPMPowerPort": "SiSPMPowerDriver",
}
# resources labgrid's USBStorageDriver writes: the box boots the SD card the lab writes
STORAGE_RESOURCES = ("NetworkUSBMassStorage", "USBMassStorage", "USBSDMuxDevice",
                     "NetworkUSBSDMuxDevice", "USBSDWireDevice", "NetworkUSBSDWireDevice")
SD_MUXES = {"USBSDMuxDevice": "USBSDMuxDriver", "NetworkUSBSDMuxDevice": "USBSDMuxDriver",
            "USBSDWireDevice": "USBSDWireDriver", "NetworkUSBSDWireDevice": "USBSDWireDriver"}
BOOT_DISK = "disk"  # place tag boot=disk: the box boots what is installed on its disk
WHY_NO_CLOUD_CONFIG_FROM_DISK = (
    "a box booting its own disk reads only the cloud-config installed on it (its state "
    "partition, and the datasources baked into the disk's kernel command line), never the "
    "run's")
WHY_NO_SSH_FROM_DISK = (f"{WHY_NO_CLOUD_CONFIG_FROM_DISK}, so the lab's SSH key is not on "
                        "it: the lab works through its console")
WHY_NO_POWER_BUTTON = ("the lab presses no power button on a box: IPMI `chassis power soft` "
                       "is not wired up (ipmi_sim's does nothing), and PDUs have none")


def capabilities_of(classes: set[str], tags: dict[str, str]) -> Capabilities:
    serial = bool(classes & set(SERIAL_RESOURCES))
    ssh = "NetworkService" in classes
    from_disk = tags.get("boot") == BOOT_DISK
    sd_card = bool(classes & set(STORAGE_RESOURCES)) and not from_disk
    netboot = bool(tags.get("netboot_url")) and not from_disk and not sd_card
    arch = tags.get("arch", "x86_64")
    why = {"power_button": WHY_NO_POWER_BUTTON}
    if from_disk:  # no cloud-config of the run reaches it, so neither does the lab's key
        ssh = False
        why["ssh"] = why["network"] = WHY_NO_SSH_FROM_DISK
        why["datasources"] = WHY_NO_CLOUD_CONFIG_FROM_DISK
    elif not ssh:
        why["ssh"] = why["network"] = ("the place has no NetworkService resource (the box's "
                                       "SSH address), so the lab cannot reach it")
    if not serial:
        why["console"] = "the place has no serial port resource"
    kinds = (DISK,) if from_disk else (SDCARD,) if sd_card else (KERNEL,) if netboot else ()
    # an SD-booted box gets the run's cloud-config in the cmdline.txt the lab writes
    datasources = ("url",) if netboot else ("cmdline",) if sd_card else ()
    return Capabilities(
        arches=(arch,), console=serial, ssh=ssh, power_button=False, snapshot=False,
        datasources=datasources, image_kinds=kinds, network=ssh,
        board=tags.get("board", "box"), why_not=why,
        # the place's `slowdown` tag: how much slower than a pc guest the box boots
        slowdown=float(tags.get("slowdown") or 1.0))


class LabgridDriver(Driver):
    name = "labgrid"
    capabilities: ClassVar[Capabilities] = Capabilities(
        arches=("x86_64", "aarch64"), console=True, ssh=True, power_button=False,
        snapshot=False, datasources=("url",), image_kinds=(KERNEL,), board="box",
        why_not={"power_button": WHY_NO_POWER_BUTTON})
    leaves_garbage = True  # held places
    options = (
        Option("--place", "the place (box) to run on"),
        Option("--labgrid-coordinator", f"the coordinator (default LG_COORDINATOR or "
               f"{DEFAULT_COORDINATOR})", metavar="HOST:PORT"),
        Option("--labgrid-env", "an environment file instead of --place (a box wired to "
               "this host, or a RemotePlace)", metavar="FILE"),
        Option("--labgrid-role", "the env file's target (main)"),
        Option("--wait-place", "wait this long for a place someone else holds (default: "
               "refuse)", metavar="SECONDS"),
    )

    @classmethod
    def doctor(cls, options: dict[str, Any], arch: str) -> list[Check]:
        return doctor_checks(options)

    # the place looked up by not_ready(); capabilities_for answers from it
    _facts: ClassVar[dict[str, Capabilities]] = {}

    @classmethod
    def not_ready(cls, options: dict[str, Any]) -> str | None:
        """Why a run on this place cannot start (before any test): labgrid missing, no
        place given, coordinator down, place unknown. A held place is waited for later."""
        try:
            classes, tags = place_facts(options)
        except (ConfigError, PlatformError) as exc:
            return str(exc)
        caps = capabilities_of(classes, tags)
        cls._facts["current"] = caps
        if not caps.console:
            return (f"the box ({options.get('place') or options.get('labgrid_env')}) has no "
                    f"serial port resource: the lab drives boxes through their console")
        return None

    @classmethod
    def capabilities_for(cls, image: Image, arch: str) -> Capabilities:
        return cls._facts.get("current", cls.capabilities)

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[gc.Garbage]:
        """Places held by this host/user for a roslab run whose process is dead (SIGKILL):
        released. Never a live run's, a place someone else holds, or one held without
        roslab's marks (a person's `labgrid-client acquire`), whatever `older_than` says:
        the holder's life decides, not the age."""
        import_labgrid()
        session = Session(coordinator_address(options))
        found = []
        try:
            session.sync()
            for name, place in sorted(session.session.places.items()):
                token = place.tags.get(HOLDER_TAG, "")
                if token and not place.acquired and not dry_run:
                    # released by hand after its run died: a stale mark must not make a
                    # later `labgrid-client acquire` of this host/user look like roslab's
                    session.mark(name, {HOLDER_TAG: "", RUN_TAG: ""})
                if not token or place.acquired != session.me or gc.holder_alive(token):
                    continue
                run = place.tags.get(RUN_TAG, "?")
                found.append(gc.Garbage("place", name, run, f"held by {place.acquired} for "
                                        f"roslab process {token.split('_')[0]}, now dead"))
                if not dry_run:
                    session.release(name)
        finally:
            session.close()
        return found

    def __init__(self) -> None:
        self.spec: MachineSpec | None = None
        self.options: dict[str, Any] = {}
        self._session: Session | None = None
        self._place = ""
        self._held = False
        self.target: Any = None
        self.power: Any = None
        self.serial: Any = None
        self.strategy: Any = None
        self.netboot: NetbootServer | None = None
        self._ssh: tuple[str, int] = ("", 22)
        self._lab_end: socket.socket | None = None
        self._box_end: socket.socket | None = None
        self._pumps: list[threading.Thread] = []
        self._stop = threading.Event()
        self._timeline: tl.Timeline | None = None
        self._early: dict[str, float] = {}
        self._powered = False
        self.tags: dict[str, str] = {}
        self._console_error = ""  # why a write to the box's console failed

    # prepare ------------------------------------------------------------------------------

    def exclusive_resource(self, spec: MachineSpec) -> str | None:
        box = spec.options.get("place") or spec.options.get("labgrid_env")
        return f"the labgrid box {box}"

    def prepare(self, spec: MachineSpec) -> None:
        import_labgrid()
        self.spec = spec
        self.options = check_options(spec.options)
        spec.workdir.mkdir(parents=True, exist_ok=True)
        self.target = self._acquire_target()
        self._bind_drivers()
        # the BMC and the console port are checked here, before anything is powered
        self.strategy.transition("off")
        self._open_console()
        storage = [r for r in self.target.resources if type(r).__name__ in STORAGE_RESOURCES]
        if spec.image.kind == SDCARD:
            self._write_card(spec, storage)
        elif self.tags.get("boot") != BOOT_DISK:
            self._serve_netboot(spec)

    def _acquire_target(self) -> Any:
        from labgrid.remote.client import find_role_by_place
        from labgrid.resource.remote import RemotePlaceManager
        from labgrid.target import Target

        env_path = self.options.get("labgrid_env")
        env = None
        if env_path:
            from labgrid.environment import Environment

            config = env_target_config(self.options)
            env = Environment(str(env_path))
            self.tags = dict(config.get("tags") or {})
            self._place = self.options.get("place") or env_remote_place(config)
            if not self._place:  # a box wired to this host: no coordinator, no lock
                return env.get_target(self.options.get("labgrid_role") or "main")
        else:
            self._place = self.options["place"]
        coordinator = env_coordinator(self.options) if env is not None \
            else coordinator_address(self.options)
        self._session = Session(coordinator)
        self._session.place(self._place)
        self._session.acquire(self._place, float(self.options.get("wait_place") or 0))
        self._held = True
        self._session.sync()
        place = self._session.place(self._place)
        self.tags = {**dict(place.tags), **self.tags}
        # labgrid's RemotePlace resources use the manager's session: ours
        manager = RemotePlaceManager.get()
        manager.session, manager.loop = self._session.session, self._session.loop
        if env is not None:
            role = self.options.get("labgrid_role") or find_role_by_place(
                env.config.get_targets(), self._place) or "main"
            return env.get_target(role)
        target = Target(self._place, env=None)
        from labgrid.resource.remote import RemotePlace

        RemotePlace(target, name=self._place)
        return target

    def _bind_drivers(self) -> None:
        from labgrid.driver import SerialDriver
        from labgrid.factory import target_factory
        from labgrid.protocol import PowerProtocol

        target = self.target
        resources = {type(r).__name__: r for r in target.resources}
        self.serial = self._existing(target, "SerialDriver")
        if self.serial is None:
            if not set(resources) & set(SERIAL_RESOURCES):
                raise ConfigError(f"place {self._place or target.name} has no serial port "
                                  f"resource ({', '.join(sorted(resources))})")
            self.serial = SerialDriver(target, "console")
        self.power = self._existing(target, PowerProtocol)
        if self.power is None:
            kind = next((r for r in resources if r in POWER_DRIVERS), None)
            if kind is None:
                raise ConfigError(f"place {self._place or target.name} has no power resource "
                                  f"the lab can drive ({', '.join(sorted(resources))})")
            target_factory.make_driver(target, POWER_DRIVERS[kind], "power", {})
            self.power = target.get_driver(PowerProtocol)
        self.strategy = self._existing(target, "RancherOSStrategy")
        if self.strategy is None:
            self.strategy = target_factory.make_driver(target, "RancherOSStrategy",
                                                       "rancheros", {})
        if "NetworkService" in resources:
            service = resources["NetworkService"]
            self._ssh = (service.address, int(service.port))

    @staticmethod
    def _existing(target: Any, cls: Any) -> Any:
        from labgrid.exceptions import NoDriverFoundError

        try:
            return target.get_driver(cls, activate=False)
        except NoDriverFoundError:
            return None

    def _open_console(self) -> None:
        """Activate labgrid's serial driver and bridge it to a socketpair for lab.console."""
        port = getattr(self.serial, "port", None)
        where = f"{getattr(port, 'host', '')}:{getattr(port, 'port', '')}"
        try:
            self.target.activate(self.serial)
        except Exception as exc:
            raise PlatformError(f"the console port {where} of place {self._place} refused the "
                                f"lab ({type(exc).__name__}: {exc}): is ser2net running "
                                f"there?") from None
        self._lab_end, self._box_end = socket.socketpair()
        self._pumps = [threading.Thread(target=f, name=f"roslab-labgrid-{n}", daemon=True)
                       for n, f in (("rx", self._from_box), ("tx", self._to_box))]
        for pump in self._pumps:
            pump.start()

    def _from_box(self) -> None:
        from labgrid.driver.exception import ExecutionError
        from pexpect import TIMEOUT

        assert self._box_end is not None
        while not self._stop.is_set():
            try:
                # _read, not the @step-wrapped read: labgrid's step stack is one global
                # list, and a pump thread pushing onto it while the main thread powers
                # off breaks its bookkeeping (an AssertionError in labgrid.step)
                data = self.serial._read(size=1, timeout=0.2, max_size=65536)
            except TIMEOUT:
                continue
            except (OSError, ExecutionError, AttributeError):
                break
            try:
                self._box_end.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            self._box_end.shutdown(socket.SHUT_WR)

    def _to_box(self) -> None:
        assert self._box_end is not None
        while not self._stop.is_set():
            try:
                data = self._box_end.recv(4096)
            except OSError:
                return
            if not data:
                return
            try:
                self.serial._write(data)  # see _from_box
            except Exception as exc:
                # a keystroke lost is a console gone: close the lab's stream, so that its
                # Console fails (EOF, then a failed write) with this as the exit reason
                self._console_error = (f"could not write to the console of place "
                                       f"{self._place}: {type(exc).__name__}: {exc}")
                with contextlib.suppress(OSError):
                    self._box_end.shutdown(socket.SHUT_RDWR)
                return

    def _serve_netboot(self, spec: MachineSpec) -> None:
        image = spec.image
        script = (image.path / "rancheros.ipxe") if image.path.is_dir() else None
        if script is None or not script.is_file():
            raise ImageError(f"{image.path} has no rancheros.ipxe: netbooting a box needs a "
                             "RancherOS release folder (vmlinuz, initrd, rancheros.ipxe)")
        listen, url = self.tags.get("netboot_listen"), self.tags.get("netboot_url")
        listen = self.options.get("netboot_listen") or listen
        url = (self.options.get("netboot_url") or url or "").rstrip("/")
        if not listen or not url:
            raise ConfigError(f"place {self._place}: no netboot_listen/netboot_url tags (where "
                              f"the lab serves boot.ipxe and how the box's iPXE reaches it)")
        files: dict[str, Path | bytes] = {"vmlinuz": image.kernel, "initrd": image.initrd}
        datasource = ""  # no cloud-config for this run: no datasource to read
        if spec.cloud_config is not None and spec.datasource == "url":
            files["user-data"] = spec.cloud_config.text.encode()
            datasource = f"url:{url}/user-data"
        args = lab_kernel_args(spec, datasource)
        text = ipxe_script(script.read_text(), url, args)
        files[SCRIPT] = text.encode()
        (spec.workdir / "boot.ipxe").write_text(redact(text))  # evidence
        client = self.options.get("netboot_client") or self.tags.get("netboot_client")
        if not client:
            raise ConfigError(f"place {self._place}: no netboot_client tag (the box's address "
                              f"as the netboot server sees it: boot.ipxe holds the console "
                              f"password, so the server answers the box only)")
        self.netboot = NetbootServer(listen, files, self._milestone,
                                     {c.strip() for c in str(client).split(",") if c.strip()})

    def _write_card(self, spec: MachineSpec, storage: list[Any]) -> None:
        """Write the Pi release's card to the box's SD card through labgrid's
        USBStorageDriver (and its SD mux, switched to the host and back), before power-on.
        What is written is a copy with the run's arguments in cmdline.txt, as the lab
        passes them on QEMU: the user's zip is only read."""
        from labgrid.driver import USBStorageDriver
        from labgrid.factory import target_factory

        if not storage:
            raise ConfigError(f"place {self._place} has no SD card resource (one of "
                              f"{', '.join(STORAGE_RESOURCES)}): it cannot boot the Pi image "
                              f"{spec.image.path}")
        image = spec.image
        assert image.card is not None
        by_cmdline = spec.cloud_config is not None and spec.datasource == "cmdline"
        args = [*image.cmdline.split(), *lab_kernel_args(
            spec, "cmdline" if by_cmdline else None,
            cloudconfig.cmdline_args(spec.cloud_config) if by_cmdline else ())]
        cloudconfig.check_cmdline(args)
        card = spec.workdir / "sdcard.img"
        shutil.copyfile(image.card, card)
        sdcard.write_boot_file(card, "cmdline.txt", " ".join(args) + "\n")
        (spec.workdir / "cmdline.txt").write_text(redact(" ".join(args)) + "\n")  # evidence
        kind = type(storage[0]).__name__
        mux = None
        if kind in SD_MUXES:
            mux = target_factory.make_driver(self.target, SD_MUXES[kind], "sdmux", {})
        writer = self._existing(self.target, "USBStorageDriver") or USBStorageDriver(
            self.target, "sdcard")
        where = f"{getattr(storage[0], 'host', 'this host')}:{storage[0].path}"
        try:
            if mux is not None:
                self.target.activate(mux)
                mux.set_mode("host")
            self.target.activate(writer)
            # dd's progress, which labgrid prints, goes to the run's folder
            with (spec.workdir / "sdcard-write.log").open("w") as log, \
                    contextlib.redirect_stdout(log):
                writer.write_image(str(card))
            if mux is not None:
                mux.set_mode("dut")
        except Exception as exc:
            raise PlatformError(
                f"writing the SD card {where} of place {self._place} failed "
                f"({type(exc).__name__}: {str(exc).strip()[-400:]}): labgrid writes it with dd "
                f"over SSH to the exporter host, so `ssh {getattr(storage[0], 'host', '')}` "
                f"must log in without a password") from None
        finally:
            with contextlib.suppress(Exception):
                self.target.deactivate(writer)
            host = getattr(storage[0], "host", None)
            if host:  # labgrid keeps its SSH master to the exporter for 5 minutes
                from labgrid.util.ssh import sshmanager

                with contextlib.suppress(Exception):
                    sshmanager.close(host)
            card.unlink(missing_ok=True)

    def _milestone(self, name: str, at: float) -> None:
        if self._timeline is not None:
            self._timeline.mark(name, at)
        else:
            self._early.setdefault(name, at)

    def watch(self, timeline: tl.Timeline) -> None:
        self._timeline = timeline
        for name, at in self._early.items():
            timeline.mark(name, at)

    # run ----------------------------------------------------------------------------------

    def start(self) -> float:
        assert self.strategy is not None, "prepare() first"
        self._powered = True
        if self.netboot is not None:  # the box may fetch its files from power-on
            self.netboot.open_window(float(self.options.get("netboot_window",
                                                            NETBOOT_WINDOW)))
        self.strategy.transition("on")
        return time.monotonic()

    def console_stream(self) -> socket.socket:
        assert self._lab_end is not None, "start() first"
        return self._lab_end

    def ssh_endpoint(self) -> tuple[str, int]:
        return self._ssh

    def power_button(self) -> None:
        raise ConfigError(WHY_NO_POWER_BUTTON)

    def alive(self) -> bool:
        if not self._powered or self.power is None:
            return False
        get = getattr(self.power, "get", None)
        if get is None:
            return True  # a power driver without a state query: on until we switch it off
        try:
            return bool(get())
        except Exception as exc:  # a BMC/PDU that does not answer: neither on nor off
            raise PlatformError(f"the power driver of place {self._place} could not say "
                                f"whether the box is on: {type(exc).__name__}: {exc}") from exc

    def exit_reason(self) -> str:
        if self._console_error:
            return self._console_error
        try:
            if self._powered and not self.alive():
                return f"the box of place {self._place} is powered off (its power driver says so)"
        except PlatformError as exc:
            return str(exc)
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.netboot is not None:
            self.netboot.close_window()
        if self._powered and self.strategy is not None:
            self._powered = False
            with contextlib.suppress(Exception):
                self.strategy.transition("off")
        self._stop.set()
        if self.serial is not None and self.target is not None:
            with contextlib.suppress(Exception):
                self.target.deactivate(self.serial)
        for end in (self._lab_end, self._box_end):
            if end is not None:
                with contextlib.suppress(OSError):
                    end.close()
        self._lab_end = self._box_end = None

    def cleanup(self) -> None:
        self.stop()
        if self.netboot is not None:
            self.netboot.stop()
            self.netboot = None
        if self.target is not None:
            with contextlib.suppress(Exception):
                self.target.cleanup()
            self.target = None
        if self._session is not None:
            try:
                if self._held:
                    self._session.release(self._place)
                    self._held = False
            finally:
                self._session.close()
                self._session = None
                from labgrid.resource.remote import RemotePlaceManager

                manager = RemotePlaceManager.get()
                manager.session = manager.loop = None

    def info(self) -> dict[str, Any]:
        return {"place": self._place, "board": self.tags.get("board", "box"),
                "netboot_url": self.tags.get("netboot_url")}

    def attach_hint(self) -> str:
        host, port = self._ssh
        return (f"place {self._place} stays acquired by this run's host/user\n"
                f"ssh:     ssh -p {port} rancher@{host}\n"
                f"release: labgrid-client -p {self._place} release")


def doctor_checks(options: dict[str, Any]) -> list[Check]:
    """`roslab doctor --platform labgrid`: labgrid, ipmitool, and the place if one is named."""
    import shutil

    checks: list[Check] = []
    try:
        import_labgrid()
        checks.append(Check(True, "labgrid 26 importable"))
    except ConfigError as exc:
        return [Check(False, "labgrid 26 importable", str(exc))]
    checks.append(Check(shutil.which("ipmitool") is not None, "ipmitool (IPMI power)",
                        "apt-get install ipmitool"))
    if not options.get("place") and not options.get("labgrid_env"):
        checks.append(Check(True, "no --place/--labgrid-env given: coordinator not checked"))
        return checks
    why = LabgridDriver.not_ready(options)
    where = options.get("place") or options.get("labgrid_env")
    caps = LabgridDriver._facts.get("current")
    what = f"place {where}" + (f": board {caps.board}, ssh {'yes' if caps.ssh else 'no'}, "
                               f"netboot {'yes' if caps.datasources else 'no'}"
                               if caps and why is None else "")
    checks.append(Check(why is None, what, why or ""))
    return checks
