"""The AWS rehearsal's stand-in (drivers/rehearsal/aws.py): moto's server whose instances
boot under QEMU, driven by the unchanged AWS driver.

The disk here is one boot sector that writes a line to the serial port and triple-faults,
so QEMU (-no-reboot) ends at once: an instance that cannot boot. The rehearsal must end it
`terminated` with the console's tail in the reason, the machine must fail naming it, and
nothing may be left: no instance, key pair, group, AMI or snapshot in the stand-in, no QEMU,
no listening port, no scratch folder. The full path with the reference image's AWS disk
(upload, boot, SSH, scenarios, terminate, gc) is `pytest scenarios/ --platform aws
--rehearse`, run by the matrix's aws cell (`roslab matrix run --rehearse`).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest

pytest.importorskip("moto", reason="moto[server] (a dev dependency) runs the EC2 emulator")

from drivers.aws import AwsDriver  # noqa: E402
from drivers.machines import make_machine  # noqa: E402
from lab.errors import LabError  # noqa: E402
from lab.ssh import KeyPair  # noqa: E402

MESSAGE = b"roslab test: this disk has no OS\r\n"


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


def listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address, port)) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the instances' port 22 needs root")
def test_an_instance_that_cannot_boot_ends_red_with_its_console_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = no_os_disk(tmp_path / "no-os.img")
    endpoint = ""
    with AwsDriver.rehearsal() as rehearsal:
        workdir = Path(rehearsal.env["AWS_CONFIG_FILE"]).parent
        for name in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name, value in rehearsal.env.items():
            monkeypatch.setenv(name, value)
        endpoint = rehearsal.env["AWS_ENDPOINT_URL"].split("//")[1]
        machine = make_machine("aws", disk, "x86_64", "#cloud-config\nhostname: x\n",
                               "default", tmp_path, "tcg",
                               ssh_key=KeyPair.generate(tmp_path / "key"),
                               platform_options={**rehearsal.options, "region": "us-east-1"})
        started = time.monotonic()
        with pytest.raises(LabError) as failed:
            machine.boot(timeout=120)
        assert time.monotonic() - started < 120  # it ended when the guest did, not on a timeout
        # the reason names the console's tail; console.log has what GetConsoleOutput gave
        assert "went to terminated" in str(failed.value)
        assert "roslab test: this disk has no OS" in str(failed.value)
        assert "roslab test: this disk has no OS" in machine.console_log.read_text()
        machine.stop()
        (guest,) = rehearsal.guests()
        assert guest["accel"] in ("tcg", "kvm") and guest["accel_reason"]
        assert rehearsal.leftovers() == []  # the driver removed all it made
        assert qemu_children() == []
        assert not listening(guest["address"], 22)
    host, port = endpoint.split(":")
    assert not listening(host, int(port))  # moto's server stopped
    assert not workdir.exists()


def test_a_second_rehearsal_in_one_process_is_refused() -> None:
    with AwsDriver.rehearsal(), pytest.raises(LabError, match="already runs"), \
            AwsDriver.rehearsal():
        pass
