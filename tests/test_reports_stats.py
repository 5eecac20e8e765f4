"""Statistics on known samples: a real slowdown is flagged, noise is not."""

from __future__ import annotations

import numpy as np
import pytest

from reports.history import new_record
from reports.stats import (
    Criteria,
    Summary,
    compare,
    compare_samples,
    milestone_samples,
    phase_durations,
)

CTX = {"platform": "qemu", "arch": "x86_64", "accel": "kvm", "image": None, "image_version": "v1"}


def boots(rng: np.random.Generator, n: int, kernel: float, docker: float) -> list[dict]:
    """n completed boots whose kernel and system-docker phases are lognormal noise."""
    out = []
    for i in range(n):
        k = kernel * rng.lognormal(0, 0.05)
        d = k + docker * rng.lognormal(0, 0.05)
        out.append(
            new_record(
                context=CTX,
                milestones={"kernel": k, "system-docker": d, "ssh": d + 1.0},
                ok=True,
                run_id="r",
                boot=i,
                host="h",
            )
        )
    return out


def test_summary_of_known_samples() -> None:
    s = Summary.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.n, s.min, s.median, s.max) == (5, 1.0, 3.0, 100.0)
    assert s.iqr == pytest.approx(2.0)  # 4 - 2: the outlier does not widen it
    assert s.p95 == pytest.approx(80.8)  # linear interpolation between 4 and 100
    assert s.stdev == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1))


def test_shifted_sample_is_flagged() -> None:
    rng = np.random.default_rng(1)
    base = list(rng.normal(10.0, 0.3, 20))
    cand = list(rng.normal(11.0, 0.3, 20))  # one second slower
    v = compare_samples("ssh", "milestone", base, cand, Criteria())
    assert v.status == "slower" and v.regression
    assert v.p_value is not None and v.p_value < 1e-4
    assert v.shift == pytest.approx(1.0, abs=0.3)


def test_same_distribution_is_not_flagged() -> None:
    rng = np.random.default_rng(2)
    base = list(rng.normal(10.0, 0.3, 20))
    cand = list(rng.normal(10.0, 0.3, 20))  # other draws, same distribution
    v = compare_samples("ssh", "milestone", base, cand, Criteria())
    assert v.status == "ok" and not v.regression


def test_faster_candidate_is_not_flagged() -> None:
    rng = np.random.default_rng(3)
    v = compare_samples(
        "ssh", "milestone", list(rng.normal(10, 0.3, 15)), list(rng.normal(8, 0.3, 15)), Criteria()
    )
    assert v.status == "ok" and v.shift is not None and v.shift < 0


def test_significant_but_tiny_shift_is_not_flagged() -> None:
    # 2 ms slower with almost no noise: the rank test is sure, but it does not matter.
    rng = np.random.default_rng(4)
    base = list(rng.normal(10.0, 0.0005, 30))
    cand = [x + 0.002 for x in rng.normal(10.0, 0.0005, 30)]
    v = compare_samples("ssh", "milestone", base, cand, Criteria())
    assert v.p_value is not None and v.p_value < 0.01
    assert v.status == "ok"
    # ...and is flagged once the floor is lowered below it (the floor is what saved it).
    tight = Criteria(min_effect=0.001, min_effect_rel=0.0)
    assert compare_samples("ssh", "milestone", base, cand, tight).status == "slower"


def test_too_few_samples_and_missing_milestones() -> None:
    c = Criteria()
    assert compare_samples("k", "phase", [1.0, 1.1], [2.0, 2.1], c).status == "insufficient"
    missing = compare_samples("k", "phase", [1.0, 1.1, 1.2], [], c)
    assert missing.status == "missing" and missing.regression


def test_compare_localises_the_slow_phase() -> None:
    rng = np.random.default_rng(5)
    base = boots(rng, 12, kernel=1.0, docker=2.0)
    cand = boots(rng, 12, kernel=1.0, docker=2.8)  # system-docker got 0.8 s slower
    verdicts = {(v.kind, v.metric): v for v in compare(base, cand, Criteria())}
    assert verdicts[("phase", "system-docker")].status == "slower"
    assert verdicts[("phase", "kernel")].status == "ok"
    assert verdicts[("phase", "ssh")].status == "ok"  # ssh's own phase did not change...
    assert verdicts[("milestone", "ssh")].status == "slower"  # ...but it is reached later


def test_failed_boots_do_not_count_in_samples() -> None:
    rng = np.random.default_rng(6)
    records = boots(rng, 3, 1.0, 2.0)
    records[0]["ok"] = False
    assert len(milestone_samples(records)["kernel"]) == 2
    assert list(phase_durations(records)) == ["kernel", "system-docker", "ssh"]
