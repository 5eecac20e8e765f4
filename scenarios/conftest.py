"""What scenarios share: the image profile, the boot budgets, and small guest helpers.

Scenarios use only the image contract (DESIGN.md), so they run on any platform whose
driver boots the image and on real RancherOS images; what differs between images
(service list, a local image, log paths) comes from a profile in profiles/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fixtures.guest import wait_boot_complete
from fixtures.options import options
from fixtures.profiles import Profile, profile_of
from lab import timeline as tl
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


BUDGET_PHASES = [*tl.ORDER, "total"]


def _unknown_phases(phases: list[str]) -> list[str]:
    return [p for p in phases if p not in BUDGET_PHASES]


def _check_budgets(path: Path, overrides: list[str]) -> None:
    """Refuse a budget that would silently judge nothing: an unknown phase (a typo) in the
    file or in --budget, a value that is not a positive number."""
    problems = []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise pytest.UsageError(f"roslab: cannot read budgets {path}: {exc}") from None

    def walk(node: object, where: str) -> None:
        if not isinstance(node, dict):
            problems.append(f"{where}: expected a mapping, got {node!r}")
            return
        if node and all(not isinstance(v, dict) for v in node.values()):  # a budget row
            for phase, seconds in node.items():
                if phase not in BUDGET_PHASES:
                    problems.append(f"{where}: unknown phase {phase!r}")
                elif isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                        or seconds <= 0:
                    problems.append(f"{where}.{phase}: {seconds!r} is not a positive number")
            return
        for key, value in node.items():
            walk(value, f"{where}.{key}" if where else str(key))

    walk(data, "")
    for item in overrides:
        phase, eq, seconds = item.partition("=")
        try:
            ok = bool(eq) and float(seconds) > 0
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"--budget {item!r}: expected PHASE=SECONDS (a positive number)")
        elif phase not in BUDGET_PHASES:
            problems.append(f"--budget {item!r}: unknown phase {phase!r}")
    if problems:
        raise pytest.UsageError(
            f"roslab: bad boot budgets ({path}):\n  " + "\n  ".join(problems)
            + f"\nknown phases: {', '.join(BUDGET_PHASES)}")


def pytest_configure(config: pytest.Config) -> None:
    _check_budgets(config.getoption("--budgets"), config.getoption("--budget"))


@pytest.fixture(scope="session")
def profile(pytestconfig: pytest.Config) -> Profile:
    """What this image is expected to have (services, local image, log paths)."""
    return profile_of(pytestconfig)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # service names come from the profile, so each service is its own test case
    for argname, attr in (("running_service", "running"), ("completed_service", "completed")):
        if argname in metafunc.fixturenames:
            names = getattr(profile_of(metafunc.config), attr)
            metafunc.parametrize(argname, names, ids=names)


@pytest.hookimpl(tryfirst=True)  # before the lab reads the markers (groups, boots ahead)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A module whose machine's cloud-config names what the profile says (a versioned
    image) gives `cloud_config_for(profile)`: it is its tests' marker from collection on,
    so the lab knows every test's machine before any boots."""
    for item in items:
        make = getattr(getattr(item, "module", None), "cloud_config_for", None)
        if make is not None and item.get_closest_marker("cloud_config") is None:
            item.add_marker(pytest.mark.cloud_config(make(profile_of(config))))


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
    for item in pytestconfig.getoption("--budget"):  # checked at configure time
        phase, _, seconds = item.partition("=")
        table[phase] = float(seconds)
    return table


@pytest.fixture
def machine(request: pytest.FixtureRequest, machine: Machine, profile: Profile) -> Machine:
    """The plugin's machine, once boot is complete: the user Docker answers and the one-shot
    services have finished. Login comes earlier than that on RancherOS-style images, and
    checks of services or Docker made at the login prompt would race the boot."""
    if request.node.get_closest_marker("measures_boot") is not None:
        return machine  # the boot scenarios time these waits themselves
    return wait_boot_complete(machine, profile)
