"""Booting ahead (fixtures/ahead.py) with real tiny guests: what boots when, what a test
gets, and that nothing is left when the session ends mid-boot."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from interrupt import emulators_under

from fixtures.ahead import BootAhead, own_machines_first, plan_runs
from lab.errors import BootError
from lab.machine import Machine


@dataclass(frozen=True)
class _Test:
    """What BootAhead reads of a collected test: its id (and what the callables read)."""

    nodeid: str
    kind: str = "shell"
    measured: bool = False
    own: bool = False  # boots a machine of its own
    module: str = ""  # none: a module of its own


def _tests(*specs: tuple[str, ...] | str) -> list[pytest.Item]:
    made = [_Test(s) if isinstance(s, str) else _Test(*s) for s in specs]  # type: ignore[arg-type]
    return cast(list[pytest.Item], made)


def _ahead(items: list[pytest.Item], keys: list[str | None], make_tiny: Callable[..., Machine],
           depth: int = 1, spans: dict[str, tuple[float, float]] | None = None
           ) -> tuple[BootAhead, list[str]]:
    """A BootAhead over `items` whose machines are tiny guests; also the log of boots
    done (and of when each ran, in `spans`)."""
    booted: list[str] = []
    by_id = dict(zip((i.nodeid for i in items), keys, strict=True))
    runs = plan_runs(items, lambda item: by_id[item.nodeid])

    def boot(item: Any, machine: Machine) -> Machine:
        started = time.monotonic()
        machine.boot(timeout=60)
        booted.append(item.nodeid)
        if spans is not None:
            spans[item.nodeid] = (started, time.monotonic())
        return machine

    return BootAhead(items, runs, lambda item: make_tiny(item.kind), boot,
                     lambda item: item.measured, depth), booted


def _wait_for(booted: list[str], count: int) -> None:
    deadline = time.monotonic() + 60
    while len(booted) < count:
        assert time.monotonic() < deadline, f"only {booted} booted ahead"
        time.sleep(0.1)


def test_runs_are_the_shared_machines_in_order() -> None:
    items = _tests("a1", "own", "a2", "b1", "b2", "none", "a3")
    keys = {"a1": "A", "own": None, "a2": "A", "b1": "B", "b2": "B", "none": None, "a3": "A"}
    runs = plan_runs(items, lambda item: keys[item.nodeid])
    # a test with its own machine between two of A's does not end A's run; B's does
    assert [(r.start, r.first.nodeid, r.key) for r in runs] == \
        [(0, "a1", "A"), (3, "b1", "B"), (6, "a3", "A")]


def _wait_for_qemu(tmp_path: Path) -> None:
    deadline = time.monotonic() + 30
    while not emulators_under(tmp_path):
        assert time.monotonic() < deadline, "the machine booted ahead never started"
        time.sleep(0.1)


def test_modules_with_own_machines_run_right_after_the_measured_boots() -> None:
    items = _tests(("a::1", "shell", False, False, "a"), ("b::1", "shell", False, True, "b"),
                   ("a::2", "shell", False, False, "a"), ("c::1", "shell", True, False, "c"),
                   ("b::2", "shell", False, False, "b"), ("d::1", "shell", False, False, "d"))
    got = own_machines_first(items, lambda i: i.measured, lambda i: i.own)  # type: ignore[attr-defined]
    # each module's tests stay together and in their order; the rest keep theirs
    assert [i.nodeid for i in got] == ["c::1", "b::1", "b::2", "a::1", "a::2", "d::1"]


def test_the_next_runs_machine_boots_while_this_run_is_used(
        make_tiny: Callable[..., Machine], tmp_path: Path) -> None:
    items = _tests("a1", "a2", "b1")
    ahead, booted = _ahead(items, ["A", "A", "B"], make_tiny)
    try:
        assert ahead.take(items[0]) is None  # nothing was booted for the first run
        ahead.advance(items[0])
        ahead.advance(items[1])  # B is already on its way: no second boot
        _wait_for(booted, 1)  # the tests of A's run go on meanwhile
        started = time.monotonic()
        machine = ahead.take(items[2])
        assert time.monotonic() - started < 1  # booted already: no wait
        assert machine is not None and machine.run("echo hi", check=True).output == "hi"
        assert booted == ["b1"]
        assert ahead.take(items[2]) is None  # handed over once
    finally:
        ahead.close()


def test_a_machine_booted_ahead_waits_paused_and_runs_on_when_taken(
        make_tiny: Callable[..., Machine]) -> None:
    items = _tests("a1", "b1")
    ahead, booted = _ahead(items, ["A", "B"], make_tiny)
    try:
        ahead.advance(items[0])
        _wait_for(booted, 1)
        time.sleep(6)  # B waits: paused, its guest's clocks stand still
        machine = ahead.take(items[1])
        assert machine is not None
        uptime = float(machine.run("cut -d' ' -f1 /proc/uptime", check=True).output)
        running = time.monotonic() - machine.timeline.t0
        assert uptime < running - 4.5, f"the guest ran while it waited: up {uptime:.1f} s " \
                                       f"of the {running:.1f} s since it was powered on"
        guest_time = int(machine.run("date +%s", check=True).output)
        assert abs(guest_time - time.time()) < 3, "its wall clock was not set as it resumed"
    finally:
        ahead.close()


def test_a_machine_that_died_while_it_waited_is_stopped_as_it_is_taken(
        make_tiny: Callable[..., Machine], tmp_path: Path) -> None:
    made: list[Machine] = []

    def make(kind: str) -> Machine:
        made.append(make_tiny(kind))
        return made[-1]

    items = _tests("a1", "b1")
    ahead, booted = _ahead(items, ["A", "B"], make)
    try:
        ahead.advance(items[0])
        _wait_for(booted, 1)
        time.sleep(1)  # paused by now
        for pid in emulators_under(tmp_path):
            os.kill(int(pid), signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 (whatever the emulator's death raises)
            ahead.take(items[1])
        assert made[0].stopped, "the dead machine was left to the end of the session"
    finally:
        ahead.close()


def test_up_to_depth_machines_wait_booted_one_at_a_time(
        make_tiny: Callable[..., Machine]) -> None:
    items = _tests("a1", "b1", "c1", "d1")
    spans: dict[str, tuple[float, float]] = {}
    ahead, booted = _ahead(items, ["A", "B", "C", "D"], make_tiny, depth=2, spans=spans)
    try:
        ahead.advance(items[0])
        _wait_for(booted, 2)
        time.sleep(2)
        assert booted == ["b1", "c1"]  # D waits for room: two machines already wait
        assert spans["b1"][1] <= spans["c1"][0], "two boots ahead ran at once"
        ahead.advance(items[1])
        assert ahead.take(items[1]) is not None
        _wait_for(booted, 3)  # B was taken: D's turn
        assert booted == ["b1", "c1", "d1"]
    finally:
        ahead.close()


def test_while_a_test_waits_for_its_machine_the_next_one_boots_too(
        make_tiny: Callable[..., Machine]) -> None:
    items = _tests("a1", "b1", "c1")
    spans: dict[str, tuple[float, float]] = {}
    ahead, booted = _ahead(items, ["A", "B", "C"], make_tiny, depth=2, spans=spans)
    try:
        ahead.advance(items[0])
        ahead.advance(items[1])  # B's test comes while B still boots
        assert ahead.take(items[1]) is not None
        _wait_for(booted, 2)
        assert sorted(booted) == ["b1", "c1"]
        assert spans["c1"][0] < spans["b1"][1], "C waited for B's boot while B's test waited"
    finally:
        ahead.close()


def test_nothing_boots_beside_a_measured_boot(make_tiny: Callable[..., Machine]) -> None:
    items = _tests(("a1", "shell", True), "b1", ("c1", "shell", True), "d1")
    ahead, booted = _ahead(items, ["A", "B", "C", "D"], make_tiny)
    try:
        ahead.advance(items[0])  # a measured boot's test: B waits
        ahead.advance(items[1])  # C's boot is measured: it is not made ahead
        assert ahead.take(items[1]) is None and ahead.take(items[2]) is None
        assert booted == []
    finally:
        ahead.close()


def test_a_failed_boot_ahead_is_raised_by_the_test_that_takes_it(
        make_tiny: Callable[..., Machine], tmp_path: Path) -> None:
    items = _tests("a1", ("b1", "panic"))
    ahead, _ = _ahead(items, ["A", "B"], make_tiny)
    try:
        ahead.advance(items[0])
        with pytest.raises(BootError, match="Attempted to kill init"):
            ahead.take(items[1])
        assert emulators_under(tmp_path) == []
    finally:
        ahead.close()


def test_a_run_that_went_by_untaken_is_stopped(make_tiny: Callable[..., Machine],
                                               tmp_path: Path) -> None:
    items = _tests("a1", "b1", "c1")
    ahead, _ = _ahead(items, ["A", "B", "C"], make_tiny)
    try:
        ahead.advance(items[0])  # B boots ahead; B's test is then skipped, nobody takes it
        ahead.advance(items[1])  # B's own run: B stays wanted
        ahead.advance(items[2])  # C's run: B is stale, stopped; the run after C is none
        assert ahead.take(items[1]) is None
        assert emulators_under(tmp_path) == []
    finally:
        ahead.close()


def test_closing_mid_boot_leaves_no_emulator(make_tiny: Callable[..., Machine],
                                            tmp_path: Path) -> None:
    """Ctrl-C while a machine boots ahead: the session's end stops it at once."""
    items = _tests("a1", ("b1", "hang"))
    ahead, _ = _ahead(items, ["A", "B"], make_tiny)
    ahead.advance(items[0])
    _wait_for_qemu(tmp_path)
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 15  # not the 60 s boot timeout
    assert emulators_under(tmp_path) == []
    ahead.advance(items[0])  # a closed BootAhead starts nothing
    assert emulators_under(tmp_path) == []
