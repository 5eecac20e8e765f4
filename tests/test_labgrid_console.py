"""A write to a box's console that fails is an error, never dropped: labgrid's real
SerialDriver on a NetworkSerialPort (raw TCP, as ser2net serves it) to a port on
loopback that goes away, bridged by the driver as in a run."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("labgrid", reason="labgrid drives physical boxes")

from drivers.labgrid import LabgridDriver  # noqa: E402


def test_a_failed_console_write_closes_the_console_and_names_why() -> None:
    from labgrid import Target
    from labgrid.driver import SerialDriver
    from labgrid.resource import NetworkSerialPort

    ser2net = socket.create_server(("127.0.0.1", 0))
    port = ser2net.getsockname()[1]
    target = Target("box")
    NetworkSerialPort(target, name=None, host="127.0.0.1", port=port, protocol="raw")
    driver = LabgridDriver()
    driver.target, driver._place = target, "box"
    driver.serial = SerialDriver(target, name=None)
    driver._open_console()
    try:
        cable, _ = ser2net.accept()
        lab = driver.console_stream()
        lab.sendall(b"echo reached\n")
        assert cable.recv(100) == b"echo reached\n"
        cable.close()  # the console server went away
        ser2net.close()
        lab.settimeout(0.2)
        deadline = time.monotonic() + 10
        while not driver.exit_reason() and time.monotonic() < deadline:
            try:
                lab.sendall(b"ls\n")  # keystrokes the box never gets
            except OSError:
                break
            time.sleep(0.1)
        assert "could not write to the console of place box" in driver.exit_reason()
        with pytest.raises(OSError):  # the lab's end is closed: its Console fails now
            for _ in range(50):
                lab.sendall(b"ls\n")
                time.sleep(0.02)
    finally:
        driver.stop()
