"""Fit the perf model from a profile: per-layer tables, then a whole-network calibration, then validation.

Isolated or in-context per-layer times do not add up to a whole network's latency (isolated-layer sums
overestimate whole networks by ~40% on ONNX Runtime CPU), so the tables are calibrated before the DP uses
them: ``measured_total ~ a * sum(layer tables) + b`` by least squares on the design engines, with ``a`` folded
into the tables and ``b`` into the constant. The model stays additive over layers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from itcp_deploy.errors import FitRejectedError, InputFileError
from itcp_deploy.perfmodel.flops_model import fit_flops, macs_tables
from itcp_deploy.perfmodel.model import PerfModel
from itcp_deploy.perfmodel.tables import layer_tables
from itcp_deploy.perfmodel.validate import validate
from itcp_deploy.profiling.records import EngineMeasurement, Profile
from itcp_deploy.registry import Registry
from itcp_deploy.space import PruningSpace

FIT_METHODS: Registry = Registry("perf-model method")

FIT_ROLES = ("design", "dense")  # engines the tables and calibration are fitted on


def _calibrate(
    space: PruningSpace, tables: dict[str, np.ndarray], engines: Sequence[EngineMeasurement], method: str
) -> PerfModel:
    raw = PerfModel(space, tables, 0.0, method)
    sums = np.array([raw.predict_ms(e.widths) for e in engines])
    y = np.array([e.latency.median_ms for e in engines])
    scale, const = 1.0, float(np.mean(y - sums))
    if len(engines) >= 3 and np.ptp(sums) > 0:
        (a, b), *_ = np.linalg.lstsq(np.stack([sums, np.ones_like(sums)], axis=1), y, rcond=None)
        if a > 0:
            scale, const = float(a), float(b)
    return PerfModel(
        space, {k: v * scale for k, v in tables.items()}, const, method, calibration=(scale, const)
    )


@FIT_METHODS.register("table")
def fit_table_model(space: PruningSpace, engines: Sequence[EngineMeasurement]) -> PerfModel:
    """Per-layer staircase tables from the engines' per-layer times, calibrated on their total latency."""
    if not any(e.layer_ms for e in engines):
        raise InputFileError(
            "the profile has no per-layer times (EngineMeasurement.layer_ms)",
            "re-run `itcp-deploy profile-engines` with per-layer timing, or fit --method flops",
        )
    return _calibrate(space, layer_tables(space, engines), engines, "table")


@FIT_METHODS.register("flops")
def fit_flops_model(space: PruningSpace, engines: Sequence[EngineMeasurement]) -> PerfModel:
    """The linear FLOPs model written as an additive perf model (tables = ms-per-MAC x MACs)."""
    flops = fit_flops(space, engines)
    tables = {k: v * flops.ms_per_mac for k, v in macs_tables(space).items()}
    return PerfModel(space, tables, flops.constant_ms, "flops")


def fit(profile: Profile, *, method: str = "table", force: bool = False) -> PerfModel:
    """Fit, validate on the holdout engines, and reject a fit far above the noise floor.

    Raises:
        FitRejectedError: held-out mean error > max(3 x noise floor, 5%) and ``force`` is False.
        InputFileError: the profile lacks what ``method`` needs.
    """
    fitter = FIT_METHODS.get(method)
    design = [e for e in profile.engines if e.role in FIT_ROLES]
    if not design:
        raise InputFileError("the profile has no design engines", "re-run `itcp-deploy profile-engines`")
    report = validate(profile.space, design, profile.by_role("holdout"), fitter, profile.noise_pct)
    model = fitter(profile.space, design)
    rejected = report.mape_pct > report.threshold_pct
    model.report = replace(report, rejected=rejected)
    model.meta = profile.identity()
    if rejected and not force:
        raise FitRejectedError(
            f"perf model held-out error {report.mape_pct:.1f}% (max {report.max_pct:.1f}%) is "
            f"above {report.threshold_pct:.1f}% (noise floor {report.noise_pct:.1f}%)",
            "profile more design engines or with more runs, or pass --force",
        )
    return model


def fit_file(
    profile_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    method: str = "table",
    force: bool = False,
) -> PerfModel:
    """``itcp-deploy fit``: load a profile, fit (see :func:`fit`), write the perf model JSON atomically."""
    model = fit(Profile.load(profile_path), method=method, force=force)
    model.save(output)
    return model
