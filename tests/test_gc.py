"""Ownership marks and the expiry rule `roslab gc` applies on every platform."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from commands.cli import main
from lab import gc
from lab.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


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


# -- scratch folders of dead runs --------------------------------------------------------------


def _dead_owner(tmp_path: Path) -> Path:
    """A scratch folder whose process was SIGKILLed."""
    code = "from lab import gc; print(gc.scratch_dir(), flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.stdout is not None
    folder = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait()
    return folder


def test_only_folders_of_dead_runs_are_stale(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dead = _dead_owner(tmp_path)
    (dead / "snapshot").mkdir()
    (dead / "snapshot" / "memory").write_bytes(b"\0" * 2**20)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    live = gc.scratch_dir()
    reused = gc.scratch_dir()  # the pid lives on, but in another process since
    pid, _, run = (reused / gc.OWNER_FILE).read_text().split()
    (reused / gc.OWNER_FILE).write_text(f"{pid} 1 {run}\n")
    # no owner: half made, or an older roslab's whose run may be alive, however old
    ownerless = tmp_path / f"{gc.SCRATCH_PREFIX}old"
    ownerless.mkdir()
    os.utime(ownerless, (time.time() - 86400, time.time() - 86400))

    found = {Path(g.ident): g for g in gc.stale_scratch(dry_run=True, where=tmp_path)}
    assert set(found) == {dead, reused}
    assert found[dead].why == "its run is dead; 1 MiB" and found[dead].run == gc.run_id()
    assert dead.exists(), "a dry run removes nothing"

    assert {Path(g.ident) for g in gc.stale_scratch(where=tmp_path)} == {dead, reused}
    assert sorted(tmp_path.iterdir()) == sorted([live, ownerless])


HOLDS_A_MACHINE = """
import time

def test_holds_its_machine(machine):
    time.sleep(600)
"""


def test_a_sigkilled_run_leaves_its_folder_to_gc_and_the_next_run(
        tiny_guests: dict[str, Path], tmp_path: Path) -> None:
    """A pytest run SIGKILLed while it holds a machine: QEMU dies with it
    (PR_SET_PDEATHSIG), its scratch folder stays; `roslab gc` lists it, and the next run
    removes it."""
    (tmp_path / "test_hold.py").write_text(HOLDS_A_MACHINE)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    lab_run = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir",
               str(tmp_path), str(tmp_path / "test_hold.py"), "--platform", "qemu",
               "--image", str(tiny_guests["shell"]), "--accel", "tcg"]
    run = subprocess.Popen(lab_run, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(scratch.glob(f"{gc.SCRATCH_PREFIX}*/*/qemu.stderr")):
            assert run.poll() is None and time.monotonic() < deadline, "QEMU never started"
            time.sleep(0.2)
        run.kill()  # no finalizer, no atexit
        run.wait()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    [folder] = scratch.glob(f"{gc.SCRATCH_PREFIX}*")
    deadline = time.monotonic() + 10
    while _processes_using(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_using(folder), "QEMU outlived the run that started it"

    listed = subprocess.run([sys.executable, "-m", "commands.cli", "gc", "--platform", "qemu",
                             "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert f"would remove host folder {folder} (run " in listed.stdout, listed.stdout
    assert "its run is dead" in listed.stdout

    nextrun = subprocess.run([*lab_run, "--collect-only"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert f"roslab: removed {folder}, left by run" in nextrun.stdout + nextrun.stderr
    assert not folder.exists()


def _processes_using(folder: Path) -> list[int]:
    """Pids whose command line names `folder` (a QEMU started for it)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(folder).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return pids
