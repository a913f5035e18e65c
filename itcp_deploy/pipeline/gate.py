"""The latency gate (``itcp-deploy check-latency``): measure an engine, pass or fail against an SLA.

Two forms. Absolute: the engine's latency percentile must be <= ``sla_ms``. Ratio: the engine and a
reference (the dense engine) are measured interleaved in one run, and the median over rounds of the
per-round latency ratio must be <= ``max_ratio``; drift and neighbours on a shared CI runner slow both
engines alike, so the ratio is the robust gate there. A ratio that misses is measured once more and the
measurement with the narrower per-round spread decides (:func:`~itcp_deploy.pipeline.meter.settle`, the rule the
run's final stage shipped the engine by): a gate must not judge an engine more loosely, nor more harshly, than
the run that delivered it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from itcp_deploy.atomic_io import read_json
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.profiling.records import LatencyStats
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.target import LatencyTarget, Measurement, Verdict

if TYPE_CHECKING:
    from itcp_deploy.profiling.engine_timing import EnginesLatency


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
    input_shape: tuple[int, ...] | None = None  # for engines with dynamic input dimensions
    min_agreement: float | None = None  # top-1 agreement with the reference on ``data``'s test images (0..1)
    data: str | None = None
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
    agreement: float | None = None  # top-1 agreement with the reference, when gated on it
    min_agreement: float | None = None
    measurements: tuple[float, ...] = ()  # every ratio measured: two when a miss was measured again

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        agree = ("" if self.agreement is None else
                 f"; top-1 agreement with the reference {self.agreement:.4f} vs min {self.min_agreement:.4f}")
        return self._latency_line(verdict) + agree

    def _latency_line(self, verdict: str) -> str:
        q, e = self.percentile, self.engine
        if self.form == "ratio":
            lo, hi = self.ratio_spread or (float("nan"), float("nan"))
            again = ("" if len(self.measurements) < 2 else " (a miss, measured again: " + ", ".join(
                f"{r:.3f}" for r in self.measurements) + "; the narrower spread kept)")
            return (f"{verdict}: latency ratio {self.measured:.3f} (rounds p10-p90 {lo:.3f}-{hi:.3f}) "
                    f"vs limit {self.limit:.3f}; engine p{q} {e.percentile_ms(q):.4f} ms, "
                    f"reference {self.reference.percentile_ms(q):.4f} ms{again}")
        return (f"{verdict}: p{q} latency {self.measured:.4f} ms vs SLA {self.limit:.4f} ms "
                f"(median {e.median_ms:.4f}, p90 {e.p90_ms:.4f}, p99 {e.p99_ms:.4f})")


def _check_engine_path(path: str, what: str, backend: str) -> Path:
    from itcp_deploy.engines.files import resolve_engine

    p = resolve_engine(path, backend, what)
    if not os.access(p, os.R_OK):
        raise InputFileError(f"{what} {p} is not readable", "fix its permissions")
    return p


def _target(config: GateConfig) -> LatencyTarget:
    """The gate's limit as a :class:`LatencyTarget` (no margin: the gate judges the SLA itself)."""
    ratio_form = config.reference is not None or config.max_ratio is not None
    if (config.sla_ms is None) == (not ratio_form) or (ratio_form and None in (config.reference, config.max_ratio)):
        raise UsageError("give either --sla-ms, or both --reference and --max-ratio",
                         "e.g. --sla-ms 2.0, or --reference dense.ort.onnx --max-ratio 0.6")
    if config.min_agreement is not None and (config.reference is None or config.data is None
                                             or not 0.0 <= config.min_agreement <= 1.0):
        raise UsageError("--min-agreement needs --reference, --data and a share between 0 and 1",
                         "e.g. --reference dense.ort.onnx --max-ratio 0.6 --min-agreement 0.99 --data digits")
    if config.max_ratio is not None:
        return LatencyTarget.from_ratio(config.max_ratio, config.percentile)
    return LatencyTarget(sla_ms=config.sla_ms, percentile=config.percentile, margin=0.0)


