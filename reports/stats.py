"""Boot-time statistics: summaries per milestone and a regression test per phase.

Two views of the same boots:
- a *milestone* is seconds since power-on (what a user waits for: time to SSH);
- a *phase* is the time from the previous milestone of that boot to this one
  (Timeline.phases()), which says where a slowdown happened.
Only boots that completed (`ok`) count: a failed boot's partial timeline is kept in
the history for diagnosis but would bias the timing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import mannwhitneyu

from lab.timeline import Timeline
from reports.history import Record

MIN_SAMPLES = 3  # below this a rank test cannot reach any usual alpha


@dataclass(frozen=True)
class Summary:
    n: int
    min: float
    median: float
    p95: float
    max: float
    iqr: float
    stdev: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        a = np.asarray(samples, dtype=float)
        q1, q3 = np.percentile(a, [25, 75])
        return cls(
            n=len(a),
            min=float(a.min()),
            median=float(np.median(a)),
            p95=float(np.percentile(a, 95)),
            max=float(a.max()),
            iqr=float(q3 - q1),
            stdev=float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        )


def boot_timelines(records: Iterable[Record]) -> list[Timeline]:
    """Timelines of the boots that completed."""
    return [Timeline(t0=0.0, marks=dict(r.get("milestones") or {})) for r in records if r.get("ok")]


SERVICE_STEPS = ("created", "started", "finished")


def service_samples(records: Iterable[Record]) -> dict[str, dict[str, list[float]]]:
    """System container -> step (created, started, finished) -> seconds since power-on,
    one sample per completed boot that recorded it, in order of creation."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("ok"):
            for name, steps in (r.get("services") or {}).items():
                for step in SERVICE_STEPS:
                    if step in steps:
                        out[name][step].append(float(steps[step]))
    created = {name: steps.get("created") or steps.get("started") or [0.0]
               for name, steps in out.items()}
    return {name: dict(out[name]) for name in _in_boot_order(created)}


def milestone_samples(records: Iterable[Record]) -> dict[str, list[float]]:
    """Milestone -> seconds since power-on, one sample per completed boot, in boot order."""
    out: dict[str, list[float]] = defaultdict(list)
    for timeline in boot_timelines(records):
        for name, at in timeline.ordered():
            out[name].append(at)
    return _in_boot_order(out)


def phase_samples(records: Iterable[Record]) -> dict[str, list[tuple[float, float]]]:
    """Phase (named by the milestone that ends it) -> (start, end) per completed boot."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for timeline in boot_timelines(records):
        for name, start, end in timeline.phases():
            out[name].append((start, end))
    ends = {name: [end for _, end in spans] for name, spans in out.items()}
    return {name: out[name] for name in _in_boot_order(ends)}


def phase_durations(records: Iterable[Record]) -> dict[str, list[float]]:
    return {
        name: [end - start for start, end in spans]
        for name, spans in phase_samples(records).items()
    }


def _in_boot_order(samples: dict[str, list[float]]) -> dict[str, list[float]]:
    # Median time since power-on gives the order of any image's milestones, including
    # its own service:<name> ones, without a list that would go stale.
    return dict(sorted(samples.items(), key=lambda kv: (float(np.median(kv[1])), kv[0])))


def summarize(samples: dict[str, list[float]]) -> dict[str, Summary]:
    return {name: Summary.of(values) for name, values in samples.items() if values}


Status = Literal["slower", "ok", "insufficient", "missing"]


@dataclass(frozen=True)
class Verdict:
    """Is the candidate slower than the baseline on one metric?"""

    metric: str
    kind: str  # "phase" or "milestone"
    baseline: Summary | None
    candidate: Summary | None
    shift: float | None  # Hodges-Lehmann estimate of candidate - baseline, seconds
    threshold: float | None  # smallest shift that counts, seconds
    p_value: float | None
    status: Status

    @property
    def regression(self) -> bool:
        return self.status in ("slower", "missing")


@dataclass(frozen=True)
class Criteria:
    # Per metric. A compare tests ~10 metrics at once, so 0.05 each raised a false alarm
    # in 17-20 % of same-vs-same compares (reports/power.py); 0.02 with a 6 % floor keeps
    # the whole compare at <= 5 % and still flags a 10 % slower phase >= 80 % of the time
    # at 10 runs a side when the phase's run-to-run spread is 5 % or less.
    alpha: float = 0.02
    min_effect: float = 0.03  # seconds; a 10 % slower 0.7 s kernel phase must count
    min_effect_rel: float = 0.06  # fraction of the baseline median

    def threshold(self, baseline_median: float) -> float:
        return max(self.min_effect, self.min_effect_rel * baseline_median)


def compare_samples(
    metric: str,
    kind: str,
    baseline: Sequence[float],
    candidate: Sequence[float],
    criteria: Criteria,
) -> Verdict:
    """One-sided Mann-Whitney U (candidate > baseline) plus a minimum effect size.

    The rank test makes no normality assumption (boot times are skewed, with long tails
    from host noise); the effect floor keeps a significant but tiny shift on a quiet
    host from failing CI. Both must hold for "slower".
    """
    base = Summary.of(baseline) if len(baseline) else None
    cand = Summary.of(candidate) if len(candidate) else None
    if base and not cand:
        # The baseline reached this milestone and the candidate never did.
        return Verdict(metric, kind, base, None, None, None, None, "missing")
    if not base or not cand or base.n < MIN_SAMPLES or cand.n < MIN_SAMPLES:
        return Verdict(metric, kind, base, cand, None, None, None, "insufficient")
    # Hodges-Lehmann: median of all pairwise differences, the shift estimate that
    # belongs to the rank test (robust to the odd slow boot, unlike a mean).
    shift = float(np.median(np.subtract.outer(np.asarray(candidate), np.asarray(baseline))))
    threshold = criteria.threshold(base.median)
    p_value = float(mannwhitneyu(candidate, baseline, alternative="greater").pvalue)
    slower = p_value < criteria.alpha and shift >= threshold
    return Verdict(
        metric, kind, base, cand, shift, threshold, p_value, "slower" if slower else "ok"
    )


def compare(
    baseline: Iterable[Record], candidate: Iterable[Record], criteria: Criteria
) -> list[Verdict]:
    """Verdicts per phase and per milestone, in boot order."""
    baseline, candidate = list(baseline), list(candidate)
    verdicts: list[Verdict] = []
    for kind, extract in (("phase", phase_durations), ("milestone", milestone_samples)):
        base, cand = extract(baseline), extract(candidate)
        for metric in [*base, *(m for m in cand if m not in base)]:
            verdicts.append(
                compare_samples(metric, kind, base.get(metric, []), cand.get(metric, []), criteria)
            )
    return verdicts


def failure_counts(records: Iterable[Record]) -> tuple[int, int]:
    """(completed boots, failed boots)."""
    records = list(records)
    ok = sum(1 for r in records if r.get("ok"))
    return ok, len(records) - ok


def describe(records: Iterable[Record]) -> dict[str, Any]:
    """Distinct context values of a selection, to warn when it mixes what should not mix."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in records:
        for key in ("platform", "arch", "board", "accel", "host", "image_version"):
            out[key].add(str(r.get(key)))
    return {k: sorted(v) for k, v in out.items()}
