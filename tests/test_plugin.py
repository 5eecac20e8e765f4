"""The plugin end to end, in a pytest subprocess booting tiny guests.

Each run gets a private TMPDIR, so "nothing left" is checked exactly: no QEMU whose
command line names that directory, no file left in it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from interrupt import (  # tests/ is on sys.path (rootdir conftest mode)
    at_a_terminal,
    emulators_under,
    nothing_left,
)

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = '''
import time, pathlib, pytest
cloud_config = "#cloud-config\\nhostname: plug\\n"

SEEN = {{}}

def test_pass(machine):
    assert machine.run("echo hi").output == "hi"
    SEEN["boot"] = machine.run("cat /proc/sys/kernel/random/boot_id").output

def test_shared(machine):
    # the same guest, not another one booted with the same cloud-config
    assert machine.run("cat /proc/sys/kernel/random/boot_id").output == SEEN["boot"]

@pytest.mark.platforms("libvirt")
def test_skipped_elsewhere(machine):
    raise AssertionError("must not run")

def test_{name}(machine):
    {body}
'''


def _nothing_left(scratch: Path) -> None:
    nothing_left(scratch)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("pytest-of-")] == []


def _run(tmp_path: Path, image: Path | str, body: str = "pass", *args: str,
         name: str = "last", wait_for: Path | None = None) -> tuple[subprocess.Popen[str], Path]:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    test = tmp_path / "test_scn.py"
    test.write_text(SCENARIO.format(name=name, body=body))
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(test), "-p", "no:cacheprovider", "-q",
         "--platform", "qemu", "--image", str(image), "--accel", "tcg",
         "--roslab-artifacts", str(tmp_path / "results"), "--rootdir", str(tmp_path), *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=at_a_terminal,  # as a developer runs it, so Ctrl-C reaches it
    )
    return proc, scratch


def test_passing_run_leaves_nothing(tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    proc, scratch = _run(tmp_path, tiny_guests["shell"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "3 passed, 1 skipped" in out
    _nothing_left(scratch)


def test_failing_run_keeps_the_console_log_and_leaves_nothing(
    tmp_path: Path, tiny_guests: dict[str, Path]
) -> None:
    proc, scratch = _run(tmp_path, tiny_guests["shell"], "assert machine.run('false').ok",
                         name="fails")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    kept = tmp_path / "results" / "test_scn.py_test_fails"
    logs = list(kept.glob("*/console.log"))
    assert logs and "Linux version" in logs[0].read_text()
    assert f"console log of {logs[0].parent.name}: {logs[0]}" in out
    _nothing_left(scratch)


def test_interrupted_run_leaves_nothing(tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    flag = tmp_path / "booted"
    body = f"pathlib.Path({str(flag)!r}).touch(); time.sleep(300)"
    proc, scratch = _run(tmp_path, tiny_guests["shell"], body, name="hangs")
    deadline = time.monotonic() + 240
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, _ = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in out
    _nothing_left(scratch)


def test_boot_failure_keeps_evidence_and_errors_the_rest_of_the_module(
    tmp_path: Path, tiny_guests: dict[str, Path]
) -> None:
    junit, allure = tmp_path / "junit.xml", tmp_path / "allure-results"
    proc, scratch = _run(tmp_path, tiny_guests["panic"], "pass", f"--junitxml={junit}",
                         f"--alluredir={allure}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "GuestPanic" in out and "Kernel panic" in out
    # one boot: the module's other tests are errors at once, naming the first failure
    assert "3 errors" in out and "1 skipped" in out, out  # the skip is the libvirt-only one
    assert str(tmp_path / "results") in out
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    for name in ("test_shared", "test_last"):
        error = cases[name].find("error")
        assert error is not None, f"{name} is not an error in JUnit"
        assert "first failure: test_scn.py::test_pass" in error.get("message", ""), \
            error.get("message")
        assert "guest kernel panic" in error.get("message", "")
    results = [json.loads(p.read_text()) for p in allure.glob("*-result.json")]
    broken = {r["name"]: r for r in results if r["status"] == "broken"}
    assert {"test_pass", "test_shared", "test_last"} <= set(broken), results
    assert "first failure: test_scn.py::test_pass" in broken["test_last"]["statusDetails"][
        "message"]
    _nothing_left(scratch)


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--platform", "vmware"), "unknown platform 'vmware': known platforms are qemu"),
     (("--image", "/no/such/image"), "image /no/such/image does not exist"),
     (("--arch", "riscv64"), "unknown arch 'riscv64'"),
     (("--cpus", "0"), "--cpus 0: a machine needs at least one vCPU")],
)
def test_bad_options_stop_before_any_machine(tmp_path: Path, tiny_guests: dict[str, Path],
                                             args: tuple[str, ...], message: str) -> None:
    proc, scratch = _run(tmp_path, tiny_guests["shell"], "pass", *args)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    assert message in out
    _nothing_left(scratch)


def test_a_host_without_qemu_is_told_which_package_to_install(
        tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    # every command of this host but QEMU's emulators
    path = tmp_path / "bin"
    path.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(folder).iterdir():
            if not tool.name.startswith("qemu-system-") and not (path / tool.name).exists():
                (path / tool.name).symlink_to(tool)
    (tmp_path / "test_boots.py").write_text("def test_boots(machine):\n    pass\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "test_boots.py"), "-p",
         "no:cacheprovider", "--platform", "qemu", "--image", str(tiny_guests["shell"]),
         "--accel", "tcg", "--rootdir", str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "PATH": str(path)}, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "qemu-system-x86_64 is not installed: install the package qemu-system-x86" in (
        proc.stdout + proc.stderr)
    assert "INTERNALERROR" not in proc.stdout + proc.stderr


def test_wrong_arch_image_stops_before_any_machine(tmp_path: Path,
                                                   tiny_guests: dict[str, Path]) -> None:
    folder = tmp_path / "arm"
    folder.mkdir()
    (folder / "vmlinuz").write_bytes(bytes(0x38) + b"ARM\x64" + bytes(8))
    (folder / "initrd").write_bytes(b"")
    proc, scratch = _run(tmp_path, folder)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    assert "is an arm64 Image (aarch64), but this run is for x86_64" in out
    _nothing_left(scratch)


def test_malformed_cloud_config_marker_stops_before_any_machine(
    tmp_path: Path, tiny_guests: dict[str, Path]
) -> None:
    body = ("pass\n\n@pytest.mark.cloud_config('#cloud-config\\nhostname: [x\\n')\n"
            "def test_bad(machine):\n    pass")
    proc, scratch = _run(tmp_path, tiny_guests["shell"], body)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    assert "test_bad: cloud-config is not valid YAML at line 3, column 1" in out
    assert "no machine started" in out
    _nothing_left(scratch)


def test_xdist_two_workers(tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    proc, scratch = _run(tmp_path, tiny_guests["shell"], "pass", "-n", "2", "-v")  # -q -v: a header
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "3 passed, 1 skipped" in out
    assert "no booting ahead (the xdist workers overlap their boots instead)" in out
    _nothing_left(scratch)


FRESH = """
import time
import pytest

