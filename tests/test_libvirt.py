"""The libvirt driver against a real libvirtd the tests start (tests/libvirtd.py).

Profile XML is checked without a daemon; the rest boots tiny guests (~4 s each under
TCG) on one libvirtd per module.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from interrupt import at_a_terminal, interrupt_when

from drivers.libvirt import HW_PROFILES, LibvirtDriver, domain_xml, hw_profile, profile_gaps
from drivers.machines import make_machine
from lab.driver import MachineSpec
from lab.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _xml(tmp_path: Path, hw: str, media: dict) -> ET.Element:
    spec = MachineSpec(name="t", arch="x86_64", image=None, workdir=tmp_path,  # type: ignore[arg-type]
                       cloud_config=None, datasource="none", password="x")
    text = domain_xml("t", spec, hw_profile(hw), media, 2222, str(tmp_path / "serial.raw"),
                      {"created-by": "roslab", "roslab-run-id": "r1", "roslab-expires": "9"})
    return ET.fromstring(text)


def test_vmware_profile_shows_vmware_hardware(tmp_path: Path) -> None:
    root = _xml(tmp_path, "vmware", {"disk": "/w/overlay.qcow2", "cdrom": "/w/boot.iso",
                                     "drives": ["/w/config-2.iso"]})
    args = [a.get("value") for a in root.iter() if a.tag.endswith("}arg")]
    assert any(a.startswith("vmxnet3,") for a in args)
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in " ".join(args)
    assert root.find("devices/controller[@type='scsi']").get("model") == "vmpvscsi"
    buses = {(d.get("device"), d.find("target").get("bus")) for d in root.iter("disk")}
    assert buses == {("disk", "scsi"), ("cdrom", "ide")}
    # each SCSI disk its own target at LUN 0 (pvscsi refuses LUN 1)
    scsi = [(d.find("target").get("dev"), d.find("address").get("target"),
             d.find("address").get("unit")) for d in root.iter("disk")
            if d.find("target").get("bus") == "scsi"]
    assert scsi == [("sda", "0", "0"), ("sdb", "1", "0")]
    assert root.find("devices/video/model").get("type") == "vmvga"
    assert root.find("sysinfo/system/entry[@name='manufacturer']").text == "VMware, Inc."
    assert root.find("features/acpi") is not None and root.get("type") == "qemu"


def test_default_profile_is_virtio_and_marked(tmp_path: Path) -> None:
    root = _xml(tmp_path, "default", {"kernel": "/w/vmlinuz", "initrd": "/w/initrd",
                                      "cmdline": "console=ttyS0"})
    args = " ".join(a.get("value") for a in root.iter() if a.tag.endswith("}arg"))
    assert "virtio-net-pci," in args
    assert root.find("devices/controller") is None and root.find("sysinfo") is None
    assert root.find("os/cmdline").text == "console=ttyS0"
    marks = {m.get("key"): m.text for m in root.iter() if m.tag.endswith("}mark")}
    assert root.find("metadata/*").get("created", "").isdigit()
    assert marks == {"created-by": "roslab", "roslab-run-id": "r1", "roslab-expires": "9"}


def test_every_profile_builds(tmp_path: Path) -> None:
    for name in HW_PROFILES:
        assert _xml(tmp_path, name, {"disk": "/w/d.qcow2"}).find("devices/serial") is not None


def test_unknown_profile_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown hardware profile 'esx9'.*vmware"):
        hw_profile("esx9")


def test_unreachable_uri_fails_before_anything_is_made(tiny_guests: dict[str, Path],
                                                       tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot reach libvirt at test\\+unix:///nowhere"), \
            make_machine("libvirt", tiny_guests["shell"], "x86_64", None, "none", tmp_path,
                         "tcg", platform_options={"libvirt_uri": "test+unix:///nowhere"}) as m:
        m.boot()
    assert list(tmp_path.iterdir()) == []


def test_profile_gaps_name_each_device_qemu_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HW_PROFILES, "odd", dataclasses.replace(
        HW_PROFILES["vmware"], scsi_model="lsisas9999", video="matrox"))
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    assert profile_gaps("odd", qemu) == (f"hardware profile 'odd' needs what {qemu} does not "
                                         "have: disk controller 'lsisas9999'; video 'matrox'")
    assert profile_gaps("vmware", qemu) == ""


def _doctor(*args: str, cache: Path) -> tuple[list[str], int]:
    """`roslab doctor` output lines and its problem count. An empty cache: no reference
    image, so doctor probes KVM without booting anything."""
    out = subprocess.run([sys.executable, "-m", "commands.cli", "doctor", *args], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ,
                                                              "ROSLAB_CACHE": str(cache)})
    lines = out.stdout.splitlines()
    problems = 0 if lines[-1] == "ready" else int(lines[-1].split()[0])
    assert out.returncode == (1 if problems else 0), out.stderr
    return lines, problems


def test_doctor_unreachable_libvirt_is_info_unless_it_is_the_platform(tmp_path: Path) -> None:
    uri = f"qemu:///system?socket={tmp_path}/no-libvirtd.sock"
    info, info_problems = _doctor("--libvirt-uri", uri, cache=tmp_path)
    need, need_problems = _doctor("--platform", "libvirt", "--libvirt-uri", uri, cache=tmp_path)
    said = f"cannot reach libvirt at {uri}: Failed to connect socket"
    assert any(line.startswith(f"[--] {said}") for line in info), info
    assert any(line.startswith(f"[!!] {said}") for line in need), need
    assert need_problems == info_problems + 1
    fix = need[next(i for i, line in enumerate(need) if said in line) + 1]
    assert fix.strip().startswith("-> systemctl start libvirtd")


# -- with a real libvirtd ------------------------------------------------------------------


@pytest.fixture
def work() -> Iterator[Path]:
    """A scratch folder QEMU (user libvirt-qemu) can reach: pytest's tmp_path is 0700."""
    path = Path(tempfile.mkdtemp(prefix="roslab-libvirt-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _domains(uri: str) -> list[str]:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def test_doctor_lists_the_real_profiles_as_runnable(libvirt_uri: str, tmp_path: Path) -> None:
    lines, _ = _doctor("--platform", "libvirt", "--libvirt-uri", libvirt_uri, cache=tmp_path)
    assert "[ok] libvirt-python importable" in lines
    assert any(line.startswith("[ok] libvirt ") and f"at {libvirt_uri} (runs /" in line
               for line in lines), lines
    for name in ("default", "vmware", "legacy-esxi"):
        assert any(line.startswith(f"[ok] hardware profile {name}: ") for line in lines), lines


def test_profile_device_qemu_lacks_is_refused_before_anything_is_defined(
        libvirt_uri: str, tiny_guests: dict[str, Path], work: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HW_PROFILES, "vmware-next", dataclasses.replace(
        HW_PROFILES["vmware"], nic="vmxnet9"))
    before = _domains(libvirt_uri)
    machine = make_machine("libvirt", tiny_guests["shell"], "x86_64", None, "none", work,
                           "tcg", cpus=1, memory_mb=512,
                           platform_options={"hw": "vmware-next", "libvirt_uri": libvirt_uri})
    with pytest.raises(ConfigError, match=r"hardware profile 'vmware-next' needs what "
                                          r"\S*qemu-system-x86_64 does not have: NIC 'vmxnet9'$"), \
            machine:
        machine.boot()
    assert _domains(libvirt_uri) == before
    assert list(work.iterdir()) == []


def test_an_x86_tcg_guest_gets_one_vcpu_unless_more_are_asked_for(
        tiny_guests: dict[str, Path], tmp_path: Path) -> None:
    # `roslab boot` and `roslab bench` take make_machine's default size
    machine = make_machine("libvirt", tiny_guests["shell"], "x86_64", None, "none", tmp_path,
                           "tcg")
    assert machine.spec.cpus == 1
    assert LibvirtDriver.most_cpus("x86_64", "kvm") is None  # KVM is libvirt's usual case
    assert make_machine("qemu", tiny_guests["shell"], "x86_64", None, "none", tmp_path,
                        "tcg").spec.cpus == 2


def test_an_x86_tcg_guest_of_two_vcpus_is_refused_before_anything_is_defined(
        libvirt_uri: str, tiny_guests: dict[str, Path], work: Path) -> None:
    # libvirt cannot make TCG single-threaded, and multi-threaded TCG can hang an x86 guest
    before = _domains(libvirt_uri)
    machine = make_machine("libvirt", tiny_guests["shell"], "x86_64", None, "none", work,
                           "tcg", cpus=2, memory_mb=512,
                           platform_options={"libvirt_uri": libvirt_uri})
    with pytest.raises(ConfigError, match=r"^2 vCPUs asked for, but .*multi-threaded TCG can "
                                          r"hang an x86 guest .*: use --cpus 1"), machine:
        machine.boot()
    assert _domains(libvirt_uri) == before
    assert list(work.iterdir()) == []


def test_console_stream_and_cleanup(libvirt_uri: str, tiny_guests: dict[str, Path],
                                    work: Path) -> None:
    machine = make_machine("libvirt", tiny_guests["shell"], "x86_64", None, "none", work,
                           "tcg", cpus=1, memory_mb=512, platform_options={"hw": "vmware"})
    driver = machine.driver
    assert isinstance(driver, LibvirtDriver)
    driver.prepare(machine.spec)
    t0 = driver.start()
    try:
        stream, seen = driver.console_stream(), b""
        stream.settimeout(60)
        while b"Linux version" not in seen:
            chunk = stream.recv(4096)
            assert chunk, f"console closed early: {seen[-300:]!r}"
            seen += chunk
        assert time.monotonic() >= t0
        assert machine.name in _domains(libvirt_uri)
    finally:
        machine.stop()
    assert machine.name not in _domains(libvirt_uri)
    assert not machine.workdir.exists()


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from drivers.machines import make_machine
    m = make_machine("libvirt", Path(sys.argv[1]), "x86_64", None, "none", Path(sys.argv[2]),
                     "tcg", cpus=1, memory_mb=512, name="gc-victim")
    m.driver.prepare(m.spec)
    m.driver.start()
    print(m.name, flush=True)
    time.sleep(600)
""")


def test_gc_removes_a_domain_a_killed_run_left(libvirt_uri: str, tiny_guests: dict[str, Path],
                                               work: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tiny_guests["hang"]),
                             str(work)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert name in _domains(libvirt_uri)  # a transient domain outlives its client
    [workdir] = list(work.iterdir())
    roslab = [sys.executable, "-m", "commands.cli", "gc", "--platform", "libvirt",
              "--libvirt-uri", libvirt_uri]
    dry = subprocess.run([*roslab, "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert f"would remove libvirt domain {name}" not in dry.stdout  # not expired yet
    out = subprocess.run([*roslab, "--older-than", "0s"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert f"removed libvirt domain {name}" in out.stdout
    assert name not in _domains(libvirt_uri)
    assert not workdir.exists()



HOLD = '''
def test_waits_for_its_machine(machine):
    pass
'''


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_run_interrupted_mid_boot_leaves_no_domain_file_or_thread(
        how: str, libvirt_uri: str, tiny_guests: dict[str, Path], work: Path) -> None:
    """Ctrl-C (SIGINT to the process group) or a cancelled CI job (SIGTERM) while a libvirt
    domain boots a guest that never reaches a login: the run stops within a bound, and no
    domain, copied kernel, overlay or run folder is left."""
    (work / "test_hold.py").write_text(HOLD)
    scratch = work / "tmp"
    scratch.mkdir()
    scratch.chmod(0o711)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_hold.py",
         f"--rootdir={work}", "--platform", "libvirt", "--libvirt-uri", libvirt_uri,
         "--accel", "tcg", "--image", str(tiny_guests["hang"])],
        cwd=work, env={**os.environ, "TMPDIR": str(scratch)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=at_a_terminal)
    # mid-boot: 2 s after the domain appears, the console bridge's threads are pumping
    out, stopped_in = interrupt_when(proc, lambda: bool(_domains(libvirt_uri)), how,
                                     "no domain was ever defined", wait=120, settle=2)
    assert proc.returncode != 0, out[-3000:]
    assert stopped_in < 30, f"took {stopped_in:.0f} s to stop"
    assert _domains(libvirt_uri) == []
    assert list(scratch.iterdir()) == [], "the run left files behind"


def test_the_console_password_is_not_on_libvirts_qemu_command_line(
        libvirt_uri: str, tiny_guests: dict[str, Path], work: Path) -> None:
    """libvirt's QEMU boots the tiny guest, which logs rancher in only with the password
    from its /proc/cmdline; neither QEMU's arguments (`ps`) nor the domain XML hold it."""
    machine = make_machine("libvirt", tiny_guests["shell"], "x86_64", None, "none", work,
                           "tcg", cpus=1, memory_mb=512,
                           platform_options={"libvirt_uri": libvirt_uri})
    try:
        machine.boot(timeout=180)  # logs in with the password
        password = machine.password
        assert f"rancher.password={password}" in machine.run("cat /proc/cmdline").output
        ps = subprocess.run(["ps", "-e", "-ww", "-o", "args="], capture_output=True,
                            text=True, check=True).stdout
        ours = [line for line in ps.splitlines() if f"guest={machine.name}" in line]
        assert ours and password not in ps
        assert "-readconfig" in ours[0]
        assert password not in (machine.workdir / "domain.xml").read_text()
    finally:
        machine.stop()
