"""Ownership marks and the expiry rule `roslab gc` applies on every platform."""

from __future__ import annotations

import pytest

from lab import gc
from lab.cli import main
from lab.errors import ConfigError


def test_marks_carry_owner_run_and_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gc.RUN_ID_ENV, "run-1")
    marks = gc.owner_marks(ttl=60, now=1000)
    assert marks == {"created-by": "roslab", "roslab-run-id": "run-1", "roslab-expires": "1060"}


def test_a_run_id_is_made_once_and_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gc.RUN_ID_ENV, raising=False)
    first = gc.run_id()
    assert first and gc.run_id() == first


@pytest.mark.parametrize(("marks", "created", "older_than", "now", "collected"), [
    ({"created-by": "someone-else", "roslab-expires": "0"}, 0, None, 10, False),
    ({"created-by": "roslab", "roslab-expires": "100"}, 0, None, 50, False),
    ({"created-by": "roslab", "roslab-expires": "100"}, 0, None, 100, True),
    ({"created-by": "roslab", "roslab-expires": "100"}, 0, 30, 50, True),
    ({"created-by": "roslab", "roslab-expires": "100"}, 40, 30, 50, False),
    ({"created-by": "roslab", "roslab-expires": "garbled"}, 0, None, 50, True),
])
def test_what_gc_may_take(marks: dict[str, str], created: float, older_than: float | None,
                          now: float, collected: bool) -> None:
    assert (gc.is_garbage(marks, created, older_than, now) is not None) is collected


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800),
                                                ("5h", 18000), ("2d", 172800)])
def test_durations(text: str, seconds: float) -> None:
    assert gc.parse_duration(text) == seconds


def test_a_bad_duration_is_named() -> None:
    with pytest.raises(ConfigError, match="not a duration: '5 hours'"):
        gc.parse_duration("5 hours")


def test_gc_on_qemu_finds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--platform", "qemu", "--dry-run"]) == 0
    assert "0 found on qemu" in capsys.readouterr().out
