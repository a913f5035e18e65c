"""One target's measuring, said once: its dense engine's latency, a candidate engine measured interleaved with
the dense engine, and the verdict of the target's SLA on it. The closed loop's rounds, the peer's bisection, the
final engine and the comparison benchmark all measure through a :class:`TargetMeter`.

How long a closed-loop round is measured: long enough that the safety margin covers the measurement noise. A
round is judged by the median per-round ratio candidate/dense. With a margin of 3% and per-round ratios spread
by +-10% (a loaded machine), 20 timing rounds leave that median uncertain by about 2%: a plan can be "met" by
luck and missed on re-measurement. So a ``precise`` measurement is taken once, and if the median's uncertainty
(per-round p10-p90 half-width / sqrt(rounds), close to the median's standard error) is above ``fraction`` of the
margin, taken again with as many timing rounds as that spread needs, up to ``max_timing_rounds``
(:meth:`TargetMeter.measure`: the one place a measurement is repeated when its spread is wide).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.profiling.engine_timing import EngineLatency, measure_engines
from itcp_deploy.profiling.records import LatencyStats
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.target import LatencyTarget, Measurement, Verdict

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


@dataclass(frozen=True)
class Measured:
    """A candidate engine measured against the dense engine: its latency (with the per-round ratio to dense),
    the dense engine's stats in the same run, the timing rounds used, and the latency the SLA judges (ms)."""

    latency: EngineLatency
    dense: LatencyStats | None
    timing_rounds: int
    measured_ms: float

    @property
    def ratio(self) -> float:
        return float(self.latency.ratio) if self.latency.ratio is not None else math.nan


@dataclass
class TargetMeter:
    """Measures one target's engines (``engine``: backend, precision, threads) against its dense engine and
    judges them by ``latency`` (the SLA). ``timing``: a candidate's measurement (the dense engine alone is
    measured once with it, at the SLA's percentile, unless ``known_dense_ms`` gives it, e.g. from an earlier
    stage); ``max_timing_rounds``: the most a precise measurement uses."""

    engine: EngineSpec
    latency: LatencyTarget
    dense_artifact: Path
    timing: TimingConfig
    max_timing_rounds: int = 100
    known_dense_ms: float | None = None

    def dense_ms(self) -> float:
        """The dense engine measured alone at the SLA's percentile (once; what a speed-up SLA divides)."""
        if self.known_dense_ms is None:
            measured = measure_engines(self.engine.backend, [self.dense_artifact], self.engine.options, self.timing)
            self.known_dense_ms = measured.engines[0].stats.percentile_ms(self.latency.percentile)
        return self.known_dense_ms

    @property
    def sla_ms(self) -> float:
        return self.latency.resolve_ms(self.dense_ms())

    @property
    def aim_ms(self) -> float:
        """The SLA less the safety margin: what the loop aims under."""
        return self.latency.target_ms(self.dense_ms())

    def measure_all(self, artifacts: Sequence[Path], timing: TimingConfig | None = None) -> list[Measured]:
        """Every engine of ``artifacts`` and the dense engine measured interleaved in one run."""
        q = self.latency.percentile
        result = measure_engines(self.engine.backend, list(artifacts), self.engine.options, timing or self.timing,
                                 reference=self.dense_artifact, percentile=q)
        timing_rounds = (timing or self.timing).rounds
        return [Measured(e, result.reference, timing_rounds, self._judged_ms(e)) for e in result.engines]

    def measure(self, artifact: Path, timing: TimingConfig | None = None, *, precise: bool = False) -> Measured:
        """``artifact`` measured interleaved with the dense engine; ``precise``: again with more timing rounds
        when the ratio's spread is too wide for the margin."""
        if not precise:
            return self.measure_all([artifact], timing)[0]
        kept: dict[str, Measured] = {}

        def once(t: TimingConfig) -> EngineLatency:
            kept["m"] = self.measure_all([artifact], t)[0]
            return kept["m"].latency

        _, rounds = measure_precise(once, timing or self.timing, self.latency.margin, self.max_timing_rounds)
        return replace(kept["m"], timing_rounds=rounds)

    def settle(self, artifact: Path, timing: TimingConfig | None = None) -> tuple[Measured, list[Measured]]:
        """:func:`settle` on precise measurements of ``artifact``, judged by this target's SLA."""
        return settle(lambda: self.measure(artifact, timing, precise=True), lambda m: self.judge(m).met,
                      lambda m: relative_spread(m.latency))

    def judge(self, measured: Measured, *, with_margin: bool = False) -> Verdict:
        """Whether ``measured`` meets the SLA (or, ``with_margin``, the aim below it)."""
        return self.latency.judge(self._measurement(measured.latency), self.dense_ms(), with_margin=with_margin)

    def _measurement(self, latency: EngineLatency) -> Measurement:
        return Measurement(latency.stats.percentile_ms(self.latency.percentile), latency.ratio)

    def _judged_ms(self, latency: EngineLatency) -> float:
        """ratio x dense for a speed-up SLA (drift between the two cancels), else the engine's own percentile."""
        return self.latency.measured_ms(self._measurement(latency), self.dense_ms() if self.latency.relative else None)


T = TypeVar("T")


def settle(measure: Callable[[], T], met: Callable[[T], bool], spread: Callable[[T], float]) -> tuple[T, list[T]]:
    """The verdict a gate can stand on (the final stage's and ``check-latency``'s): ``measure()``, and on a miss
    a second one; the narrower of the two (``spread``) is kept, whichever way it points. One noisy window must
    not fail an engine that meets its SLA, nor pass one that does not. Returns the kept one and every one taken."""
    first = measure()
    if met(first):
        return first, [first]
    second = measure()
    return min((first, second), key=spread), [first, second]


def relative_spread(latency: EngineLatency) -> float:
    """The per-round ratio's p10-p90 width relative to its median (inf without one)."""
    spread, ratio = latency.ratio_spread, latency.ratio
    return (spread[1] - spread[0]) / ratio if spread is not None and ratio else math.inf


__all__ = ["Measured", "TargetMeter", "measure_precise", "relative_spread", "rounds_needed", "settle"]
