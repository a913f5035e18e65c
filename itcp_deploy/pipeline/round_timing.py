"""How long to measure a closed-loop round: long enough that the safety margin covers the measurement noise.

A round is judged by the median per-round ratio candidate/dense. With a margin of 3% and per-round ratios
spread by +-10% (a loaded machine), 20 timing rounds leave that median uncertain by about 2%: a plan can be
"met" by luck and missed on re-measurement. So the round is measured once, and if the median's uncertainty
(per-round p10-p90 half-width / sqrt(rounds), close to the median's standard error) is above ``fraction`` of
the margin, measured again with as many timing rounds as that spread needs, up to ``max_rounds``. The timing
itself is the one routine, :func:`~itcp_deploy.profiling.engine_timing.measure_engines`, behind ``measure``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from itcp_deploy.profiling.engine_timing import EngineLatency
from itcp_deploy.profiling.timing import TimingConfig

FRACTION_OF_MARGIN = 0.5  # the median ratio's uncertainty may use at most half the margin


def rounds_needed(latency: EngineLatency, rounds: int, margin: float, fraction: float = FRACTION_OF_MARGIN) -> int:
    """Timing rounds that bring the median ratio's relative uncertainty below ``fraction * margin`` (at least
    ``rounds``); ``rounds`` when there is no ratio spread to go by or no margin to cover."""
    if latency.ratio is None or latency.ratio_spread is None or latency.ratio <= 0 or margin <= 0:
        return rounds
    half_width = (latency.ratio_spread[1] - latency.ratio_spread[0]) / 2 / latency.ratio
    allowed = fraction * margin
    return max(rounds, math.ceil((half_width / allowed) ** 2))


def measure_precise(measure: Callable[[TimingConfig], EngineLatency], timing: TimingConfig, margin: float,
                    max_rounds: int) -> tuple[EngineLatency, int]:
    """``measure(timing)``, and again with more timing rounds (at most ``max_rounds``) when its spread needs
    them; returns the latency kept and the timing rounds it used."""
    latency = measure(timing)
    needed = min(rounds_needed(latency, timing.rounds, margin), max(max_rounds, timing.rounds))
    if needed <= timing.rounds:
        return latency, timing.rounds
    return measure(replace(timing, rounds=needed)), needed
