"""The latency target, said once: what the user asked for (``--sla-ms`` or ``--speedup``, at a percentile),
how it turns into milliseconds, the safety margin, and how a measurement is judged against it.

Pure data (stdlib only), so every layer may use it: the CLI builds one from its options, ``run``, ``search``,
``compare`` and ``check-latency`` resolve and judge with it.

``--speedup S`` always means "the SLA is the dense model's latency / S". Which dense latency is divided
depends on what a command has: ``run`` (and ``profile-engines --speedup``) measure the dense engine, so the
SLA is measured dense / S, and a candidate is judged by its per-round latency ratio to the dense engine
measured interleaved with it (machine drift cancels); ``search`` and ``compare`` build no engine before
choosing, so they divide the perf model's predicted dense latency and say so (:meth:`LatencyTarget.describe`).

Example::

    >>> t = LatencyTarget(speedup=2.0, margin=0.03)
    >>> t.resolve_ms(dense_ms=1.0), round(t.target_ms(dense_ms=1.0), 3)
    (0.5, 0.485)
    >>> t.judge(Measurement(latency_ms=0.6, ratio_to_dense=0.47), dense_ms=1.0).met
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from itcp_deploy.errors import UsageError

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Measurement:
    """A measured candidate engine: its latency at the target's percentile, and (when it was measured
    interleaved with the dense engine) the median over rounds of the per-round latency ratio candidate/dense."""

    latency_ms: float
    ratio_to_dense: float | None = None


@dataclass(frozen=True)
class Verdict:
    """A measurement judged against a target: ``measured_ms`` (absolute, or ratio x dense for a speed-up
    target) against ``limit_ms`` (the SLA, or the SLA after the margin)."""

    met: bool
    measured_ms: float
    limit_ms: float

    @property
    def over(self) -> float:
        """measured / limit: <= 1 means met."""
        return self.measured_ms / self.limit_ms


@dataclass(frozen=True)
class LatencyTarget:
    """A latency SLA: exactly one of ``sla_ms`` (absolute) and ``speedup`` (dense latency / speedup), at a
    latency ``percentile`` (50, 90 or 99). ``margin``: the fraction kept in reserve below the SLA, so that a
    re-measurement (a CI gate) of a plan that just met it does not fail on noise.

    Built once from the options; an invalid combination raises :class:`UsageError` on construction.
    """

    sla_ms: float | None = None
    speedup: float | None = None
    percentile: int = 50
    margin: float = 0.03

    def __post_init__(self) -> None:
        if (self.sla_ms is None) == (self.speedup is None):
            raise UsageError("give exactly one of --sla-ms and --speedup", "e.g. --sla-ms 0.5 or --speedup 2")
        for option, value in (("--sla-ms", self.sla_ms), ("--speedup", self.speedup)):
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise UsageError(f"{option} must be a finite number > 0, got {value}", f"pass e.g. {option} 2")
        if self.percentile not in PERCENTILES:
            raise UsageError(f"--percentile must be one of {PERCENTILES}, got {self.percentile}",
                             "pass 50, 90 or 99")
        if not (math.isfinite(self.margin) and 0 <= self.margin < 0.5):
            raise UsageError(f"the safety margin must be in [0, 0.5), got {self.margin}", "use e.g. margin=0.03")

    @classmethod
    def from_ratio(cls, max_ratio: float, percentile: int = 50) -> LatencyTarget:
        """``check-latency --max-ratio R``: the engine may take at most R x the reference (speed-up 1/R)."""
        if not math.isfinite(max_ratio) or max_ratio <= 0:
            raise UsageError(f"--max-ratio must be a finite number > 0, got {max_ratio}",
                             "pass e.g. --max-ratio 0.6")
        return cls(speedup=1.0 / max_ratio, percentile=percentile)

    @property
    def relative(self) -> bool:
        """True for a speed-up target (judged on the ratio to the dense engine)."""
        return self.speedup is not None

    def resolve_ms(self, dense_ms: float | None = None) -> float:
        """The SLA in ms; a speed-up target divides ``dense_ms``."""
        if self.sla_ms is not None:
            return float(self.sla_ms)
        if dense_ms is None or not dense_ms > 0:
            raise UsageError("--speedup needs the dense model's latency", "measure or predict it first")
        return float(dense_ms) / float(self.speedup)

    def target_ms(self, dense_ms: float | None = None) -> float:
        """What to aim at: the SLA after the safety margin."""
        return self.resolve_ms(dense_ms) * (1.0 - self.margin)

    def tightened(self, factor: float) -> LatencyTarget:
        """This SLA with its aim moved to ``factor`` x where it was (the margin grown, the SLA unchanged): the
        final stage re-solves this way when the shipped engine measured above the loop's engine of the same plan.
        Raises :class:`UsageError` when the grown margin would leave no aim (``factor`` <= 0.5 or so)."""
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"an aim is tightened by a factor in (0, 1], got {factor}")
        return replace(self, margin=1.0 - (1.0 - self.margin) * factor) if factor < 1.0 else self

    def predicted_budget_ms(self, dense_measured_ms: float, dense_predicted_ms: float) -> float:
        """The target in the perf model's units: target x (predicted / measured dense latency), so that a
        model that is off by a constant factor on this machine today still aims at the measured target."""
        return self.target_ms(dense_measured_ms) * dense_predicted_ms / dense_measured_ms

    def measured_ms(self, measurement: Measurement, dense_ms: float | None = None) -> float:
        """The latency the target judges: ratio x dense for a speed-up target measured against the dense
        engine (drift between the two measurements cancels), else the candidate's own percentile."""
        if self.relative and measurement.ratio_to_dense is not None and dense_ms is not None:
            return measurement.ratio_to_dense * float(dense_ms)
        return float(measurement.latency_ms)

    def judge(self, measurement: Measurement, dense_ms: float | None = None, *,
              with_margin: bool = False) -> Verdict:
        """Whether ``measurement`` meets the SLA (or, ``with_margin``, the target below it)."""
        limit = self.target_ms(dense_ms) if with_margin else self.resolve_ms(dense_ms)
        measured = self.measured_ms(measurement, dense_ms)
        return Verdict(measured <= limit, measured, limit)

    def describe(self, dense_ms: float | None = None, dense_source: str = "measured") -> str:
        """One line saying what the SLA is and, for a speed-up, which dense latency it divided."""
        q = f"p{self.percentile}"
        if self.sla_ms is not None:
            return f"SLA {self.sla_ms:.4g} ms ({q})"
        return (f"SLA {self.resolve_ms(dense_ms):.4g} ms ({q}) = {dense_source} dense latency "
                f"{float(dense_ms or 0.0):.4g} ms / speed-up {self.speedup:g}")


__all__ = ["PERCENTILES", "LatencyTarget", "Measurement", "Verdict"]
