"""The labgrid platform's SD-card boot against the farm's Pi box (tests/labfarm_pi.py):
*QEMU raspi3b behind an SD-card file as a Raspberry Pi box*, its card a loop device
exported as labgrid's NetworkUSBMassStorage and written by labgrid's USBStorageDriver
with dd over SSH to a real sshd, its power a REST relay, its console through ser2net.
One farm for the module, one boot to the login; the faults stop before power-on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.labgrid import LabgridDriver
from drivers.machines import make_machine
from lab import timeline as tl
from lab.errors import LabError, PlatformError
from lab.images import Image
from lab.machine import Machine
from refimage.build import ensure_image
from refimage.pi import PI_ZIP
from tests.labfarm import Farm
from tests.labfarm_pi import PI_BOARD

pytestmark = pytest.mark.xdist_group("labgrid-pi-farm")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("pifarm"), pi=True).start()
    try:
        yield farm
    finally:
        farm.stop()


@pytest.fixture()
def exporter_ssh(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab host's ssh finds the exporter's sshd (what ~/.ssh/config says on a farm)."""
    assert farm.pi is not None
    monkeypatch.setenv("PATH", farm.pi.ssh_path())


@pytest.fixture(scope="module")
def pi_zip() -> Image:
    return Image.open(ensure_image("aarch64") / PI_ZIP)  # the release zip, as a user has it


def holder(farm: Farm) -> str:
    block = farm.client("-v", "places").split("Place 'pi'")[1]
    return block.split("acquired:")[1].split("\n")[0].strip()


def pi_machine(farm: Farm, tmp_path: Path, image: Image, place: str = "pi") -> Machine:
    LabgridDriver.not_ready(farm.options(place))  # as the CLI does: the place's capabilities
    return make_machine("labgrid", image, "aarch64", {"hostname": "sd-box"}, "cmdline",
                        tmp_path, "auto", platform_options=farm.options(place))


def test_the_pi_place_says_what_it_boots_and_cannot_do(farm: Farm, pi_zip: Image) -> None:
    assert LabgridDriver.not_ready(farm.options("pi")) is None
    caps = LabgridDriver.capabilities_for(pi_zip, "aarch64")
    assert (caps.board, caps.image_kinds, caps.datasources) == (PI_BOARD, ("sdcard",),
                                                               ("cmdline",))
    assert caps.lacks("ssh") and "NetworkService" in caps.why_not["ssh"]
    assert caps.lacks("power_button") and caps.slowdown == 4.0


def test_exporter_ssh_failing_is_named_before_power_on(farm: Farm, pi_zip: Image,
                                                       tmp_path: Path) -> None:
    # no ssh_config for the exporter: ssh goes to 127.0.0.1:22, where nothing listens
    machine = pi_machine(farm, tmp_path, pi_zip)
    with pytest.raises(PlatformError, match=r"writing the SD card 127\.0\.0\.1:/dev/loop.*"
                                            r"dd over SSH to the exporter host"):
        try:
            machine.boot()
        finally:
            machine.stop()
    assert holder(farm) == "None"
    assert farm.pi is not None and not farm.pi.powered()


def test_a_pi_zip_on_a_box_without_a_card_and_a_kernel_on_the_pi_are_refused(
        farm: Farm, pi_zip: Image, tmp_path: Path) -> None:
    with pytest.raises(LabError, match="sdcard"):
        pi_machine(farm, tmp_path, pi_zip, place="box")
    with pytest.raises(LabError, match="kernel"):
        pi_machine(farm, tmp_path, Image.open(ensure_image("aarch64")))
    assert holder(farm) == "None"


def test_pi_box_boots_the_card_written_through_labgrid_to_the_login(
        farm: Farm, pi_zip: Image, tmp_path: Path, exporter_ssh: None) -> None:
    assert farm.pi is not None
    before = pi_zip.card.stat().st_mtime_ns if pi_zip.card else 0
    with pi_machine(farm, tmp_path, pi_zip) as machine:
        machine.boot()
        assert holder(farm) != "None" and farm.pi.powered()
        marks = machine.timeline.marks
        assert 0 < marks[tl.KERNEL] < marks[tl.INIT] < marks[tl.LOGIN_PROMPT]
        assert machine.info["place"] == "pi" and machine.info["board"] == PI_BOARD
        log = machine.console_log.read_text()
        # the hostname came by the cmdline.txt the lab wrote on the card
        assert "Linux version" in log and "rancher@sd-box" in log
        assert machine.password not in log
        written = (machine.workdir / "cmdline.txt").read_text()
        assert "rancher.password=" in written and "hostname" in written
    assert holder(farm) == "None" and not farm.pi.powered()
    assert pi_zip.card is not None and pi_zip.card.stat().st_mtime_ns == before
    assert not os.path.exists(tmp_path / "sdcard.img")