def check_latency(config: GateConfig) -> GateResult:
    """Measure ``config.engine`` (and its reference, interleaved) and compare with the limit.

    Raises:
        UsageError, InputFileError: bad options or files (the CLI exits 2). A missed limit is not an error:
        ``GateResult.passed`` is False and the CLI exits 1.
    """
    from itcp_deploy.engines import EngineOptions
    from itcp_deploy.pipeline.meter import relative_spread, settle
    from itcp_deploy.profiling.engine_timing import measure_engines

    target = _target(config)
    engine = _check_engine_path(config.engine, "engine", config.backend)
    reference = (None if config.reference is None
                 else _check_engine_path(config.reference, "reference engine", config.backend))
    q, options = config.percentile, EngineOptions(threads=config.threads)

    def measure() -> EnginesLatency:
        return measure_engines(config.backend, [engine], options, config.timing, reference=reference,
                               percentile=q, input_shape=config.input_shape)

    if reference is None:  # no reference measured beside it to tell a noisy window from a slow engine: one look
        one = measure().engines[0]
        verdict = target.judge(Measurement(one.stats.percentile_ms(q)))
        return GateResult(verdict.met, verdict.measured_ms, verdict.limit_ms, "sla", q, one.stats)

    def judge(m: EnginesLatency) -> Verdict:  # on the ratio, against a reference latency of 1
        return target.judge(Measurement(m.engines[0].stats.percentile_ms(q), m.engines[0].ratio), dense_ms=1.0)

    kept, taken = settle(measure, lambda m: judge(m).met, lambda m: relative_spread(m.engines[0]))
    one, agreement = kept.engines[0], _agreement(config, engine, reference)
    met = judge(kept).met and (agreement is None or agreement >= float(config.min_agreement or 0.0))
    return GateResult(met, float(one.ratio), float(config.max_ratio), "ratio", q, one.stats, kept.reference,
                      one.ratio_spread, agreement, config.min_agreement,
                      tuple(float(m.engines[0].ratio) for m in taken))


def _agreement(config: GateConfig, engine: Path, reference: Path) -> float | None:
    """How often the engine picks the reference's class on ``data``'s test images (``--min-agreement``)."""
    if config.min_agreement is None:
        return None
    from itcp_deploy.data import load_dataset, make_loader
    from itcp_deploy.engines import EngineOptions
    from itcp_deploy.engines.evaluate import engine_quality

    info = load_dataset(str(config.data), "test")
    info.require_labels("--min-agreement (top-1 agreement)")
    loader = make_loader(info, 64, shuffle=False, max_samples=1000)
    quality = engine_quality(config.backend, engine, reference, EngineOptions(threads=config.threads), loader)
    return float(quality["agreement_with_dense"])


def run_gates(run_dir: str | Path, timing: TimingConfig | None = None) -> list[tuple[str, GateConfig]]:
    """One gate per target of a run folder (``check-latency --run OUT``), read from its ``report.json``: a
    speed-up SLA gates the ratio to that target's dense engine, an absolute one the engine's own percentile."""
    from itcp_deploy.pipeline.run_dir import RunFolder

    folder = RunFolder(run_dir)
    root, report = folder.root, read_json(folder.report_json, "run report")
    entries = report.get("targets") if isinstance(report, dict) else None
    if not entries:
        raise InputFileError(f"{folder.report_json} lists no targets (written by an older version)",
                             "rerun `itcp-deploy run` into that folder to rewrite its report")
    gates = []
    try:
        for t in entries:
            sla, extra = t["sla"], {} if timing is None else {"timing": timing}
            common = dict(engine=str(root / t["engine"]), backend=t["backend"], percentile=int(t["percentile"]),
                          threads=int(t["threads"]), **extra)
            gate = (GateConfig(**common, sla_ms=float(sla["sla_ms"])) if sla.get("sla_ms") is not None else
                    GateConfig(**common, reference=str(root / t["dense_engine"]),
                               max_ratio=1.0 / float(sla["speedup"])))
            gates.append((str(t["name"]), gate))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise InputFileError(f"{folder.report_json}: a target entry is malformed ({e!r})",
                             "rerun `itcp-deploy run` into that folder to rewrite its report") from None
    return gates


def check_run(run_dir: str | Path, timing: TimingConfig | None = None) -> list[tuple[str, GateResult]]:
    """Gate every target of a run folder; each result says whether that target's engine meets its SLA."""
    return [(name, check_latency(gate)) for name, gate in run_gates(run_dir, timing)]
