"""What scenarios share: the image profile, the boot budgets, and small guest helpers.

Scenarios use only the image contract (DESIGN.md), so they run on any platform whose
driver boots the image and on real RancherOS images; what differs between images
(service list, a local image, log paths) comes from a profile in profiles/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fixtures.guest import system_containers
from fixtures.plugin import options
from fixtures.profiles import Profile, profile_path
from lab.errors import ConfigError
from lab.machine import Machine

HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("roslab")
    group.addoption(
        "--profile",
        default=None,
        help="image profile: a name in scenarios/profiles/ or a YAML file "
        "(default: reference for the reference image, else rancheros)",
    )
    group.addoption(
        "--budgets",
        type=Path,
        default=HERE / "budgets.yml",
        help="boot-phase budgets file (default: scenarios/budgets.yml)",
    )
    group.addoption(
        "--budget",
        action="append",
        default=[],
        metavar="PHASE=SECONDS",
        help="override one phase budget",
    )


def _profile_path(config: pytest.Config) -> Path:
    try:
        return profile_path(config.getoption("--profile"),
                            options(config).resolved_image().manifest)
    except ConfigError as exc:
        raise pytest.UsageError(f"roslab: {exc}") from None


_PROFILE = pytest.StashKey[Profile]()


def get_profile(config: pytest.Config) -> Profile:
    if _PROFILE not in config.stash:
        lab = options(config)
        config.stash[_PROFILE] = Profile.load(
            _profile_path(config), lab.arch, lab.resolved_image().version
        )
    return config.stash[_PROFILE]


@pytest.fixture(scope="session")
def profile(pytestconfig: pytest.Config) -> Profile:
    """What this image is expected to have (services, local image, log paths)."""
    return get_profile(pytestconfig)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # service names come from the profile, so each service is its own test case
    for argname, attr in (("running_service", "running"), ("completed_service", "completed")):
        if argname in metafunc.fixturenames:
            names = getattr(get_profile(metafunc.config), attr)
            metafunc.parametrize(argname, names, ids=names)


@pytest.fixture(scope="session")
def budgets(pytestconfig: pytest.Config) -> dict[str, float]:
    """Phase budgets for this platform, arch and accelerator."""
    lab = options(pytestconfig)
    path: Path = pytestconfig.getoption("--budgets")
    data = yaml.safe_load(path.read_text()) or {}
    accel, _ = lab.resolved_accel()
    board = lab.capabilities().board
    try:
        rows = data[lab.platform][lab.arch]
        if board in rows:  # a platform with several boards per arch keeps a row for each
            rows = rows[board]
        table = dict(rows[accel])
    except KeyError:
        where = "/".join(p for p in (lab.platform, lab.arch, board, accel) if p)
        raise pytest.UsageError(f"roslab: {path} has no budgets for {where}") from None
    for item in pytestconfig.getoption("--budget"):
        phase, _, seconds = item.partition("=")
        try:
            table[phase] = float(seconds)
        except ValueError:
            raise pytest.UsageError(f"roslab: --budget {item!r}: expected PHASE=SECONDS") from None
    return table


@pytest.fixture
def machine(request: pytest.FixtureRequest, machine: Machine, profile: Profile) -> Machine:
    """The plugin's machine, once boot is complete: the user Docker answers and the one-shot
    services have finished. Login comes earlier than that on RancherOS-style images, and
    checks of services or Docker made at the login prompt would race the boot."""
    if getattr(request.module, "MEASURES_BOOT", False):
        return machine  # the boot scenarios time these waits themselves
    if not machine.info.get("boot_complete"):
        machine.wait_for_user_docker(timeout=300)

        def one_shots_done() -> bool:
            states = system_containers(machine)
            return all(not states.get(name, "").startswith("running")
                       for name in profile.completed)

        machine.wait_until(one_shots_done, timeout=120, interval=2)
        machine.info["boot_complete"] = True
    return machine
