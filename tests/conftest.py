"""Shared fixtures for the lab's own tests: tiny guests and a machine factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from guests import build_guests  # tests/ is on sys.path (rootdir conftest mode)
from libvirtd import held_daemon

from drivers.machines import make_machine
from lab.machine import Machine


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "refimage: boots the reference image (built on first use)")
    config.addinivalue_line("markers", "mutation: boots a mutated reference image per mutant "
                            "(about 30 min under TCG): the nightly runs them (-m mutation), "
                            "the per-commit run leaves them out (-m 'not mutation')")


@pytest.fixture(scope="session")
def tiny_guests() -> dict[str, Path]:
    # no skip when they cannot be built: a lab that cannot fetch a kernel is broken here
    return build_guests()


@pytest.fixture
def make_tiny(tiny_guests: dict[str, Path], tmp_path: Path) -> Iterator[Callable[..., Machine]]:
    """make_tiny(kind, cloud_config=None, datasource="configdrive") -> an unbooted Machine."""
    made: list[Machine] = []

    def make(kind: str, cloud_config: Any = None, datasource: str = "configdrive",
             **opts: Any) -> Machine:
        machine = make_machine("qemu", tiny_guests[kind], "x86_64", cloud_config, datasource,
                               tmp_path, "tcg", cpus=1, memory_mb=512, **opts)
        made.append(machine)
        return machine

    yield make
    for machine in made:
        machine.stop()


@pytest.fixture(scope="module")
def libvirt_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libvirtd of the tests' own (tests/libvirtd.py), one at a time across workers
    (xdist's loadgroup does not keep a module on one worker with pytest 9)."""
    with held_daemon(tmp_path_factory.mktemp("libvirtd")) as uri:
        yield uri
