"""A guest that panics or hangs fails fast with what happened, how far it got, and the log."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lab import timeline as tl
from lab.errors import BootTimeout, GuestPanic
from lab.machine import Machine


def test_init_crash_is_a_guest_panic_quoting_the_kernel(make_tiny: Callable[..., Machine]) -> None:
    machine = make_tiny("panic")
    with pytest.raises(GuestPanic) as info:
        machine.boot(timeout=120)
    failed_after = time.monotonic() - machine.timeline.t0
    err = info.value
    quoted = "\n".join(err.last_lines)
    assert "Kernel panic - not syncing" in quoted
    assert "Attempted to kill init" in quoted
    assert err.milestone == tl.INIT
    assert err.log_path == str(machine.console_log)
    assert "Kernel panic" in str(err) and str(machine.console_log) in str(err)
    # fails at once: the error comes seconds after init, not at the 120 s boot timeout
    assert failed_after - machine.timeline.marks[tl.INIT] < 30, (
        f"the panic was reported {failed_after:.1f} s after power-on, init ran at "
        f"{machine.timeline.marks[tl.INIT]:.1f} s"
    )


def test_hang_is_a_timeout_naming_last_lines_milestone_and_log(
    make_tiny: Callable[..., Machine],
) -> None:
    machine = make_tiny("hang")
    with pytest.raises(BootTimeout) as info:
        machine.boot(timeout=15)
    err = info.value
    text = str(err)
    assert "within 15 s" in text
    assert "last milestone reached: init" in text
    assert "tiny: hanging on purpose" in "\n".join(err.last_lines)
    assert f"full console log: {machine.console_log}" in text
