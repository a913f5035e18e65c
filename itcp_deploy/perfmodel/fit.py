"""Fit the perf model from a profile: per-layer tables, then a whole-network calibration, then validation.

Isolated or in-context per-layer times do not add up to a whole network's latency (isolated-layer sums
overestimate whole networks by ~40% on ONNX Runtime CPU), so the tables are calibrated before the DP uses
them: ``measured_total ~ a * sum(layer tables) + b`` by least squares on the design engines, with ``a`` folded
into the tables and ``b`` into the constant. The model stays additive over layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from itcp_deploy.errors import FitRejectedError, InputFileError
from itcp_deploy.paths import check_outputs
from itcp_deploy.perfmodel.explain import LayerError, layer_errors
from itcp_deploy.perfmodel.flops_model import fit_flops, macs_tables
from itcp_deploy.perfmodel.mixed import SAME, combo_tables
from itcp_deploy.perfmodel.model import FitReport, PerfModel
from itcp_deploy.perfmodel.tables import layer_tables
from itcp_deploy.perfmodel.validate import validate
from itcp_deploy.profiling.records import EngineMeasurement, Profile
from itcp_deploy.registry import Registry
from itcp_deploy.space import PruningSpace

FIT_METHODS: Registry = Registry("perf-model method")

FIT_ROLES = ("design", "dense", "plan")  # engines the tables and calibration are fitted on (plan: see refit)


def _calibrate(
    space: PruningSpace, tables: dict[str, np.ndarray], engines: Sequence[EngineMeasurement], method: str,
    precision_tables: dict | None = None,
) -> PerfModel:
    raw = PerfModel(space, tables, 0.0, method, precision_tables=precision_tables or {})
    sums = np.array([raw.predict_ms(e.widths, e.int8_groups) for e in engines])
    y = np.array([e.latency.median_ms for e in engines])
    scale, const = _calibration(sums, y)
    return PerfModel(
        space, {k: v * scale for k, v in tables.items()}, const, method, calibration=(scale, const),
        precision_tables={k: {c: t * scale for c, t in v.items()} for k, v in raw.precision_tables.items()},
    )


def _calibration(sums: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(scale, offset)`` mapping summed layer times to latency: a least-squares line, or only an offset
    when that predicts the engines better left-one-out. In-context layer times already add up to the engine's
    latency, and a free slope then fits the noise between the profiling and timing windows (a slope of 2 and
    an offset of -1.7 ms on a MobileNet-V2 at 224 profiled at 13% noise); isolated-layer sums do need it."""
    offset = (1.0, float(np.mean(y - sums)))
    if len(y) < 4 or np.ptp(sums) <= 0:
        return offset
    x = np.stack([sums, np.ones_like(sums)], axis=1)
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    if a <= 0:
        return offset
    hat = np.einsum("ij,jk,ik->i", x, np.linalg.pinv(x.T @ x), x)
    line_loo = np.mean(((y - x @ np.array([a, b])) / np.clip(1 - hat, 1e-6, None)) ** 2)
    resid = y - sums - offset[1]
    offset_loo = np.mean((resid * len(y) / (len(y) - 1)) ** 2)
    return (float(a), float(b)) if line_loo < offset_loo else offset


@FIT_METHODS.register("table")
def fit_table_model(space: PruningSpace, engines: Sequence[EngineMeasurement]) -> PerfModel:
    """Per-layer staircase tables from the engines' per-layer times, calibrated on their total latency."""
    if not any(e.layer_ms for e in engines):
        raise InputFileError(
            "the profile has no per-layer times (EngineMeasurement.layer_ms)",
            "re-run `itcp-deploy profile-engines` with per-layer timing, or fit --method flops",
        )
    if any(e.int8_groups for e in engines):  # mixed precision: a table per precision pair (perfmodel.mixed)
        by_combo = combo_tables(space, engines)
        return _calibrate(space, {k: v[SAME] for k, v in by_combo.items()}, engines, "table", by_combo)
    return _calibrate(space, layer_tables(space, engines), engines, "table")


