"""A test run that the tests kill: launch one machine on PLATFORM from IMAGE, say so, wait.

    python tests/standins/child.py PLATFORM IMAGE WORKDIR

SIGTERM is Ctrl-C here, as in `roslab` itself; SIGKILL leaves the cloud objects behind
for `roslab gc` to find.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from commands.cli import _terminate
from drivers import driver_class
from standins.base import machine_spec


def main() -> None:
    platform, image, workdir = sys.argv[1:4]
    signal.signal(signal.SIGTERM, _terminate)
    driver = driver_class(platform)()
    driver.poll_interval = 0.05  # type: ignore[misc]
    driver.prepare(machine_spec(image, Path(workdir), {"hostname": "killed-run"}))
    print("launching", flush=True)
    driver.start()
    print(f"started {driver.instance}", flush=True)
    try:
        time.sleep(600)
    finally:
        driver.stop()
        driver.cleanup()


if __name__ == "__main__":
    main()
