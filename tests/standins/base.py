"""What the API-level tests of the cloud drivers share: a machine spec, and a run in a
separate process that the tests kill (the stand-ins themselves are in drivers/rehearsal/)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def machine_spec(image: str, workdir: Any, cloud_config: dict[str, Any] | None = None) -> Any:
    """What make_machine would hand a cloud driver: an image, a cloud-config, a work dir."""
    from lab.cloudconfig import CloudConfig
    from lab.driver import MachineSpec
    from lab.images import Image

    cc = CloudConfig.parse(cloud_config) if cloud_config is not None else None
    return MachineSpec(name="standin-run", arch="x86_64", image=Image.open(image),
                       workdir=workdir, cloud_config=cc, datasource="configdrive",
                       password="unused")


def start_run(platform: str, image: str, workdir: Any, until: str = "started") -> Any:
    """A separate process (tests/standins/child.py) launching one machine; returns it once
    it printed `until` ("launching": before the create call, "started": running)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    proc = subprocess.Popen([sys.executable, str(tests / "standins" / "child.py"), platform,
                             image, str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(until):
            return proc
    proc.wait()
    raise AssertionError(f"the run exited before {until!r}: {''.join(seen)}"
                         f"{proc.stderr.read() if proc.stderr else ''}")


def terminate_while_waiting(platform: str, image: str, workdir: Any,
                            made: Callable[[], object]) -> int:
    """Start a run, wait until the stand-in holds what it made (`made()` truthy), SIGTERM
    it while it waits for its machine, and return its exit status."""
    import signal

    run = start_run(platform, image, workdir, until="launching")
    deadline = time.monotonic() + 30
    while not made() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert made(), f"the {platform} run made nothing"
    time.sleep(0.3)  # into the wait for the machine to run
    run.send_signal(signal.SIGTERM)
    return run.wait(30)
