"""How good is `roslab bench compare`? Detection and false-alarm rates on synthetic boots.

A boot is a chain of sequential phases, each drawn from a log-normal around its median
with the run-to-run spread measured on this machine (the 50-boot soak of the reference
image under TCG: kernel 5.5 %, init 7.4 %, system-docker 7.3 %, cloud-init 10 % robust
CV), plus a heavy tail: now and then a boot's phase is much slower (host noise). The
simulation compares 10 boots a side:
- false alarm: two samples of the same model, and compare reports any regression;
- detection: the candidate's phase `shifted` is 10 % slower, and compare flags it.
`roslab bench power` prints both rates; tests/test_power.py holds them to 80 % / 5 %.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from reports.history import Record
from reports.stats import Criteria, compare, phase_durations

# Phase -> (median seconds, robust CV), the sequential chain of the reference image.
SOAK_PHASES: dict[str, tuple[float, float]] = {
    "kernel": (0.69, 0.055),
    "init": (7.6, 0.074),
    "system-docker": (5.4, 0.073),
    "services": (4.9, 0.07),
    "started": (4.4, 0.07),
}


@dataclass(frozen=True)
class BootModel:
    phases: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(SOAK_PHASES))
    tail_p: float = 0.05  # share of phases hit by host noise
    tail_factor: float = 1.3  # how much slower such a phase is

    def boots(
        self, rng: np.random.Generator, n: int, shift: Mapping[str, float] | None = None
    ) -> list[Record]:
        """n completed boots as history records; `shift` scales phases (1.1: 10 % slower)."""
        shift = shift or {}
        out: list[Record] = []
        for _ in range(n):
            at, marks = 0.0, {}
            for name, (median, cv) in self.phases.items():
                d = median * float(rng.lognormal(0.0, cv)) * shift.get(name, 1.0)
                if rng.random() < self.tail_p:
                    d *= self.tail_factor
                at += d
                marks[name] = round(at, 3)
            out.append({"ok": True, "milestones": marks})
        return out


@dataclass(frozen=True)
class Rates:
    trials: int
    false_alarm: float  # share of same-model comparisons that reported any regression
    detection: dict[str, float]  # phase -> share of comparisons that flagged it when shifted


def simulate(
    model: BootModel | None = None,
    runs: int = 10,
    shift: float = 1.10,
    trials: int = 400,
    criteria: Criteria | None = None,
    seed: int = 13,
) -> Rates:
    model, criteria = model or BootModel(), criteria or Criteria()
    rng = np.random.default_rng(seed)

    def regressions(base: list[Record], cand: list[Record]) -> set[tuple[str, str]]:
        return {(v.kind, v.metric) for v in compare(base, cand, criteria) if v.regression}

    alarms = sum(
        bool(regressions(model.boots(rng, runs), model.boots(rng, runs))) for _ in range(trials)
    )
    detection = {}
    for phase in model.phases:
        hits = sum(
            ("phase", phase)
            in regressions(model.boots(rng, runs), model.boots(rng, runs, {phase: shift}))
            for _ in range(trials)
        )
        detection[phase] = hits / trials
    return Rates(trials, alarms / trials, detection)


def model_phases(records: list[Record]) -> dict[str, tuple[float, float]]:
    """Phase -> (median, robust CV) of a real history, to ask what its spread allows."""
    out = {}
    for name, values in phase_durations(records).items():
        a = np.asarray(values)
        median = float(np.median(a))
        if median > 0:  # a phase that takes no time (services seen at once) has no shift
            out[name] = (median, float(1.4826 * np.median(np.abs(a - median)) / median))
    return out
