"""The clouds' rehearsals (drivers/rehearsal/): each cloud's API stand-in whose instances
boot under QEMU, driven by that cloud's unchanged driver.

An instance that cannot boot: the disk is one boot sector that writes a line to the serial
port and triple-faults, so QEMU (-no-reboot) ends at once. The rehearsal must end the
instance (terminated, TERMINATED, off, ERROR) with the console's tail where the cloud keeps
a console, the machine must fail naming it, and nothing may be left: nothing in the
stand-in, no QEMU, no listening port, no scratch folder.

The whole path (upload or import, create, wait, SSH, console, a scenario module, delete,
gc): `pytest scenarios/test_boot.py --platform P --rehearse` on the reference image, as the
matrix's cloud cells run it (`roslab matrix run --rehearse`).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from interrupt import listening_of, survivors, tagged_env  # tests/ is on sys.path

from drivers import driver_class
from drivers.machines import make_machine
from lab.errors import LabError
from lab.ssh import KeyPair

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = b"roslab test: this disk has no OS\r\n"
REHEARSED = ("aws", "gce", "digitalocean", "openstack", "cloudstack", "aliyun")
HAS_CONSOLE = {"aws": True, "gce": True, "digitalocean": False, "openstack": True,
               "cloudstack": False, "aliyun": True}
# the instance's state once its guest ended, as the failure names it (the start's wait saw
# it, or the SSH wait after the instance ran for a moment)
ENDED = {"aws": ("terminated",), "gce": ("TERMINATED",), "digitalocean": ("off",),
         "openstack": ("ERROR", "SHUTOFF"), "cloudstack": ("stopped",), "aliyun": ("Stopped",)}
SDK = {"aws": "moto", "gce": "google.cloud.compute_v1", "digitalocean": "pydo",
       "openstack": "openstack", "cloudstack": "libcloud", "aliyun": "libcloud"}
# the clouds whose runs start an image the account already has (a CloudStack template, an
# Aliyun image id) rather than one they upload: the stand-in offers it by that name
BY_NAME = {"cloudstack": "cloudstack:RancherOS", "aliyun": "aliyun:rancheros_1_4_1_x64.vhd"}
NO_OS = "no-os"  # the name the stand-ins offer the no-OS disk by
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the instances' port 22 needs root")


def no_os_disk(path: Path) -> Path:
    """A raw disk whose boot sector prints MESSAGE on COM1, then triple-faults."""
    code = bytes([0x31, 0xC0, 0x8E, 0xD8,  # xor ax,ax; mov ds,ax
                  0xBE]) + struct.pack("<H", 0x7C00 + 30) + bytes([  # mov si, msg
                  0xBA, 0xF8, 0x03,  # mov dx, 0x3f8
                  0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8,  # lodsb..out dx,al..loop
                  0x0F, 0x01, 0x1E]) + struct.pack("<H", 0x7C00 + 24) + bytes([  # lidt [idt]
                  0xCC])  # int3 with an empty IDT: triple fault, QEMU -no-reboot ends
    sector = (code + bytes(6) + MESSAGE + b"\0").ljust(510, b"\0") + b"\x55\xaa"
    path.write_bytes(sector.ljust(1 << 20, b"\0"))
    return path


def gce_tarball(disk: Path, path: Path) -> Path:
    """`disk` as GCE takes it: a gzipped tar holding disk.raw."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(disk, arcname="disk.raw")
    return path


