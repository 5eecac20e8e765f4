"""Ownership marks on what the lab makes outside its process, and scratch folders.

Everything a driver creates that could outlive the harness (a libvirt domain, a cloud
instance, key pair, security group, image, a held labgrid place) carries three marks:
`created-by=roslab`, the run id and an expiry. `roslab gc --platform P` asks that
platform's driver for what carries the marks and is expired (or older than
`--older-than`), and removes it (commands/gc.py); a run that was killed (SIGKILL, a dead
CI job) leaves nothing for longer than its TTL.

A driver joins by implementing `Driver.collect_garbage` (see lab/driver.py).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ConfigError

OWNER_KEY, OWNER = "created-by", "roslab"
RUN_KEY = "roslab-run-id"
EXPIRES_KEY = "roslab-expires"  # epoch seconds (an integer, as text): when gc may take it
DEFAULT_TTL = 5 * 3600.0  # a cloud job longer than this is already broken
RUN_ID_ENV = "ROSLAB_RUN_ID"  # shared by a pytest controller and its xdist workers


def run_id() -> str:
    """This run's id: inherited from the environment (xdist workers, CI) or made once."""
    rid = os.environ.get(RUN_ID_ENV)
    if not rid:
        rid = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        os.environ[RUN_ID_ENV] = rid
    return rid


def owner_marks(ttl: float = DEFAULT_TTL, now: float | None = None) -> dict[str, str]:
    """The marks to put on something this run creates (as tags, labels or metadata)."""
    now = time.time() if now is None else now
    return {OWNER_KEY: OWNER, RUN_KEY: run_id(), EXPIRES_KEY: str(int(now + ttl))}


def parse_duration(text: str) -> float:
    """'90s', '30m', '5h', '2d' or plain seconds -> seconds; ConfigError names bad input."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 90s, 30m, 5h, 2d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@dataclass(frozen=True)
class Garbage:
    """One thing a dead run left: what it is, its id, and why it may go."""

    kind: str  # "domain", "instance", "security-group", ...
    ident: str
    run: str
    why: str  # "expired 2h ago", "older than 5h"


def is_garbage(marks: dict[str, str], created: float | None, older_than: float | None,
               now: float | None = None) -> str | None:
    """Why something with these marks may be collected, or None (not ours, or still live).

    With `older_than`, anything of ours created longer ago than that goes too, expired or
    not (what a CI job's final step wants); without it, only what has expired.
    """
    if marks.get(OWNER_KEY) != OWNER:
        return None
    now = time.time() if now is None else now
    try:
        expires = float(marks.get(EXPIRES_KEY, ""))
    except ValueError:
        expires = None
    if older_than is not None and created is not None and now - created >= older_than:
        return f"created {_ago(now - created)} ago (older than {_ago(older_than)})"
    if expires is None:
        return "no valid expiry" if older_than is None else None
    if now >= expires:
        return f"expired {_ago(now - expires)} ago"
    return None


def _ago(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


# -- scratch folders: removed by their run, or by gc once their run is dead ------------------

SCRATCH_PREFIX = "roslab-run-"
OWNER_FILE = ".roslab-owner"  # "<pid> <process start time> <run id>": a pid may be reused


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)" start at field 3


def holder_token(pid: int | None = None) -> str:
    """This process as "<pid>_<start time>" (digits and "_", fit for a labgrid tag value):
    what `holder_alive` checks, on this host, after the process may be gone."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}_{_process_start(pid)}"


def holder_alive(token: str) -> bool | None:
    """Whether the process a `holder_token` names still runs (None: not a token)."""
    try:
        pid_text, started = token.split("_")
        return _process_start(int(pid_text)) == started
    except ValueError:
        return None


def scratch_dir() -> Path:
    """A new scratch folder for this process (a test run's machines, snapshots): it carries
    its owner, so `roslab gc` can tell a live run's folder from a SIGKILLed one's."""
    path = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    (path / OWNER_FILE).write_text(f"{os.getpid()} {_process_start(os.getpid())} {run_id()}\n")
    return path


def _owner(folder: Path) -> tuple[bool, str] | None:
    """(is its run alive, its run id), or None for a folder without a readable owner."""
    try:
        pid_text, started, run = (folder / OWNER_FILE).read_text().split()
        return bool(holder_alive(f"{int(pid_text)}_{started}")), run
    except (OSError, ValueError):
        return None


def stale_scratch(dry_run: bool = False, where: Path | None = None) -> list[Garbage]:
    """Scratch folders whose run died without removing them (SIGKILL, a lost CI runner).

    Only a folder whose owner is known dead goes, whatever its age: one without an owner
    file is half made or an older roslab's, whose run may be alive. Removed unless
    `dry_run`.
    """
    found = []
    for folder in sorted((where or Path(tempfile.gettempdir())).glob(SCRATCH_PREFIX + "*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        owner = _owner(folder)
        if owner is None or owner[0]:
            continue
        run, why = owner[1], "its run is dead"
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and
                   not f.is_symlink())
        found.append(Garbage("folder", str(folder), run, f"{why}; {size / 2**20:.0f} MiB"))
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return found
