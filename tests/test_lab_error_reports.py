"""A lab error is reported as the test's own frames and the error's message (what was
expected, milestone, console lines, log path); the lab's frames only with --tb=long."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = '''
def test_command_times_out(machine):
    machine.run("sleep 30", timeout=1)
'''


def _pytest(tmp_path: Path, image: Path, *args: str) -> str:
    (tmp_path / "test_scn.py").write_text(SCENARIO)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "test_scn.py"), "-p", "no:cacheprovider",
         "--platform", "qemu", "--image", str(image), "--accel", "tcg",
         "--roslab-artifacts", str(tmp_path / "results"), "--rootdir", str(tmp_path), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    return proc.stdout


@pytest.mark.parametrize("tb", ["auto", "long"])
def test_a_failed_command_shows_the_test_and_the_message(tiny_guests: dict, tmp_path: Path,
                                                        tb: str) -> None:
    out = _pytest(tmp_path, tiny_guests["shell"], f"--tb={tb}")
    assert 'machine.run("sleep 30", timeout=1)' in out  # the test's own frame
    assert "did not finish within 1 s" in out
    lab_frames = [line for line in out.splitlines() if "lab/console.py:" in line]
    assert bool(lab_frames) is (tb == "long"), out[-3000:]


def test_a_machine_that_panics_is_its_message_alone(tiny_guests: dict, tmp_path: Path) -> None:
    out = _pytest(tmp_path, tiny_guests["panic"])
    assert "GuestPanic: guest kernel panic" in out or "GuestPanic: guest init was killed" in out
    assert "last milestone reached" in out and "full console log" in out
    assert "lab/console.py:" not in out, out[-3000:]
    assert not any(f"fixtures/{m}.py:" in out for m in (
        "plugin", "options", "scheduling", "pool", "evidence")), out[-3000:]
    assert "BrokenPipeError" not in out  # the emulator's shutdown is not an error
