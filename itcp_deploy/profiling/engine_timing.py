"""Built engines measured interleaved in one run, each against a reference engine: the one routine behind
the closed loop (candidate vs dense), ``check-latency`` (engine vs reference, or alone) and the comparison
table (every row's engine vs dense).

The reference is measured in the same rounds, so the per-round ratio engine/reference cancels what a shared
machine does to both (drift, neighbours); the median over rounds is the ratio, p10-p90 its spread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from itcp_deploy.engines import EngineOptions, get_backend
from itcp_deploy.profiling.records import LatencyStats
from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved, round_ratios


@dataclass(frozen=True)
class EngineLatency:
    """One engine's latency; with a reference, the median per-round ratio to it and that ratio's p10-p90."""

    stats: LatencyStats
    ratio: float | None = None
    ratio_spread: tuple[float, float] | None = None


@dataclass(frozen=True)
class EnginesLatency:
    """What :func:`measure_engines` returns: one :class:`EngineLatency` per engine, the reference's stats."""

    engines: list[EngineLatency]
    reference: LatencyStats | None = None


def measure_engines(backend: str, engines: Sequence[Path], options: EngineOptions, timing: TimingConfig, *,
                    reference: Path | None = None, percentile: int = 50) -> EnginesLatency:
    """Open every engine (and ``reference``) with ``backend``'s runner and measure them interleaved; ratios
    are taken at ``percentile``."""
    paths = [*engines, *([reference] if reference is not None else [])]
    runner_backend = get_backend(backend)
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(runner_backend.runner(p, options)) for p in paths]
        result = measure_interleaved(runners, None, timing)
    if reference is None:
        return EnginesLatency([EngineLatency(s) for s in result.stats])
    ref = len(paths) - 1
    out = []
    for i in range(len(engines)):
        ratios = round_ratios(result.samples_ms[i], result.samples_ms[ref], percentile)
        spread = (float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90)))
        out.append(EngineLatency(result.stats[i], float(np.median(ratios)), spread))
    return EnginesLatency(out, result.stats[ref])
