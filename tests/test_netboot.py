"""The netboot server answers the box it serves and no one else, and only in its boot
window: boot.ipxe carries the console password and user-data the run's secrets. A real
HTTP client asks from an allowed and from another loopback address (Linux routes all of
127.0.0.0/8 to lo, so a client may bind 127.0.0.2 as its source)."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator

import pytest

from drivers.labgrid.netboot import NetbootServer
from drivers.qemu.host import free_port

BOX, STRANGER = "127.0.0.1", "127.0.0.2"
SCRIPT = b"#!ipxe\nkernel vmlinuz rancher.password=netboot-secret-pw\nboot\n"
USER_DATA = b"#cloud-config\nrancher:\n  environment:\n    DB_PASSWORD: netboot-db-secret\n"


@pytest.fixture
def server() -> Iterator[tuple[NetbootServer, int]]:
    port = free_port()
    seen: list[str] = []
    netboot = NetbootServer(f"127.0.0.1:{port}", {"boot.ipxe": SCRIPT, "user-data": USER_DATA},
                            lambda name, at: seen.append(name), clients={BOX})
    try:
        yield netboot, port
    finally:
        netboot.stop()


def get(port: int, name: str, source: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", f"/{name}")
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def test_only_the_box_gets_its_files_and_only_in_its_boot_window(
        server: tuple[NetbootServer, int]) -> None:
    netboot, port = server
    # before power-on: nobody
    assert get(port, "boot.ipxe", BOX)[0] == 403
    netboot.open_window(1.0)
    assert get(port, "boot.ipxe", BOX) == (200, SCRIPT)
    assert get(port, "user-data", BOX) == (200, USER_DATA)
    for name in ("boot.ipxe", "user-data", "vmlinuz"):
        status, body = get(port, name, STRANGER)
        assert status == 403 and b"secret" not in body, name
    time.sleep(1.1)  # the window closed
    assert get(port, "boot.ipxe", BOX)[0] == 403
    netboot.open_window(30)
    netboot.close_window()  # the machine stopped
    assert get(port, "user-data", BOX)[0] == 403
