"""Latency defined once: warm-up + interleaved rounds, stats and the noise floor."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from itcp_deploy.engines.base import Runner
from itcp_deploy.profiling.timing import (
    TimingConfig,
    measure,
    measure_interleaved,
    noise_pct,
    summarize,
    time_calls,
)


class CountingRunner(Runner):
    """A runner whose run_once only records that it ran (and in which global order)."""

    log: list[str] = []

    def __init__(self, name: str) -> None:
        super().__init__("unused")
        self.name = name
        self.calls = 0

    def _resolve(self):
        return None

    def _activate(self, path) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def input_specs(self):
        return {"x": ((1, 2), np.dtype(np.float32))}

    def _infer(self, feeds):
        return {"y": feeds["x"] * 2}

    def _prepare(self, feeds):
        def run_once() -> None:
            self.calls += 1
            CountingRunner.log.append(self.name)

        return run_once


def test_each_runner_gets_warmup_plus_all_rounds_in_shuffled_order():
    CountingRunner.log = []
    runners = [CountingRunner(n) for n in "abcd"]
    for r in runners:
        r.__enter__()
    config = TimingConfig(warmup=3, rounds=6, runs_per_round=4, seed=1)
    result = measure_interleaved(runners, None, config)
    assert [r.calls for r in runners] == [3 + 24] * 4
    assert [s.n for s in result.stats] == [24] * 4
    assert [len(m) for m in result.round_medians_ms] == [6] * 4
    timed = CountingRunner.log[4 * 3 :]
    orders = {"".join(timed[i : i + 16 : 4]) for i in range(0, len(timed), 16)}
    assert all(sorted(o) == list("abcd") for o in orders)
    assert len(orders) > 1  # the visiting order changes between rounds


def test_measure_needs_an_active_runner():
    with pytest.raises(RuntimeError, match="not active"):
        measure(CountingRunner("x"), None, TimingConfig(warmup=0, rounds=1, runs_per_round=1))


def test_time_calls_returns_one_positive_sample_per_call():
    samples = time_calls(lambda: sum(range(1000)), 7)
    assert len(samples) == 7 and all(s > 0 for s in samples)


def test_a_slow_engines_round_ends_after_its_time_but_not_before_its_fewest_runs():
    from itcp_deploy.profiling.timing import MIN_RUNS

    def slow():
        time.sleep(0.02)

    assert len(time_calls(slow, 50, max_s=0.1)) in range(MIN_RUNS, 8)  # about 5 runs of 20 ms fill 0.1 s
    assert len(time_calls(slow, 50, max_s=0.0)) == MIN_RUNS
    assert len(time_calls(slow, 3, max_s=0.0)) == 3  # never more than asked for
    assert len(time_calls(lambda: None, 50, max_s=0.1)) == 50  # a fast engine is not bounded


def test_interleaved_rounds_take_their_time_bound_from_the_timing_config():
    from itcp_deploy.profiling.timing import MIN_RUNS

    runner = CountingRunner("slow")
    runner.__enter__()
    calls = []
    runner._prepare = lambda feeds: lambda: calls.append(time.sleep(0.002))
    result = measure_interleaved([runner], None, TimingConfig(warmup=40, rounds=3, runs_per_round=40,
                                                              max_round_s=0.0))
    assert len(calls) == MIN_RUNS * 4 and result.stats[0].n == MIN_RUNS * 3


def test_summarize_and_noise_floor():
    samples = [[[1.0, 1.0, 3.0], [2.0, 2.0, 2.0]], [[4.0] * 3, [4.0] * 3]]
    result = summarize(samples)
    assert result.round_medians_ms == [[1.0, 2.0], [4.0, 4.0]]
    assert result.stats[0].median_ms == 2.0 and result.stats[0].min_ms == 1.0 and result.stats[0].n == 6
    # engine 0: halves [1] and [2] differ by 1 / median 1.5; engine 1: identical halves
    assert noise_pct(result.round_medians_ms) == pytest.approx((1 / 1.5 * 100 + 0) / 2 / 2**0.5)
    # a slow drift cancels between interleaved halves; alternating rounds do not
    assert noise_pct([[1.0, 1.1, 1.2, 1.3]]) == pytest.approx(abs(1.1 - 1.2) / 1.15 * 100 / 2**0.5)
    assert noise_pct([[1.0, 2.0, 1.0, 2.0]]) == pytest.approx(1 / 1.5 * 100 / 2**0.5)
    assert math.isnan(noise_pct([[1.0]]))


def test_round_ratios_compare_engines_round_by_round():
    from itcp_deploy.profiling.timing import round_ratios

    slow_round, fast_round = [[2.0, 2.0, 4.0], [1.0, 1.0, 1.0]], [[4.0, 4.0, 4.0], [2.0, 2.0, 2.0]]
    # drift doubles both engines in round 0: the ratio stays 0.5
    assert list(round_ratios(slow_round, fast_round)) == [0.5, 0.5]
    assert round_ratios([[1.0, 3.0]], [[1.0, 1.0]], 90)[0] == pytest.approx(2.8)


def test_session_noise_is_the_spread_of_an_engines_medians_across_sessions():
    """A new session of an engine is a re-measurement the split-half floor cannot see (AlexNet at 224: 2.0%
    between sessions against 1.2% within one): the standard deviation of the session medians over their mean."""
    from itcp_deploy.profiling.timing import session_noise_pct

    assert session_noise_pct([10.0, 10.0, 10.0]) == 0.0
    assert session_noise_pct([9.0, 10.0, 11.0]) == pytest.approx(10.0)  # sd 1 (ddof 1) over mean 10
    assert math.isnan(session_noise_pct([10.0]))  # one session says nothing about the next


def test_counted_runs_are_bounded_by_time_at_the_measured_latency():
    from itcp_deploy.profiling.timing import MIN_RUNS, runs_within

    assert runs_within(300, 0.4, 20.0) == 300  # ResNet-20 at 32: all of them
    assert runs_within(300, 1000.0, 20.0) == 20  # a detector at a second a run: 20 s of runs
    assert runs_within(300, 60_000.0, 20.0) == MIN_RUNS and runs_within(3, 60_000.0, 20.0) == 3
    assert runs_within(300, float("nan"), 20.0) == 300  # no latency to go by


def test_a_slow_engines_layer_profile_takes_fewer_runs():
    from types import SimpleNamespace

    from itcp_deploy.profiling.layer_split import LAYER_SECONDS, layer_times

    asked = {}
    run = SimpleNamespace(
        backend=SimpleNamespace(in_context_layers=True),
        config=SimpleNamespace(layer_runs=300, timing=TimingConfig(warmup=20, max_round_s=2.0)),
        measure_layers=lambda plan, build, runs, warmup: asked.setdefault(plan.engine_id, (runs, warmup)))
    plans = [SimpleNamespace(engine_id=e, latency_ms=ms) for e, ms in (("fast", 0.5), ("slow", 1000.0))]
    layer_times(run, plans, {"fast": {}, "slow": {}}, lambda *a: None, None,
                {p.engine_id: p.latency_ms for p in plans})
    assert asked == {"fast": (300, 20), "slow": (int(LAYER_SECONDS), 5)}