@contextlib.contextmanager
def published(path: Path) -> Iterator[str]:
    """`path` at an http:// URL on 127.0.0.1 (a release download) until exit."""

    class Files(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Files, directory=str(path.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def image_for(platform: str, disk: Path) -> Iterator[str]:
    """What the platform's driver is given for `disk` (how each takes a disk: the file
    itself, a release tarball, a URL DigitalOcean imports, an image the account has)."""
    if platform in BY_NAME:
        yield f"{platform}:{NO_OS}"
    elif platform == "gce":
        yield str(gce_tarball(disk, disk.with_name("disk.tar.gz")))
    elif platform == "digitalocean":
        with published(disk) as url:
            yield f"digitalocean:{url}"
    else:
        yield str(disk)


def qemu_children() -> list[str]:
    """QEMU processes whose parent is this process (the stand-in's guests)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"qemu-system" in cmd:
            found.append(pid)
    return found


def rehearsal_folders(where: Path) -> list[Path]:
    return list(where.glob("roslab-*-rehearsal-*"))


def in_rehearsal(platform: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                 body: Callable[[dict[str, str], object], None],
                 offered: Path | None = None) -> None:
    """Run `body(options, rehearsal)` inside the platform's rehearsal, the SDK pointed at it
    as a run is (where a cloud starts images by name, `offered` is offered as NO_OS); then
    check that the stand-in's server, folders and ports are gone. Only this process's:
    another xdist worker's rehearsal may run meanwhile."""
    pytest.importorskip(SDK[platform], reason=f"{platform}'s SDK (roslab[clouds], dev)")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the rehearsal's folder
    ports = listening_of([os.getpid()])
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN", "OS_AUTH_URL"):
        monkeypatch.delenv(name, raising=False)
    if platform in BY_NAME and offered is not None:
        cm = importlib.import_module(f"drivers.rehearsal.{platform}").rehearsal(
            offered={NO_OS: offered})
    else:
        cm = driver_class(platform).rehearsal()
    assert cm is not None, f"{platform} has no rehearsal"
    with cm as rehearsal:
        for name, value in rehearsal.env.items():
            monkeypatch.setenv(name, value)
        body({**rehearsal.options, **({"region": "us-east-1"} if platform == "aws" else {})},
             rehearsal)
    assert listening_of([os.getpid()]) <= ports  # the API server closed
    assert qemu_children() == []  # and with each guest its port 22
    assert rehearsal_folders(scratch) == []


@needs_root
@pytest.mark.parametrize("platform", REHEARSED)
def test_an_instance_that_cannot_boot_ends_red_with_its_console_and_leaves_nothing(
        platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = no_os_disk(tmp_path / "no-os.img")

    def run(options: dict[str, str], rehearsal: object) -> None:
        with image_for(platform, disk) as image:
            machine = make_machine(platform, image, "x86_64", "#cloud-config\nhostname: x\n",
                                   "default", tmp_path, "tcg",
                                   ssh_key=KeyPair.generate(tmp_path / "key"),
                                   platform_options=options)
            started = time.monotonic()
            with pytest.raises(LabError) as failed:
                machine.boot(timeout=120)
            # it ended when the guest did, not on a timeout
            assert time.monotonic() - started < 120
            assert any(state in str(failed.value) for state in ENDED[platform]), failed.value
            if HAS_CONSOLE[platform]:  # console.log: what the cloud's console API gave
                assert "roslab test: this disk has no OS" in machine.console_log.read_text()
            machine.stop()
        (guest,) = rehearsal.guests()  # type: ignore[attr-defined]
        assert guest["accel"] in ("tcg", "kvm") and guest["accel_reason"]
        assert rehearsal.leftovers() == []  # type: ignore[attr-defined]
        assert qemu_children() == []

    in_rehearsal(platform, monkeypatch, tmp_path, run, offered=disk)


def reference_disk(name: str) -> Path:
    from refimage.build import ensure_image
    from refimage.disks import ensure_disks

    folder = ensure_image("x86_64")
    ensure_disks(folder)
    return folder / name


@needs_root
@pytest.mark.refimage
@pytest.mark.parametrize("platform", REHEARSED)
def test_a_scenario_module_passes_on_the_rehearsed_cloud(platform: str,
                                                         tmp_path: Path) -> None:
    """The unchanged scenarios against the driver and its stand-in: boot milestones, the
    services and the console over SSH and the cloud's console API; then gc, and nothing
    left (the rehearsal fails the run otherwise)."""
    pytest.importorskip(SDK[platform], reason=f"{platform}'s SDK (roslab[clouds], dev)")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env, tag = tagged_env(TMPDIR=str(scratch))
    with contextlib.ExitStack() as stack:
        image: list[str] = []
        if platform == "digitalocean":  # a custom image, imported from where it is published
            url = stack.enter_context(published(reference_disk("rancheros-digitalocean.img")))
            image = ["--image", f"digitalocean:{url}"]
        elif platform in BY_NAME:  # the image the stand-in offers, as the matrix cell names
            image = ["--image", BY_NAME[platform]]
        # on one cloud, the lab's registry too: its guests reach it at their network's
        # host address (the `lab_host` route a rehearsal gives; they have no internet)
        modules = ["scenarios/test_boot.py"] + (
            ["scenarios/test_registry.py"] if platform == "aws" else [])
        run = subprocess.run(
            [sys.executable, "-m", "pytest", *modules, "--platform", platform,
             "--rehearse", *image, "-p", "no:cacheprovider", "-q", "-rs",
             "--roslab-artifacts", str(tmp_path / "results")],
            cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert " passed" in out and "roslab rehearsal: guest of " in out
    if platform == "aws":
        assert not [line for line in out.splitlines()
                    if line.startswith("SKIPPED") and "test_registry.py" in line], out[-3000:]
    assert "LEFT BEHIND" not in out and "roslab rehearsal: gc against the stand-in removed" \
        in out
    # nothing of the run goes on: no QEMU, API server or registry, so none listens
    assert survivors(tag) == []
    assert rehearsal_folders(scratch) == []
