"""The labgrid platform against a farm of real parts on loopback (tests/labfarm.py):
a labgrid coordinator and exporter, ser2net, and *QEMU behind ipmi_sim as a physical x86
box* that netboots with iPXE from the lab's HTTP server. One farm for the module; two
boots (one to the login, one whose netboot never gets there) and one interrupted boot.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from interrupt import at_a_terminal  # tests/ is on sys.path (rootdir conftest mode)

from drivers.labgrid import LabgridDriver
from drivers.labgrid.parts import PASSWORD_VARIABLE
from drivers.labgrid.place import PlaceTaken
from drivers.machines import make_machine, resolve_image
from lab import timeline as tl
from lab.errors import BootTimeout, ImageError, LabError, PlatformError
from lab.images import DISK, Image
from lab.machine import Machine
from lab.ssh import KeyPair
from tests.labfarm import BOARD, Farm

pytestmark = pytest.mark.xdist_group("labgrid-farm")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("farm")).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSWORD_VARIABLE, farm.password)
        try:
            yield farm
        finally:
            farm.stop()


@pytest.fixture(scope="module")
def reference() -> Image:
    return resolve_image(None, "x86_64")  # resolving asks apt for versions: once per module


def holder(farm: Farm, place: str = "box") -> str:
    for block in farm.client("-v", "places").split("Place '")[1:]:
        if block.startswith(f"{place}'"):
            return block.split("acquired:")[1].split("\n")[0].strip()
    raise AssertionError(f"no place {place}")


def machine_on(farm: Farm, tmp_path: Path, image: Image, place: str = "box",
               **opts: Any) -> Machine:
    return make_machine("labgrid", image, "x86_64",
                        {"hostname": "netbooted-box"}, "url", tmp_path, "auto",
                        platform_options=farm.options(place), **opts)


def test_bad_coordinator_and_place_are_named_before_anything_starts(farm: Farm,
                                                                    reference: Image) -> None:
    dead = LabgridDriver.not_ready({"place": "box", "labgrid_coordinator": "127.0.0.1:9"})
    assert dead is not None and "coordinator at 127.0.0.1:9 does not answer" in dead
    unknown = LabgridDriver.not_ready({**farm.options(), "place": "nosuch"})
    assert unknown is not None and "no place 'nosuch'" in unknown and "box-deadbmc" in unknown
    assert "--place" in (LabgridDriver.not_ready({}) or "")
    assert LabgridDriver.not_ready(farm.options()) is None
    caps = LabgridDriver.capabilities_for(reference, "x86_64")
    assert (caps.board, caps.ssh, caps.datasources) == (BOARD, True, ("url",))
    assert caps.lacks("power_button")


@pytest.mark.parametrize("place, expected", [
    ("box-deadbmc", r"does not answer \(IPMI over LAN"),
    ("box-deadconsole", "console port"),
])
def test_dead_bmc_or_console_is_named_before_power_on_and_the_place_released(
        farm: Farm, reference: Image, tmp_path: Path, place: str, expected: str) -> None:
    machine = machine_on(farm, tmp_path, reference, place)
    with pytest.raises(PlatformError, match=expected):
        try:
            machine.boot()
        finally:
            machine.stop()
    assert holder(farm, place) == "None"
    assert not farm.box_running()


def test_wrong_bmc_password_is_named_and_never_quoted(farm: Farm, reference: Image,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_VARIABLE, "not-the-bmc-password")
    machine = machine_on(farm, tmp_path, reference)
    with pytest.raises(PlatformError, match="refused the lab's credentials") as err:
        try:
            machine.boot()
        finally:
            machine.stop()
    assert "not-the-bmc-password" not in str(err.value)
    assert holder(farm) == "None" and not farm.box_running()


def test_a_held_place_names_its_holder_and_can_be_waited_for(farm: Farm, reference: Image,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, "LG_USERNAME": "alice"}
    lg = [str(Path(sys.executable).parent / "labgrid-client"), "-x", farm.coordinator,
          "-p", "box"]
    subprocess.run([*lg, "acquire"], env=env, check=True, capture_output=True)
    try:
        machine = machine_on(farm, tmp_path, reference)
        with pytest.raises(PlaceTaken, match=r"held by .*/alice.*--wait-place"):
            try:
                machine.boot()
            finally:
                machine.stop()
        assert holder(farm).endswith("/alice")
        # alice releases 3 s into a 60 s wait: the run gets the place
        releaser = subprocess.Popen(["sh", "-c", f"sleep 3; exec {' '.join(lg)} release"],
                                    env=env, stdout=subprocess.DEVNULL)
        from drivers.labgrid.place import Session

        session = Session(farm.coordinator)
        try:
            started = time.monotonic()
            session.acquire("box", wait=60)
            assert 2 < time.monotonic() - started < 30
            assert holder(farm) == session.me
            session.release("box")
        finally:
            session.close()
            releaser.wait(10)
    finally:
        subprocess.run([*lg, "release", "--kick"], env=env, capture_output=True)
    assert holder(farm) == "None"


def test_box_netboots_to_the_login_with_the_runs_cloud_config(farm: Farm, reference: Image,
                                                              tmp_path: Path) -> None:
    key = KeyPair.generate(tmp_path / "ssh")
    with machine_on(farm, tmp_path, reference, ssh_key=key) as machine:
        machine.boot()
        assert holder(farm) != "None"  # held for the run
        assert machine.run("hostname").output == "netbooted-box"  # cloud-config by url:
        marks = machine.timeline.marks
        # firmware + DHCP, then the transfer, then the kernel: visible in that order
        assert 0 < marks[tl.NETBOOT] < marks[tl.NETBOOT_LOADED] < marks[tl.KERNEL]
        assert marks[tl.LOGIN_PROMPT] > marks[tl.INIT]
        assert machine.info["place"] == "box" and machine.info["board"] == BOARD
        assert machine.ssh().run("echo ok").stdout.strip() == "ok"  # the place's NetworkService
        log = machine.console_log.read_text()
        assert "Linux version" in log and machine.password not in log
    assert holder(farm) == "None"
    assert not farm.box_running()


def test_netboot_that_never_reaches_the_login_fails_bounded_and_powers_off(
        farm: Farm, reference: Image, tmp_path: Path) -> None:
    broken = tmp_path / "image"
    broken.mkdir()
    for name in ("vmlinuz", "initrd"):
        (broken / name).symlink_to(reference.path / name)
    script = (reference.path / "rancheros.ipxe").read_text()
    (broken / "rancheros.ipxe").write_text(script.replace("/vmlinuz", "/vmlinuz-missing"))
    machine = machine_on(farm, tmp_path, Image.open(broken), boot_timeout=25.0)
    started = time.monotonic()
    with pytest.raises(BootTimeout) as err:
        try:
            machine.boot()
        finally:
            machine.stop()
    assert time.monotonic() - started < 90
    assert err.value.milestone == tl.NETBOOT  # the box asked for its script, no further
    assert "log" in err.value.render()
    assert holder(farm) == "None" and not farm.box_running()


def test_ctrl_c_during_boot_powers_off_and_releases(farm: Farm, reference: Image,
                                                    tmp_path: Path) -> None:
    program = textwrap.dedent(f"""
        from pathlib import Path
        from drivers.machines import make_machine
        m = make_machine("labgrid", {str(reference.path)!r}, "x86_64", None, "url",
                         Path({str(tmp_path)!r}), "auto",
                         platform_options={farm.options()!r})
        try:
            m.boot()
        finally:
            m.stop()
    """)
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=at_a_terminal)
    try:
        deadline = time.monotonic() + 60
        while not farm.box_running() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert farm.box_running(), proc.stdout.read().decode() if proc.poll() else ""
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in output
    assert holder(farm) == "None" and not farm.box_running()


def test_a_place_option_is_required(farm: Farm, tmp_path: Path) -> None:
    with pytest.raises(LabError, match="--place"):
        machine = make_machine("labgrid", None, "x86_64", None, "url", tmp_path, "auto")
        try:
            machine.boot()
        finally:
            machine.stop()


def test_environment_file_mistakes_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert "no such file" in (LabgridDriver.not_ready({"labgrid_env": str(missing)}) or "")
    env = tmp_path / "env.yaml"
    env.write_text("targets:\n  bench-box:\n    resources:\n"
                   "      IPMIPowerPort: {host: 127.0.0.1, port: 9, username: admin}\n")
    assert "has no target 'main' (has: bench-box)" in (
        LabgridDriver.not_ready({"labgrid_env": str(env)}) or "")
    why = LabgridDriver.not_ready({"labgrid_env": str(env), "labgrid_role": "bench-box"})
    assert why is not None and "no serial port resource" in why


def _holder_process(farm: Farm, place: str, user: str) -> subprocess.Popen[str]:
    """A live process of `user` on this host that has acquired `place` as a run does."""
    program = ("from drivers.labgrid.place import Session\n"
               f"s = Session({farm.coordinator!r}); s.acquire({place!r}, 0)\n"
               "print('held', flush=True); import time; time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "LG_USERNAME": user})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _tags(farm: Farm, place: str) -> dict[str, str]:
    from drivers.labgrid.place import Session

    session = Session(farm.coordinator)
    try:
        session.sync()
        return dict(session.place(place).tags)
    finally:
        session.close()


def test_gc_releases_only_places_of_dead_runs_of_this_host_and_user(
        farm: Farm, reference: Image, tmp_path: Path) -> None:
    from drivers.labgrid import HOLDER_TAG

    me = f"{socket.gethostname()}/{getpass.getuser()}"
    assert LabgridDriver.not_ready(farm.options()) is None  # as a run starts: the box's facts
    # a roslab run SIGKILLed while its box boots: no finalizer releases the place
    program = textwrap.dedent(f"""
        from pathlib import Path
        from drivers.machines import make_machine
        m = make_machine("labgrid", {str(reference.path)!r}, "x86_64", None, "url",
                         Path({str(tmp_path)!r}), "auto",
                         platform_options={farm.options()!r})
        m.boot()
    """)
    run = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not farm.box_running() and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[0][-2000:]
            time.sleep(0.5)
    finally:
        run.kill()
        run.wait()
    farm.ipmi("chassis", "power", "off")  # what the dead run left on
    assert holder(farm) == me
    assert _tags(farm, "box")[HOLDER_TAG].startswith(f"{run.pid}_")
    # the next run is told why the place is still held, and what frees it
    (tmp_path / "next").mkdir()
    machine = machine_on(farm, tmp_path / "next", reference)
    with pytest.raises(PlaceTaken, match=r"died: `roslab gc --platform labgrid`"):
        try:
            machine.boot()
        finally:
            machine.stop()
    alice = _holder_process(farm, "box-deadbmc", "alice")
    alice.kill()  # someone else's dead run
    alice.wait()
    live = _holder_process(farm, "box-deadconsole", me.split("/")[1])  # a live run, ours
    try:
        gc_cmd = [sys.executable, "-m", "commands.cli", "gc", "--platform", "labgrid",
                  "--labgrid-coordinator", farm.coordinator]
        env = {**os.environ, "TMPDIR": str(tmp_path)}  # not the host's other scratch folders
        listed = subprocess.run([*gc_cmd, "--dry-run"], cwd=ROOT, env=env,
                                capture_output=True, text=True)
        assert listed.stdout.startswith("would remove labgrid place box (run "), listed
        assert f"roslab process {run.pid}, now dead" in listed.stdout
        assert "roslab gc: 1 found on labgrid" in listed.stdout, listed.stdout
        assert holder(farm) == me, "a dry run releases nothing"
        swept = subprocess.run(gc_cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert "roslab gc: 1 removed on labgrid" in swept.stdout, swept.stdout + swept.stderr
        assert holder(farm) == "None" and HOLDER_TAG not in _tags(farm, "box")
        assert holder(farm, "box-deadbmc").endswith("/alice")
        assert holder(farm, "box-deadconsole") == me
    finally:
        live.kill()
        live.wait()
        for place in ("box-deadbmc", "box-deadconsole"):
            subprocess.run([str(Path(sys.executable).parent / "labgrid-client"), "-x",
                            farm.coordinator, "-p", place, "release", "--kick"],
                           capture_output=True)


def test_a_box_boots_its_installed_disk_through_an_environment_file(
        reference: Image, tmp_path: Path) -> None:
    """A second stand-in box, `box-disk` (QEMU behind ipmi_sim as a physical x86 box, tag
    boot=disk), booting the reference image's rancheros-openstack.img as installed on its
    disk; the run names it by a labgrid environment file whose target is its RemotePlace."""
    from refimage import disks
    from refimage.build import ensure_image

    disk = disks.ensure_disks(ensure_image("x86_64")) / "rancheros-openstack.img"
    before = disk.stat()
    farm = Farm(tmp_path / "farm", disk).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(PASSWORD_VARIABLE, farm.password)
            env = tmp_path / "env.yaml"
            env.write_text(f"targets:\n  bench:\n    resources:\n      RemotePlace:\n"
                           f"        name: box-disk\n"
                           f"options:\n  coordinator_address: {farm.coordinator}\n")
            options = {"labgrid_env": str(env), "labgrid_role": "bench"}
            assert LabgridDriver.not_ready(options) is None
            caps = LabgridDriver.capabilities_for(reference, "x86_64")
            assert caps.image_kinds == (DISK,) and caps.datasources == ()
            assert "state partition" in (caps.lacks("ssh") or "")
            with pytest.raises(ImageError, match="cannot boot a kernel image"):
                make_machine("labgrid", reference, "x86_64", None, "default", tmp_path,
                             "auto", platform_options=options)
            with make_machine("labgrid", Image.open(disk), "x86_64", None, "default",
                              tmp_path, "auto", platform_options=options) as machine:
                machine.boot()
                assert holder(farm, "box-disk") != "None"  # held for the run
                cmdline = machine.run("cat /proc/cmdline", check=True).output
                # what the installer baked, not anything of the lab's
                assert "rancher.cloud_init.datasources=[configdrive]" in cmdline, cmdline
                assert "rancher.password" not in cmdline
                assert tl.NETBOOT not in machine.timeline.marks
                assert machine.info["place"] == "box-disk"
            assert holder(farm, "box-disk") == "None"
            assert not farm.box_running("box-disk")
        after = disk.stat()
        assert (after.st_size, after.st_mtime) == (before.st_size, before.st_mtime)
    finally:
        farm.stop()
