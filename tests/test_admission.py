"""Machine admission: slot counts from the host, and slots shared across processes (as
xdist workers share them) and released when a holder dies."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from lab.admission import Admission, Limits


def test_limits_from_memory_and_cores() -> None:
    # 24 GiB free, 2 cores, 2 GiB 2-vCPU machines: memory allows 10, CPU one start at a time
    limits = Limits.for_host(2048, 2, available_mb=24 * 1024, cores=2)
    assert (limits.memory_slots, limits.cpu_slots) == (10, 1)
    assert "2 cores / 2 vCPUs" in limits.why and "= 10 running" in limits.why
    # a host short of memory still runs one machine, one at a time
    assert Limits.for_host(2048, 2, available_mb=1500, cores=1).memory_slots == 1
    assert Limits.for_host(2048, 1, available_mb=8192, cores=8).cpu_slots == 8


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
