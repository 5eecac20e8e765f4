"""A fake shaped like lab.machine.Machine, for the reports' own unit tests.

It boots nothing: it plays back a timeline and a console log. The reports code reads
only what a Machine records (info, timeline, console_log), so this is enough to test
the bench loop, the history and the pytest plugin without a guest.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drivers import DEFAULT_PLATFORM
from lab.driver import Capabilities
from lab.timeline import Timeline

# what the fake claims it can do: a networked VM, as QEMU's pc and virt boards
CAPABILITIES = Capabilities(arches=("x86_64", "aarch64"), console=True, ssh=True,
                            power_button=True, snapshot=False, datasources=("configdrive",),
                            image_kinds=("kernel",))

DEFAULT_MILESTONES = {
    "kernel": 0.4,
    "init": 1.1,
    "system-docker": 2.0,
    "service:udev": 2.4,
    "service:network": 2.9,
    "services": 3.6,
    "login-prompt": 3.9,
    "started": 4.0,
    "ssh": 4.3,
    "user-docker": 5.2,
}


class FakeMachine:
    def __init__(
        self,
        platform: str = DEFAULT_PLATFORM,
        image: Path | str = "/images/ref",
        arch: str = "x86_64",
        *,
        workdir: Path,
        accel: str = "tcg",
        name: str = "m1",
        version: str = "v1.4.1-lab",
        milestones: Mapping[str, float] | None = None,
        fail: BaseException | None = None,  # raised by boot() after the first milestones
        console_lines: int = 60,
        cloud_config: Any = None,
        datasource: str = "configdrive",
        platform_options: Mapping[str, Any] | None = None,  # make_machine's; unused here
    ) -> None:
        self.name = name
        self.workdir = Path(workdir) / name  # like Machine: its own folder under workdir
        self.info: dict[str, Any] = {
            "platform": platform,
            "arch": arch,
            "accel": accel,
            "image": str(image),
            "image_version": version,
        }
        self.capabilities = CAPABILITIES
        self.console_log = self.workdir / "console.log"
        self.timeline = Timeline(t0=time.monotonic())
        self._milestones = dict(milestones or DEFAULT_MILESTONES)
        self._fail = fail
        self._console_lines = console_lines
        self.entered = self.exited = False

    def __enter__(self) -> FakeMachine:
        self.entered = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_text(
            "".join(f"console line {i}\n" for i in range(1, self._console_lines + 1))
        )
        return self

    def __exit__(self, *exc: object) -> None:
        # A real machine stops its guest here, also on Ctrl-C, and removes its folder.
        self.exited = True
        shutil.rmtree(self.workdir, ignore_errors=True)

    def ssh(self, timeout: float = 120) -> None:
        self.timeline.mark_offset("ssh", self._milestones.get("ssh", 0.0))

    def keep_artifacts(self, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        if self.console_log.exists():
            shutil.copy2(self.console_log, dest / "console.log")
        return dest / "console.log"

    def boot(self, timeout: float) -> None:
        early = dict(list(self._milestones.items())[:2])
        for name, at in (early if self._fail else self._milestones).items():
            self.timeline.mark_offset(name, at)
        if self._fail:
            raise self._fail

    def wait_for_user_docker(self, timeout: float) -> None:
        pass

    def collect_boot_times(self) -> None:
        pass
