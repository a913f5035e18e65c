"""The latency gate (``itcp-deploy check-latency``): measure an engine, pass or fail against an SLA.

Two forms. Absolute: the engine's latency percentile must be <= ``sla_ms``. Ratio: the engine and a
reference (the dense engine) are measured interleaved in one run, and the median over rounds of the
per-round latency ratio must be <= ``max_ratio``; drift and neighbours on a shared CI runner slow both
engines alike, so the ratio is the robust gate there.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.profiling.records import LatencyStats
from itcp_deploy.profiling.timing import TimingConfig

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class GateConfig:
    """What to measure and the limit. Give exactly one of ``sla_ms`` and (``reference``, ``max_ratio``).

    The default timing (30 rounds x 100 runs after 100 warm-up runs) keeps the spread of a CIFAR-size
    engine's median well under 1% on a shared 2-core runner.
    """

    engine: str
    backend: str = "onnxruntime"
    sla_ms: float | None = None
    reference: str | None = None
    max_ratio: float | None = None
    percentile: int = 50
    threads: int = 1
    timing: TimingConfig = field(
        default_factory=lambda: TimingConfig(warmup=100, rounds=30, runs_per_round=100))


@dataclass(frozen=True)
class GateResult:
    """``measured`` is the gated quantity (ms, or a ratio) and ``limit`` its bound."""

    passed: bool
    measured: float
    limit: float
    form: str  # "sla" | "ratio"
    percentile: int
    engine: LatencyStats
    reference: LatencyStats | None = None
    ratio_spread: tuple[float, float] | None = None  # p10, p90 of the per-round ratios

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        q, e = self.percentile, self.engine
        if self.form == "ratio":
            lo, hi = self.ratio_spread or (float("nan"), float("nan"))
            return (f"{verdict}: latency ratio {self.measured:.3f} (rounds p10-p90 {lo:.3f}-{hi:.3f}) "
                    f"vs limit {self.limit:.3f}; engine p{q} {e.percentile_ms(q):.4f} ms, "
                    f"reference {self.reference.percentile_ms(q):.4f} ms")
        return (f"{verdict}: p{q} latency {self.measured:.4f} ms vs SLA {self.limit:.4f} ms "
                f"(median {e.median_ms:.4f}, p90 {e.p90_ms:.4f}, p99 {e.p99_ms:.4f})")


def _check_engine_path(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{what} {p} does not exist", "build it first (itcp-deploy run) or fix the path")
    if not os.access(p, os.R_OK):
        raise InputFileError(f"{what} {p} is not readable", "fix its permissions")
    return p


def _check_config(config: GateConfig) -> None:
    import math

    if config.percentile not in PERCENTILES:
        raise UsageError(f"--percentile must be one of {PERCENTILES}, got {config.percentile}",
                         "pass 50, 90 or 99")
    ratio_form = config.reference is not None or config.max_ratio is not None
    incomplete_ratio = ratio_form and None in (config.reference, config.max_ratio)
    if (config.sla_ms is None) == (not ratio_form) or incomplete_ratio:
        raise UsageError("give either --sla-ms, or both --reference and --max-ratio",
                         "e.g. --sla-ms 2.0, or --reference dense.ort.onnx --max-ratio 0.6")
    for name, value in (("--sla-ms", config.sla_ms), ("--max-ratio", config.max_ratio)):
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise UsageError(f"{name} must be a finite number > 0, got {value}", f"pass e.g. {name} 0.6")


def check_latency(config: GateConfig) -> GateResult:
    """Measure ``config.engine`` (and its reference, interleaved) and compare with the limit.

    Raises:
        UsageError, InputFileError: bad options or files (the CLI exits 2). A missed limit is not an error:
        ``GateResult.passed`` is False and the CLI exits 1.
    """
    from itcp_deploy.engines import EngineOptions, get_backend
    from itcp_deploy.profiling.timing import measure_interleaved, round_ratios

    _check_config(config)
    paths = [_check_engine_path(config.engine, "engine")]
    if config.reference is not None:
        paths.append(_check_engine_path(config.reference, "reference engine"))
    backend = get_backend(config.backend)
    options = EngineOptions(threads=config.threads)
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(backend.runner(p, options)) for p in paths]
        result = measure_interleaved(runners, None, config.timing)
    engine = result.stats[0]
    if config.reference is None:
        measured = engine.percentile_ms(config.percentile)
        return GateResult(measured <= config.sla_ms, measured, config.sla_ms, "sla", config.percentile,
                          engine)
    q = config.percentile
    ratios = round_ratios(result.samples_ms[0], result.samples_ms[1], q)
    measured = float(np.median(ratios))
    spread = (float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90)))
    return GateResult(measured <= config.max_ratio, measured, float(config.max_ratio), "ratio", q, engine,
                      result.stats[1], spread)