@FIT_METHODS.register("flops")
def fit_flops_model(space: PruningSpace, engines: Sequence[EngineMeasurement]) -> PerfModel:
    """The linear FLOPs model written as an additive perf model (tables = ms-per-MAC x MACs)."""
    flops = fit_flops(space, engines)
    tables = {k: v * flops.ms_per_mac for k, v in macs_tables(space).items()}
    return PerfModel(space, tables, flops.constant_ms, "flops")


def fit(profile: Profile, *, method: str = "table", force: bool = False) -> PerfModel:
    """Fit, validate on the holdout engines, and reject a fit far above the noise floor. ``force``: return a
    rejected fit (``model.report.rejected``) instead of raising, e.g. for a run that goes on with its closed loop.

    Raises:
        FitRejectedError: held-out mean error > max(3 x noise floor, 5%) and ``force`` is False.
        InputFileError: the profile lacks what ``method`` needs.
    """
    model = _fit_validated(profile, method)
    _check(model, force)
    return model


def _fit_validated(profile: Profile, method: str) -> PerfModel:
    fitter = FIT_METHODS.get(method)
    design = [e for e in profile.engines if e.role in FIT_ROLES]
    if not design:
        raise InputFileError("the profile has no design engines", "re-run `itcp-deploy profile-engines`")
    report = validate(profile.space, design, profile.by_role("holdout"), fitter, profile.noise_pct)
    model = fitter(profile.space, design)
    model.report = replace(report, rejected=report.mape_pct > report.threshold_pct)
    model.meta = profile.identity()
    dense = profile.by_role("dense")
    model.dense_measured_ms = dense[0].latency.median_ms if dense else None
    return model


def _check(model: PerfModel, force: bool) -> None:
    report = model.report
    if report is not None and report.rejected and not force:
        raise FitRejectedError(
            f"perf model held-out error {report.mape_pct:.1f}% (max {report.max_pct:.1f}%) is "
            f"above {report.threshold_pct:.1f}% (noise floor {report.noise_pct:.1f}%)",
            "profile more design engines or with more runs, or pass --force (--explain: which layers err)",
        )


def refit(profile: Profile, engines: Sequence[EngineMeasurement], method: str = "table") -> tuple[Profile, PerfModel]:
    """``profile`` with ``engines`` added (measured plans, e.g. the search's own choices:
    ``profiling.profiler.measure_plans``; one already there is replaced) and the model fitted on it, never
    rejected (``model.report.rejected`` says whether it would be). The held-out engines stay held out, so the
    report still measures the model away from what it was fitted on."""
    new = {e.engine_id for e in engines}
    merged = replace(profile, engines=[e for e in profile.engines if e.engine_id not in new] + list(engines),
                     builds=profile.builds + len(new - {e.engine_id for e in profile.engines}))
    return merged, fit(merged, method=method, force=True)


def judge(profile: Profile, method: str = "table") -> tuple[bool, dict[str, float]]:
    """Adaptive profiling's rule (``profiling.profiler.run_profiling``): whether the held-out error meets
    :func:`~itcp_deploy.perfmodel.validate.bar_pct`, and each layer's share of the held-out error (where the
    next engines should measure)."""
    fitter = FIT_METHODS.get(method)
    design = [e for e in profile.engines if e.role in FIT_ROLES]
    holdout = profile.by_role("holdout")
    try:
        report = validate(profile.space, design, holdout, fitter, profile.noise_pct)
        model = fitter(profile.space, design)
    except InputFileError:  # too few engines to fit or validate yet
        return False, {}
    shares = {r.layer: r.share_pct for r in layer_errors(model, holdout or design)}
    return report.mape_pct <= report.bar_pct, shares


def fit_file(
    profile_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    method: str = "table",
    force: bool = False,
    explain: Callable[[FitReport, list[LayerError]], None] | None = None,
) -> PerfModel:
    """``itcp-deploy fit``: load a profile, fit (see :func:`fit`), write the perf model JSON atomically.

    ``explain``: called with the fit's report and its per-layer held-out errors
    (:func:`~itcp_deploy.perfmodel.explain.layer_errors`), before a rejected fit raises."""
    check_outputs({"-o": output}, {"profile": profile_path})
    profile = Profile.load(profile_path)
    model = _fit_validated(profile, method)
    if explain is not None:
        explain(model.report, layer_errors(model, profile.by_role("holdout") or profile.by_role("design")))
    _check(model, force)
    model.save(output)
    return model
