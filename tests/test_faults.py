"""Faults the lab must survive: each is injected for real, and the test checks what the
user sees (a bounded wait, a message naming the cause) and that nothing is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from interrupt import (
    at_a_terminal,
    emulators_under,
    ignoring_sigint,
    interrupt_when,
    nothing_left,
)

from lab import timeline as tl
from lab.errors import BootTimeout
from lab.ssh import SSH, KeyPair

KILLED = '''
import os, signal

def test_emulator_dies(machine):
    os.kill(machine.driver.proc.pid, signal.SIGKILL)
    machine.run("true")

def test_next_one_gets_a_new_machine(machine):
    assert machine.run("echo alive").output == "alive"
'''


def test_the_emulator_killed_mid_test_fails_that_test_and_the_session_goes_on(
        tiny_guests: dict, tmp_path: Path) -> None:
    (tmp_path / "test_kill.py").write_text(KILLED)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "test_kill.py"), "-p", "no:cacheprovider",
         "--platform", "qemu", "--image", str(tiny_guests["shell"]), "--accel", "tcg",
         "--roslab-artifacts", str(tmp_path / "results"), "--rootdir", str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True,
        text=True, timeout=600)
    out = proc.stdout
    assert "1 failed, 1 passed" in out, out[-3000:]
    assert "QEMU exited with status -9" in out  # the cause, as the console's end saw it
    assert "machine qemu-x86_64-" in out  # ... and which machine died
    assert emulators_under(scratch) == [], "QEMU left running"


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """Accepts TCP connections on loopback and never says a word (a hung sshd)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_an_ssh_server_that_accepts_and_hangs_is_bounded_and_named(tmp_path: Path) -> None:
    key = KeyPair.generate(tmp_path / "key")
    with _silent_server() as port:
        ssh = SSH("127.0.0.1", port, "rancher", key, tl.Timeline())
        began = time.monotonic()
        with pytest.raises(BootTimeout, match=r"no SSH login as rancher at 127\.0\.0\.1:\d+ "
                                              r"within 12 s \(last: the port accepted the "
                                              r"connection but no SSH banner came"):
            ssh.connect(timeout=12)
        assert time.monotonic() - began < 12 + 15  # one banner wait past the deadline at most


FULL_DISK = '''
import json, sys
from pathlib import Path
from lab.errors import HostError
from drivers.machines import make_machine

full = Path(sys.argv[1])
machine = make_machine("qemu", sys.argv[2], "x86_64", {"hostname": "full"}, "configdrive",
                       full, "tcg", cpus=1, memory_mb=512)
error = ""
with machine:
    try:
        machine.boot(timeout=120)
    except HostError as exc:
        error = str(exc)
print(json.dumps({"error": error, "alive": machine.driver.alive(),
                  "left": [p.name for p in full.iterdir()]}))
'''


def test_a_full_disk_while_booting_is_named_at_once(tiny_guests: dict, tmp_path: Path) -> None:
    # a 64 KiB tmpfs in a mount namespace of the test's own: no root needed where user
    # namespaces are allowed, and nothing mounted on the host
    full = tmp_path / "full"
    full.mkdir()
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" -c "$3" "$1" "$4"', "sh",
         str(full), sys.executable, FULL_DISK, str(tiny_guests["shell"])],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "cannot write the console log" in outcome["error"]
    assert "No space left on device" in outcome["error"]
    assert outcome["alive"] is False
    assert outcome["left"] == []  # the machine's folder is gone


def test_a_cut_short_image_in_the_cache_is_never_served(tmp_path: Path) -> None:
    from refimage.build import default_out, ensure_image, read_manifest

    folder = tmp_path / "image"
    source = ensure_image("x86_64")
    folder.mkdir()
    for name in ("manifest.json", "vmlinuz", "rancheros.iso", "iso-checksums.txt"):
        (folder / name).write_bytes((source / name).read_bytes())
    with (source / "initrd").open("rb") as src, (folder / "initrd").open("wb") as dst:
        dst.write(src.read(1 << 20))  # what a full disk leaves of a 70 MB file
    assert read_manifest(source) is not None and source == default_out("x86_64")
    assert read_manifest(folder) is None  # so ensure_image would build it again


SIDE_BY_SIDE = '''
cloud_config = {{"hostname": "{user}"}}

def test_one(machine):
    # each run's machine has its own run's config drive (no cross-talk between the two)
    drive = machine.run("cat /media/config-2/openstack/latest/user_data").output
    assert "hostname: {user}" in drive

def test_two(machine):
    assert machine.run("echo ok").output == "ok"
'''