SEEN = {}

@pytest.mark.fresh_machine
def test_first_copy(machine):
    assert machine.info["started"] == "restored"
    marks = machine.timeline.marks
    assert "restored" in marks and "kernel" not in marks, marks  # a restore, not a boot
    assert "Linux version" not in machine.console_log.read_text()  # a log of its own
    assert abs(int(machine.run("date +%s", check=True).output) - time.time()) < 10
    machine.run("echo first > /tmp/mine", check=True)
    SEEN["first"] = (machine.driver.ssh_endpoint(), machine.workdir)

@pytest.mark.fresh_machine
def test_second_copy_is_of_the_saved_machine(machine):
    assert machine.info["started"] == "restored"
    assert machine.run("cat /tmp/mine").rc != 0, "the first copy's change leaked"
    assert (machine.driver.ssh_endpoint(), machine.workdir) != SEEN["first"]
    assert machine.run("hostname", check=True).output == "tiny"
"""


def _run_module(tmp_path: Path, text: str, image: Path,
                *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the scenario module `text` on `image` to the end: (its pytest, its TMPDIR)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    (tmp_path / "test_module.py").write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "test_module.py"), "-p",
         "no:cacheprovider", "--platform", "qemu", "--image", str(image), "--accel", "tcg",
         "--rootdir", str(tmp_path), *args],
        cwd=tmp_path, env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True,
        text=True, timeout=600,
    )
    return proc, scratch


def test_fresh_machines_are_restored_copies(tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    """Two fresh_machine tests: one boot (the saved template), two restored copies that
    do not see each other's changes, each with its own SSH port, work folder and log."""
    proc, scratch = _run_module(tmp_path, FRESH, tiny_guests["shell"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
    # the header says how many machines may run at once, and why
    assert re.search(r"roslab: up to \d+ machines at once, \d+ starting at once \(\d+ emulator "
                     r"thread\(s\) a machine\), shared by all workers \(memory: ",
                     proc.stdout), proc.stdout
    # and how large they are, and why
    assert re.search(r"roslab: machines get \d vCPU\(s\) \(\d+ core\(s\) for 2 machines side "
                     r"by side; --cpus N sets it\)", proc.stdout), proc.stdout
    _nothing_left(scratch)


def test_fresh_machines_of_one_cloud_config_share_a_worker(
        tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    """Under -n 2 both copies come from one saved machine: were they sent to two workers,
    each worker would boot a template of its own, and restoring would save no boot."""
    proc, scratch = _run_module(tmp_path, FRESH, tiny_guests["shell"], "-n", "2", "--dist",
                                "loadgroup", "-v")  # as the project's pytest addopts say
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers = set(re.findall(r"\[(gw\d)\] \[ *\d+%\] PASSED", proc.stdout))
    assert len(workers) == 1, proc.stdout
    _nothing_left(scratch)


SAVED_AS_IT_GOES_ON = """
from pathlib import Path
import pytest

cloud_config = "#cloud-config\\nhostname: tiny\\n"
SEEN = {}

def _config_drive(folder):
    return (Path(folder) / "config-2.iso").stat().st_ino

def test_shared(machine):
    SEEN["shared"] = machine
    machine.run("echo shared > /tmp/mine", check=True)

@pytest.mark.fresh_machine
def test_copy_of_the_modules_machine(machine):
    assert machine.info["started"] == "restored"
    # the saved config drive is the module machine's own file: no template was booted
    assert _config_drive(machine.info["snapshot"]) == _config_drive(SEEN["shared"].workdir)
    assert machine.run("cat /tmp/mine").rc != 0, "saved after the first test wrote"

def test_the_modules_machine_went_on(machine):
    assert machine is SEEN["shared"]
    assert machine.run("cat /tmp/mine").output == "shared"
"""


def test_fresh_machines_are_copies_of_the_modules_machine(
        tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    """A module whose shared machine has the fresh_machine tests' cloud-config: that machine
    is saved as it boots and goes on, and the fresh tests get copies of it, so no machine
    is booted only to be saved."""
    proc, scratch = _run_module(tmp_path, SAVED_AS_IT_GOES_ON, tiny_guests["shell"])
    assert "3 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    _nothing_left(scratch)


EXCLUSIVE = """
import pytest

cloud_config = "#cloud-config\\nhostname: excl\\n"

def test_shared(machine):
    assert machine.run("echo hi").output == "hi"

@pytest.mark.fresh_machine
def test_own(machine):
    assert machine.run("echo mine").output == "mine"

def test_shared_again(machine):
    assert machine.run("echo back").output == "back"
"""


def test_a_fresh_machine_gets_what_only_one_machine_can_hold(
        tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    """The CloudStack stand-in must listen on the host's port 80 (slirp's host address):
    a fresh machine's stand-in gets it from the idle shared machine, which is stopped
    first and booted again for the next shared test, instead of failing to listen."""
    proc, scratch = _run_module(tmp_path, EXCLUSIVE, tiny_guests["shell"],
                                "--datasource", "cloudstack")
    assert "3 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    _nothing_left(scratch)


AHEAD = """
import time
import pytest

SEEN = {}

@pytest.mark.cloud_config("#cloud-config\\nhostname: first\\n")
def test_first_machine(machine):
    assert "booted_ahead" not in machine.info  # nothing ran before it to boot it beside
    time.sleep(1)
    SEEN["first_done"] = time.monotonic()

@pytest.mark.cloud_config("#cloud-config\\nhostname: second\\n")
def test_second_machine(machine, pytestconfig):
    ahead = not pytestconfig.getoption("no_boot_ahead")
    assert machine.info.get("booted_ahead", False) is ahead
    # booted ahead: it started while the first test ran; else: after that test ended
    assert (machine.timeline.t0 < SEEN["first_done"]) is ahead
"""


@pytest.mark.parametrize("flag", [(), ("--no-boot-ahead",)], ids=["ahead", "turned-off"])
def test_the_next_machine_boots_while_the_tests_use_this_one(
        tmp_path: Path, tiny_guests: dict[str, Path], flag: tuple[str, ...]) -> None:
    # one vCPU: its boot takes one of the host's cores, leaving one to boot ahead on
    proc, scratch = _run_module(tmp_path, AHEAD, tiny_guests["shell"], "--cpus", "1", *flag)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    said = r"no booting ahead \(--no-boot-ahead\)" if flag else r"roslab: boots ahead up to \d+ "
    assert re.search(said, proc.stdout), proc.stdout
    _nothing_left(scratch)


def test_modules_that_boot_their_own_machines_run_first_when_booting_ahead(
        tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    """Serial and booting ahead: a module with a boot_machine test runs before the modules
    that only share machines (whose machines boot beside it); without booting ahead, or
    under xdist, the order stays as collected."""
    (tmp_path / "test_a_shares.py").write_text("def test_shares(machine):\n    pass\n")
    (tmp_path / "test_b_own.py").write_text("def test_own(boot_machine):\n    pass\n")
    (tmp_path / "test_c_shares.py").write_text("def test_also(machine):\n    pass\n")

    def order(*args: str) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
             "--platform", "qemu", "--image", str(tiny_guests["shell"]), "--accel", "tcg",
             "--cpus", "1", "--rootdir", str(tmp_path), str(tmp_path), *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line]

    assert order() == ["test_b_own.py", "test_a_shares.py", "test_c_shares.py"]
    for collected_order in (("--no-boot-ahead",), ("-n", "2")):
        assert order(*collected_order) == ["test_a_shares.py", "test_b_own.py",
                                           "test_c_shares.py"], collected_order


def test_interrupted_while_a_machine_boots_ahead_leaves_nothing(
        tmp_path: Path, tiny_guests: dict[str, Path]) -> None:
    flag = tmp_path / "booted"
    body = (f"pathlib.Path({str(flag)!r}).touch(); time.sleep(300)\n\n"
            "@pytest.mark.cloud_config('#cloud-config\\nhostname: next\\n')\n"
            "def test_next(machine):\n    pass")
    # one vCPU: its boot takes one of the host's cores, so the next machine boots ahead
    proc, scratch = _run(tmp_path, tiny_guests["shell"], body, "--cpus", "1", name="hangs")
    deadline = time.monotonic() + 240
    while not flag.exists() or len(emulators_under(scratch)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # the next test's machine is booting or booted
    out, _ = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in out
    _nothing_left(scratch)
