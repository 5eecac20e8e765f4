"""Boot: every milestone is reached, each phase stays within its budget, and the
console shows no kernel error or failed service."""

from __future__ import annotations

import re
import time

import pytest

from fixtures.guest import two_looks
from fixtures.profiles import Profile
from lab import timeline as tl
from lab.errors import LabError
from lab.machine import Machine

# the machine is taken at login, before the scenarios' boot-complete wait
pytestmark = pytest.mark.measures_boot

# The milestones every RancherOS-style image reaches; FIRMWARE and STARTED are optional
# (direct kernel boot has no firmware output; not every image prints a banner).
REQUIRED = [
    tl.KERNEL,
    tl.INIT,
    tl.SYSTEM_DOCKER,
    tl.SERVICES,
    tl.LOGIN_PROMPT,
    tl.SSH,
    tl.USER_DOCKER,
]

# (what, pattern) scanned over the whole console log. Each is a sign of a broken boot on
# any kernel; see LAVA's KERNEL_MESSAGES and kola's consoleChecks for the same idea. The
# failed-service line is worded differently by each OS: the reference image says
# "service X failed", RancherOS's logrus lines say `level=error msg="Failed to start: X"`,
# systemd-style images "[FAILED] Failed to start X".
CONSOLE_ERRORS = [
    ("kernel oops", r"\bOops\b|\bBUG: "),
    ("kernel warning with call trace", r"WARNING: CPU: \d+ PID: \d+"),
    ("call trace", r"Call Trace:"),
    ("segfault", r"segfault at [0-9a-f]+ ip"),
    ("soft or hard lockup", r"soft lockup|hard LOCKUP|hung_task_timeout"),
    ("a system service that failed",
     r"(?i)\bservices?\b.*\bfailed\b|\bfailed\b.*\bservices?\b|\bfailed to start\b"
     r"|\[\s*FAILED\s*\]"
     r"|level=(?:error|fatal)\b"),
    ("out of memory", r"Out of memory: Killed process"),
]
UNREACHED = pytest.StashKey[dict[str, str]]()  # milestone -> why the lab could not see it


@pytest.fixture
def booted(request: pytest.FixtureRequest, machine: Machine, profile: Profile) -> Machine:
    """The module's machine with every milestone it reaches recorded. A wait that fails is
    remembered (not raised), so the milestone check names what was never reached and why."""
    if tl.USER_DOCKER not in machine.timeline.marks and "unreached" not in machine.info:
        unreached: dict[str, str] = {}
        if machine.capabilities.ssh:
            try:
                machine.ssh().run("true", check=True)  # marks SSH when sshd answers
            except LabError as exc:
                unreached[tl.SSH] = str(exc).splitlines()[0]
        try:
            machine.wait_for_user_docker(timeout=300)
        except LabError as exc:
            unreached[tl.USER_DOCKER] = str(exc).splitlines()[0]
        machine.collect_boot_times(services=profile.running)
        if tl.SERVICES not in machine.timeline.marks:
            looks = [{n: str(state) for n, state in look.items()} for look in two_looks(machine)]
            down = {s: next(look.get(s, "absent") for look in looks if look.get(s) != "running")
                    for s in profile.running
                    if any(look.get(s) != "running" for look in looks)}
            unreached[tl.SERVICES] = f"services not running: {down}"
        machine.info["unreached"] = unreached
    return machine


def _unseen(machine: Machine) -> set[str]:
    """Milestones this machine cannot show: a machine without a network (QEMU's raspi3b)
    has no SSH milestone to reach; one without a live console (AWS) shows no kernel, init
    or login prompt as they happen."""
    unseen = set() if machine.capabilities.ssh else {tl.SSH}
    if not machine.capabilities.console:
        unseen |= {tl.KERNEL, tl.INIT, tl.LOGIN_PROMPT}
    return unseen


def test_reaches_every_boot_milestone(booted: Machine) -> None:
    unseen = _unseen(booted)
    required = [m for m in REQUIRED if m not in unseen]
    marks = booted.timeline.marks
    why = booted.info.get("unreached", {})
    missing = [f"{m} ({why[m]})" if m in why else m for m in required if m not in marks]
    assert not missing, (
        f"milestones never reached: {'; '.join(missing)}; reached: {booted.timeline.to_dict()}"
    )
    wrong = tl.order_problems(marks)
    assert not wrong, "milestones out of order: " + "; ".join(wrong)


