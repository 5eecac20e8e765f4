"""The bench's statistics on synthetic boots (reports/power.py): 10 runs a side detect a
10 % slower phase at least 80 % of the time, and same-vs-same compares raise a false
alarm (any regression anywhere) at most 5 % of the time."""

from __future__ import annotations

from reports.power import SOAK_PHASES, BootModel, simulate
from reports.stats import Criteria


def test_detection_and_false_alarm_rates_at_ten_runs_a_side() -> None:
    # Every phase at 5 % run-to-run spread (the soak's kernel phase), 5 % of phases
    # hit by 30 % host noise; 400 compares per figure (+-2 points of sampling error).
    model = BootModel(phases={name: (median, 0.05) for name, (median, _) in SOAK_PHASES.items()})
    rates = simulate(model, runs=10, shift=1.10, trials=400)
    assert rates.false_alarm <= 0.05, rates
    assert min(rates.detection.values()) >= 0.80, rates


def test_the_old_statistic_failed_the_false_alarm_bar() -> None:
    # alpha 0.05 and a 5 % floor per metric: one compare in six cried wolf.
    old = Criteria(alpha=0.05, min_effect_rel=0.05)
    model = BootModel(phases={name: (median, 0.05) for name, (median, _) in SOAK_PHASES.items()})
    assert simulate(model, runs=10, trials=100, criteria=old).false_alarm > 0.05
