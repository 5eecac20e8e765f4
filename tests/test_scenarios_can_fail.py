"""Every scenario family can fail: run it against a reference image broken on purpose and
check the right scenario fails, with a message that names the cause.

A broken image is the reference image with a second cpio archive appended to its initrd
(the kernel unpacks them in order, later files win) that replaces os-config.yml: the
service definitions, not the checks, are what is broken.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lab.refimage import build

pytestmark = pytest.mark.refimage
ROOT = Path(__file__).resolve().parent.parent
OS_CONFIG = build.GUEST / "rootfs/usr/share/ros/os-config.yml"


def broken_image(tmp: Path, breakage: Callable[[dict], None]) -> Path:
    image = build.ensure_image("x86_64")
    text = OS_CONFIG.read_text().replace("@IMAGE@", f"roslab/os-base:{build.OS_VERSION}")
    config = yaml.safe_load(text)
    breakage(config["rancher"]["services"])
    overlay = tmp / "overlay"
    (overlay / "usr/share/ros").mkdir(parents=True)
    (overlay / "usr/share/ros/os-config.yml").write_text(yaml.safe_dump(config))
    out = tmp / "image"
    out.mkdir()
    for name in ("vmlinuz", "manifest.json"):
        shutil.copy2(image / name, out / name)
    cpio = subprocess.run(
        "find . | cpio --quiet -o -H newc", shell=True, cwd=overlay, capture_output=True, check=True
    ).stdout
    with open(out / "initrd", "wb") as fh, open(image / "initrd", "rb") as base:
        shutil.copyfileobj(base, fh)
        # the kernel takes an appended archive only at a 4-byte boundary; zeros are skipped
        fh.write(b"\0" * (-fh.tell() % 4))
        fh.write(cpio)
    return out


def run_scenario(image: Path, tmp: Path, selection: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            selection,
            "-p",
            "no:cacheprovider",
            "-q",
            "--platform",
            "qemu",
            "--accel",
            "tcg",
            "--image",
            str(image),
            "--roslab-artifacts",
            str(tmp / "results"),
            "-o",
            "console_output_style=classic",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def shared_socket(services: dict) -> None:
    # the "user Docker" is the system Docker's socket under the user's name
    services["docker"]["command"] = (
        "sh -c 'chmod 666 /var/run/system-docker.sock && "
        "ln -sf /var/run/system-docker.sock /var/run/docker.sock "
        "&& exec sleep 2147483647'"
    )


def hostname_ignored(services: dict) -> None:
    services["cloud-init-execute"]["command"] = (
        "sh -c 'cloud-init-execute -pre-console && hostname rancher'"
    )


def ntp_never_starts(services: dict) -> None:
    services["ntp"]["command"] = "false"


@pytest.mark.parametrize(
    ("breakage", "selection", "cause"),
    [
        (
            shared_socket,
            "scenarios/test_docker.py::test_sockets_are_separate",
            "reach the same daemon",
        ),
        (
            hostname_ignored,
            "scenarios/test_cloud_config.py::test_hostname_is_set",
            "cloud-config asked for 'roslab-cc'",
        ),
        (
            ntp_never_starts,
            "scenarios/test_services.py::test_long_running_service_runs_under_system_docker[ntp]",
            "system service 'ntp' does not stay up",
        ),
    ],
    ids=["user-docker-shares-system-socket", "cloud-init-ignores-hostname", "service-never-starts"],
)
def test_scenario_fails_on_a_broken_image(
    tmp_path: Path, breakage: Callable[[dict], None], selection: str, cause: str
) -> None:
    image = broken_image(tmp_path, breakage)
    result = run_scenario(image, tmp_path, selection)
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"expected the scenario to fail:\n{output[-3000:]}"
    assert "1 failed" in output, output[-3000:]
    assert cause in output, f"the failure does not name the cause ({cause!r}):\n{output[-3000:]}"