def test_two_runs_side_by_side_on_one_host_both_pass(tiny_guests: dict, tmp_path: Path) -> None:
    """Two users (or CI and a developer) at once: one TMPDIR, one cache, free ports and
    machine names chosen per run, nothing of either left behind."""
    scratch = tmp_path / "tmp"  # shared, like /tmp
    scratch.mkdir()
    runs = []
    for user in ("alice", "bob"):
        home = tmp_path / user
        home.mkdir()
        (home / "test_side.py").write_text(SIDE_BY_SIDE.format(user=user))
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", str(home / "test_side.py"), "-p",
             "no:cacheprovider", "-q", "--platform", "qemu", "--image",
             str(tiny_guests["shell"]), "--accel", "tcg", "--rootdir", str(home)],
            cwd=home, env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    outputs = [proc.communicate(timeout=600)[0] for proc in runs]
    for out in outputs:
        assert "2 passed" in out, out[-2000:]
    nothing_left(scratch)


HELD = '''
import os, pathlib, time

def test_holds_its_machine(machine):
    pathlib.Path(os.environ["BOOTED_FILE"]).touch()
    time.sleep(600)
'''


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_matrix_run_interrupted_mid_boot_leaves_nothing_running_or_half_written(
        how: str, tiny_guests: dict, tmp_path: Path) -> None:
    """Ctrl-C at a terminal (SIGINT to the whole process group) or a cancelled CI job
    (SIGTERM to roslab alone, started as nohup or a CI agent does: SIGINT ignored) while a
    cell's machine runs: the run stops within a bound, QEMU and the run's temp dirs are
    gone, and cell.json is whole and says interrupted."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    booted = tmp_path / "booted"
    (tmp_path / "test_hold.py").write_text(HELD)
    (tmp_path / "matrix.yml").write_text(
        "cells:\n  - {id: held, platform: qemu, arch: x86_64, scenarios: [test_hold.py], "
        f"image: {tiny_guests['shell']}, options: [--accel, tcg]}}\n")
    env = {**os.environ, "TMPDIR": str(scratch), "BOOTED_FILE": str(booted)}
    env.pop("ROSLAB_RUN_ID", None)
    proc = subprocess.Popen([sys.executable, "-m", "commands.cli", "matrix", "run", "--cell",
                             "held",
                             "--results", "out"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=at_a_terminal if how == "ctrl-c" else ignoring_sigint)

    def booted_and_running() -> bool:
        if not booted.exists():
            return False
        assert emulators_under(scratch) != []
        return True

    out, stopped_in = interrupt_when(proc, booted_and_running, how,
                                     "the cell's machine never booted")
    assert proc.returncode != 0, out[-3000:]
    assert stopped_in < 60, f"took {stopped_in:.0f} s to stop"
    cell = json.loads((tmp_path / "out" / "held" / "cell.json").read_text())
    assert cell["interrupted"] is True and cell["finished"]
    nothing_left(scratch)


def test_ports_taken_by_other_processes_do_not_stop_a_boot(
        make_tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Usual lab ports held by others, and the SSH forward's port taken between the lab's
    probe and QEMU's bind (what another run on the host can do): QEMU refuses that port,
    the lab starts it again on another, and the machine boots."""
    from drivers import qemu

    held = []
    for port in (2222, 5555, 5900, 8022, 10022):
        sock = socket.socket()
        with contextlib.suppress(OSError):  # already taken by someone: all the better
            sock.bind(("127.0.0.1", port))
            sock.listen()
        held.append(sock)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    held.append(squatter)
    taken = squatter.getsockname()[1]
    probes = iter([taken])  # the first probe answers a port someone then took
    real_free_port = qemu.free_port
    monkeypatch.setattr(qemu, "free_port", lambda: next(probes, None) or real_free_port())
    try:
        machine = make_tiny("shell")
        machine.boot()
        assert machine.driver.ssh_port != taken
        assert machine.run("echo up").output == "up"
    finally:
        for sock in held:
            sock.close()


def test_free_ports_are_distinct_and_free() -> None:
    """A farm takes a score of ports at once: none twice, each still free to bind."""
    from drivers.qemu.host import free_ports

    ports = free_ports(40)
    assert len(set(ports)) == 40
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
