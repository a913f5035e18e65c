"""The one latency target: built once from the options, resolved against a dense latency, margin, judging."""

from __future__ import annotations

import math

import pytest

from itcp_deploy.errors import UsageError
from itcp_deploy.target import LatencyTarget, Measurement


def test_absolute_sla_ignores_the_dense_latency():
    t = LatencyTarget(sla_ms=0.5, margin=0.1)
    assert t.resolve_ms() == 0.5 == t.resolve_ms(dense_ms=9.0)
    assert t.target_ms() == pytest.approx(0.45)
    assert not t.relative


def test_speedup_divides_the_dense_latency_it_is_given():
    t = LatencyTarget(speedup=2.0, margin=0.0)
    assert t.resolve_ms(dense_ms=1.2) == pytest.approx(0.6)
    with pytest.raises(UsageError):
        t.resolve_ms()  # a speed-up without a dense latency has no meaning
    assert "predicted dense latency 1.2 ms / speed-up 2" in t.describe(1.2, "predicted")


def test_speedup_is_judged_on_the_ratio_to_dense_and_sla_on_the_engine_itself():
    slow_machine_now = Measurement(latency_ms=0.8, ratio_to_dense=0.45)  # both engines slowed by drift
    relative = LatencyTarget(speedup=2.0, margin=0.0).judge(slow_machine_now, dense_ms=1.0)
    assert relative.met and relative.measured_ms == pytest.approx(0.45)
    absolute = LatencyTarget(sla_ms=0.5, margin=0.0).judge(slow_machine_now, dense_ms=1.0)
    assert not absolute.met and absolute.over == pytest.approx(1.6)


def test_margin_only_applies_when_asked():
    t = LatencyTarget(sla_ms=1.0, margin=0.1)
    m = Measurement(latency_ms=0.95)
    assert t.judge(m).met and not t.judge(m, with_margin=True).met


def test_predicted_budget_rescales_by_the_model_error_on_this_machine():
    t = LatencyTarget(speedup=2.0, margin=0.0)
    # the perf model predicts the dense engine 10% slow: the budget in predicted ms is 10% larger
    assert t.predicted_budget_ms(dense_measured_ms=1.0, dense_predicted_ms=1.1) == pytest.approx(0.55)


def test_max_ratio_is_a_speedup_of_its_inverse():
    t = LatencyTarget.from_ratio(0.6)
    assert t.judge(Measurement(1.0, ratio_to_dense=0.59), dense_ms=1.0).met
    assert not t.judge(Measurement(1.0, ratio_to_dense=0.61), dense_ms=1.0).met


@pytest.mark.parametrize("kwargs", [{}, {"sla_ms": 1.0, "speedup": 2.0}, {"sla_ms": 0.0}, {"speedup": -1.0},
                                    {"sla_ms": math.nan}, {"sla_ms": math.inf}, {"sla_ms": 1.0, "percentile": 75},
                                    {"sla_ms": 1.0, "margin": 0.5}, {"sla_ms": 1.0, "margin": -0.1}])
def test_bad_targets_are_refused_when_built(kwargs):
    with pytest.raises(UsageError):
        LatencyTarget(**kwargs)
