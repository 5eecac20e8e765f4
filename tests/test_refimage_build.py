"""The reference image build: its artifacts, its cache, and its failures."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interrupt import at_a_terminal  # tests/ is on sys.path (rootdir conftest mode)

from drivers.machines import make_machine
from lab.errors import BuildError
from lab.images import kernel_arch
from refimage import build
from refimage.debs import Apt, Package

pytestmark = pytest.mark.refimage


@pytest.fixture(scope="module")
def image() -> Path:
    return build.ensure_image("x86_64")


def test_artifacts_are_those_of_a_release(image: Path) -> None:
    for name in ("vmlinuz", "initrd", "rancheros.iso", "rancheros.ipxe", "iso-checksums.txt",
                 "manifest.json"):
        assert (image / name).stat().st_size > 0, name
    assert kernel_arch((image / "vmlinuz").read_bytes()[:4096]) == "x86_64"
    manifest = json.loads((image / "manifest.json").read_text())
    for part in ("kernel", "docker", "busybox", "containerd"):
        assert manifest["versions"][part], part
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["inputs_hash"])


def test_iso_checksums_verify_in_the_release_format(image: Path) -> None:
    lines = (image / "iso-checksums.txt").read_text().splitlines()
    seen = set()
    for line in lines:
        m = re.fullmatch(r"(md5|sha1|sha256|sha512): ([0-9a-f]+)  (\S+)", line)
        assert m, f"not in the release format: {line!r}"
        algo, digest, name = m.groups()
        assert hashlib.new(algo, (image / name).read_bytes()).hexdigest() == digest, line
        seen.add(algo)
    assert {"md5", "sha256"} <= seen


def test_second_build_with_the_same_inputs_reuses_the_image(image: Path) -> None:
    before = json.loads((image / "manifest.json").read_text())["built_at"]
    started = time.monotonic()
    again = build.ensure_image("x86_64")
    assert again == image
    assert json.loads((again / "manifest.json").read_text())["built_at"] == before
    print(f"cached build took {time.monotonic() - started:.1f} s")


def test_a_changed_input_changes_the_inputs_hash(tmp_path: Path) -> None:
    pkgs = [Package("docker.io", "20.10.24", "amd64", tmp_path / "d.deb")]
    bumped = [Package("docker.io", "20.10.25", "amd64", tmp_path / "d.deb")]
    assert build.inputs_hash("x86_64", pkgs) != build.inputs_hash("x86_64", bumped)
    assert build.inputs_hash("x86_64", pkgs) != build.inputs_hash("aarch64", pkgs)


def test_build_without_a_package_source_names_what_it_could_not_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROSLAB_CACHE", str(tmp_path))
    apt = Apt("x86_64", mirror="http://127.0.0.1:9/debian")  # nothing listens on port 9
    with pytest.raises(
        BuildError,
        match=r"could not reach the Debian package source "
        r"http://127.0.0.1:9/debian",
    ):
        apt.fetch(["busybox-static"])


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(BuildError, match="unknown arch 'mips'.*x86_64, aarch64"):
        Apt("mips")


def test_interrupted_build_leaves_no_half_artifact(tmp_path: Path, image: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "image", "build", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        preexec_fn=at_a_terminal,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # interrupt in the middle of the build, once files exist
        if "selecting kernel modules" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest
    assert not out.exists(), "an interrupted build left the output folder"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers == [] or all(p.endswith(".lock") for p in leftovers), leftovers
    assert build.read_manifest(out) is None


def test_iso_boots_under_bios_from_the_cdrom_alone(image: Path, tmp_path: Path) -> None:
    # no kernel, no cloud-config, no disk: SeaBIOS, isolinux and the cmdline baked in the ISO
    machine = make_machine("qemu", image / "rancheros.iso", "x86_64", None, "configdrive",
                           tmp_path, "tcg")
    with machine:
        machine.boot()
        assert "BOOT_IMAGE=/boot/vmlinuz" in machine.run("cat /proc/cmdline").output
        assert machine.run("cat /proc/1/comm").output.strip() == "system-dockerd"
