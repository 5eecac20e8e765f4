"""Machine admission: slot counts from the host, and slots shared across processes (as
xdist workers share them) and released when a holder dies."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from drivers import qemu
from fixtures.options import LabOptions, auto_cpus
from lab.admission import Admission, Limits
from lab.images import KERNEL, Image


def test_limits_from_memory_and_cores() -> None:
    # 24 GiB free, 2 cores, 2 GiB machines: memory allows 10, a CPU slot a core
    limits = Limits.for_host(2048, available_mb=24 * 1024, cores=2)
    assert (limits.memory_slots, limits.cpu_slots) == (10, 2)
    assert "2 cores" in limits.why and "= 10 running" in limits.why
    # a host short of memory still runs one machine
    assert Limits.for_host(2048, available_mb=1500, cores=1).memory_slots == 1


def test_a_start_takes_a_slot_for_each_emulator_thread(tmp_path: Path) -> None:
    Limits(memory_slots=4, cpu_slots=2, why="test").save(tmp_path)
    admission = Admission(tmp_path)
    first = admission._take("cpu", 2, 1)  # a single-threaded TCG boot
    second = admission._take("cpu", 2, 1)  # another fits beside it on a 2-core host
    assert {Path(h.name).name for h in first + second} == {"cpu-0.lock", "cpu-1.lock"}
    second[0].close()
    # a 2-thread boot (MTTCG, KVM) needs both cores: it waits while one is held
    started = threading.Event()

    def two_thread_start() -> None:
        with Admission(tmp_path).starting(threads=2):
            started.set()

    waiter = threading.Thread(target=two_thread_start, daemon=True)
    waiter.start()
    assert not started.wait(1.0), "a 2-thread start went ahead with one core held elsewhere"
    first[0].close()
    assert started.wait(10), "a 2-thread start still waits with both cores free"
    # asking for more threads than the host has cores takes them all, not for ever
    with Admission(tmp_path).starting(threads=8):
        pass


def _hold(folder: str, seconds: float, started: multiprocessing.synchronize.Event) -> None:
    with Admission(Path(folder)).starting():
        started.set()
        time.sleep(seconds)


def _holder(folder: Path, seconds: float) -> multiprocessing.Process:
    """Another process (an xdist worker) holding the one CPU slot for `seconds`."""
    Limits(memory_slots=1, cpu_slots=1, why="test").save(folder)
    started = multiprocessing.Event()
    other = multiprocessing.Process(target=_hold, args=(str(folder), seconds, started))
    other.start()
    assert started.wait(10)
    return other


def test_one_start_at_a_time_across_processes(tmp_path: Path) -> None:
    other = _holder(tmp_path, 1.0)
    t = time.monotonic()
    with Admission(tmp_path).starting():
        waited = time.monotonic() - t
    other.join()
    assert waited >= 0.5, f"took the CPU slot while another process held it ({waited:.2f} s)"


def test_a_dead_holder_releases_its_slots(tmp_path: Path) -> None:
    other = _holder(tmp_path, 60.0)
    other.kill()
    other.join()
    t = time.monotonic()
    with Admission(tmp_path).starting():
        assert time.monotonic() - t < 2


def test_memory_slots_limit_running_machines(tmp_path: Path) -> None:
    Limits(memory_slots=2, cpu_slots=1, why="test").save(tmp_path)
    admission = Admission(tmp_path)
    first, second = admission.running(), admission.running()  # two fit
    names = {Path(first.name).name, Path(second.name).name}
    assert names == {"memory-0.lock", "memory-1.lock"}
    first.close()
    third = admission.running()  # the slot the first machine left
    assert Path(third.name).name == "memory-0.lock"
    second.close()
    third.close()


def test_an_x86_tcg_boot_takes_one_host_thread_whatever_its_vcpus() -> None:
    # multi-threaded TCG can hang an x86 guest patching its kernel (the contract test's flip
    # loop: QEMU 7.2 within seconds, 10.0 once in 69 runs), so x86 runs single-threaded
    x86 = Image(path=Path("vmlinuz"), kind=KERNEL, arch="x86_64")
    arm = Image(path=Path("vmlinuz"), kind=KERNEL, arch="aarch64")
    assert qemu.machine_args(qemu.BOARDS["pc"], "tcg") == ["-accel", "tcg,thread=single"]
    assert qemu.QemuDriver.host_threads_for(x86, "x86_64", "tcg", 2) == 1
    assert qemu.QemuDriver.host_threads_for(x86, "x86_64", "kvm", 2) == 2
    assert qemu.QemuDriver.host_threads_for(arm, "aarch64", "tcg", 2) == 2  # arm64: one store
    assert "thread=single" in qemu.BOARDS["raspi3b"].tcg  # its 4 vCPUs spin in the boot stub


def test_the_installed_qemus_version_is_read_and_doctor_says_it(tmp_path: Path) -> None:
    first_line = subprocess.run([qemu.binary("x86_64"), "--version"], capture_output=True,
                                text=True, check=True).stdout.splitlines()[0]
    major, minor = qemu.qemu_version("x86_64")
    assert f"version {major}.{minor}." in first_line
    doctor = subprocess.run([sys.executable, "-m", "commands.cli", "doctor"], capture_output=True,
                            text=True, env={**os.environ, "ROSLAB_CACHE": str(tmp_path)},
                            cwd=Path(__file__).parent.parent, timeout=120).stdout
    assert f"QEMU {major}.{minor}: x86 guests under TCG run on one host thread" in doctor, doctor


@pytest.mark.parametrize(("cores", "workers", "cpus"), [
    (2, 1, 1), (2, 2, 1), (3, 1, 1), (4, 1, 2), (4, 2, 2), (4, 4, 1), (16, 4, 2), (1, 1, 1)])
def test_machines_get_as_many_vcpus_as_the_cores_allow_side_by_side(
        cores: int, workers: int, cpus: int) -> None:
    """Without --cpus: 2 vCPUs, or 1 where the host cannot boot two such machines at once
    (a serial run's machine in use and the one booting ahead, or one per xdist worker)."""
    got, why = auto_cpus(cores, workers)
    assert got == cpus
    assert f"{cores} core(s) for {max(2, workers)} machines side by side" in why


@pytest.mark.parametrize(("platform", "accel", "why", "cpus"), [
    ("libvirt", "tcg", "2 core(s) for 2 machines", 1),  # libvirt cannot make x86 TCG 1-thread
    ("libvirt", "tcg", "--cpus", 2),  # as asked: the driver refuses it, saying why
    ("libvirt", "kvm", "2 core(s) for 2 machines", 2),
    ("qemu", "tcg", "2 core(s) for 2 machines", 2)])
def test_the_fixtures_machines_get_no_more_vcpus_than_the_platform_can_safely_give(
        tmp_path: Path, platform: str, accel: str, why: str, cpus: int) -> None:
    lab = LabOptions(platform=platform, image=None, arch="x86_64", accel=accel,
                     keep_failed=False, artifacts=tmp_path, rundir=tmp_path, cpus=2, cpus_why=why,
                     _accel=(accel, "asked for"))
    got, reason = lab.machine_cpus()
    assert got == cpus
    if got < 2:
        assert "multi-threaded TCG can hang an x86 guest" in reason
