"""A guest that panics or hangs fails fast with what happened, how far it got, and the log."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lab import timeline as tl
from lab.errors import BootTimeout, GuestPanic
from lab.machine import Machine


def test_init_crash_is_a_guest_panic_quoting_the_kernel(make_tiny: Callable[..., Machine]) -> None:
    machine = make_tiny("panic")
    with pytest.raises(GuestPanic) as info:
        machine.boot(timeout=120)
    err = info.value
    quoted = "\n".join(err.last_lines)
    assert "Kernel panic - not syncing" in quoted
    assert "Attempted to kill init" in quoted
    assert err.milestone == tl.INIT
    assert err.log_path == str(machine.console_log)
    assert "Kernel panic" in str(err) and str(machine.console_log) in str(err)
    # fails at once, not at the boot timeout
    assert machine.timeline.marks[tl.INIT] < 30


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