def test_every_service_container_has_a_start_time(booted: Machine, profile: Profile) -> None:
    starts = {m.split(":", 1)[1] for m in booted.timeline.marks if m.startswith("service:")}
    missing = [s for s in profile.running + profile.completed if s not in starts]
    assert not missing, f"no start time recorded for service containers: {', '.join(missing)}"


def _unreached_phases(booted: Machine, budgets: dict[str, float]) -> tuple[list[str], float]:
    """Budgeted phases whose milestone is not reached although their budget has run out
    (counted from the last milestone reached, the earliest such a phase could start), and
    how long until the next pending one's budget runs out (0 when none is pending)."""
    marks = booted.timeline.marks
    last_name, last_at = max(((n, at) for n, at in marks.items() if n in tl.ORDER),
                             key=lambda kv: kv[1], default=("power-on", 0.0))
    now = time.monotonic() - booted.timeline.t0
    over, wait = [], 0.0
    for name in tl.ORDER:
        if name not in budgets or name in marks or name in _unseen(booted):
            continue
        if now - last_at > budgets[name]:
            over.append(f"phase {name} never reached; last milestone {last_name} at "
                        f"{last_at:.1f} s, {now - last_at:.1f} s ago (budget "
                        f"{budgets[name]:.0f} s)")
        else:
            wait = max(wait, last_at + budgets[name] - now)
    if "total" in budgets and tl.USER_DOCKER not in marks and now > budgets["total"]:
        over.append(f"power-on -> user-docker never reached; last milestone {last_name} "
                    f"(budget {budgets['total']:.0f} s)")
    return over, wait


def test_each_boot_phase_within_budget(booted: Machine, budgets: dict[str, float]) -> None:
    # a phase never reached is over its budget: a stalled boot must not pass for a fast
    # one. One that may still come in time (the banner after the user Docker) is waited for.
    unreached, wait = _unreached_phases(booted, budgets)
    while wait > 0:
        time.sleep(min(wait + 0.5, 5))
        unreached, wait = _unreached_phases(booted, budgets)
    marks = booted.timeline.marks
    over = tl.order_problems(marks)  # a negative phase is a broken clock, never a fast boot
    # a phase runs from the milestone reached before it in time (images differ in order:
    # the banner may come before or after the user Docker)
    reached = sorted((at, name) for name, at in marks.items() if name in tl.ORDER)
    previous_name, previous_at = "power-on", 0.0
    for at, name in reached:
        took = at - previous_at
        if name in budgets and took > budgets[name]:
            over.append(f"{previous_name} -> {name}: {took:.1f} s (budget {budgets[name]:.0f} s)")
        previous_name, previous_at = name, at
    total = marks.get(tl.USER_DOCKER)
    if "total" in budgets and total is not None and total > budgets["total"]:
        over.append(f"power-on -> user-docker: {total:.1f} s (budget {budgets['total']:.0f} s)")
    over += unreached
    assert not over, "boot phases over budget or out of order:\n  " + "\n  ".join(over)


@pytest.mark.needs("console_log")  # DigitalOcean and CloudStack keep none
def test_console_shows_no_kernel_error_or_failed_service(booted: Machine) -> None:
    text = booted.console_log.read_text(errors="replace")
    found = []
    for what, pattern in CONSOLE_ERRORS:
        for line in text.splitlines():
            if re.search(pattern, line):
                found.append(f"{what}: {line.strip()}")
                break
    assert not found, (
        "the console shows errors during boot:\n  "
        + "\n  ".join(found)
        + f"\nfull console log: {booted.console_log}"
    )


@pytest.mark.needs("console")
def test_boot_completes_with_started_banner(booted: Machine, profile: Profile) -> None:
    # the banner ends the boot: it can come after the user Docker answers
    started = booted.wait_until(lambda: booted.console.started if booted.console else None,
                                180)
    assert started is not None, "the console never printed '<OS name> <version> started'"
    assert re.fullmatch(profile.os_name, started[0]), (
        f"the console says {' '.join(started)} started; profile {profile.name} expects "
        f"{profile.os_name}"
    )
