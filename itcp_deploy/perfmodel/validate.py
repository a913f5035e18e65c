"""Held-out error of a fitted perf model, next to the noise floor and a linear FLOPs model.

Validation uses the profile's ``holdout`` engines (random plans never used for fitting). A profile without
them is cross-validated (k-fold over the design engines) instead, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from itcp_deploy.errors import InputFileError
from itcp_deploy.perfmodel.flops_model import fit_flops
from itcp_deploy.perfmodel.model import FitReport, PerfModel
from itcp_deploy.profiling.records import EngineMeasurement
from itcp_deploy.space import PruningSpace

ABSOLUTE_FLOOR_PCT = 5.0  # never reject below this mean error, however quiet the measurements
NOISE_FACTOR = 3.0  # reject above this many times the noise floor
BAR_FACTOR, BAR_FLOOR_PCT = 1.5, 2.0  # adaptive profiling stops at max(1.5 x noise floor, 2%) (issue 24)

Fitter = Callable[[PruningSpace, Sequence[EngineMeasurement]], PerfModel]


def threshold_pct(noise_pct: float) -> float:
    """The held-out mean error above which a fit is rejected: max(3 x noise floor, 5%)."""
    return (
        max(NOISE_FACTOR * noise_pct, ABSOLUTE_FLOOR_PCT) if math.isfinite(noise_pct) else ABSOLUTE_FLOOR_PCT
    )


def bar_pct(noise_pct: float) -> float:
    """The held-out mean error a model should reach, and where adaptive profiling stops: max(1.5 x noise, 2%)."""
    return max(BAR_FACTOR * noise_pct, BAR_FLOOR_PCT) if math.isfinite(noise_pct) else BAR_FLOOR_PCT


def _folds(design: Sequence[EngineMeasurement], holdout: Sequence[EngineMeasurement]):
    if holdout:
        return [(list(design), list(holdout))], "holdout"
    if len(design) < 4:
        raise InputFileError(
            f"the profile has {len(design)} design engines and no holdout engines: too few to "
            "validate a perf model",
            "profile more engines (e.g. --holdout 10)",
        )
    k = min(5, len(design))
    parts = [list(design[i::k]) for i in range(k)]
    return [
        ([e for j, p in enumerate(parts) if j != i for e in p], parts[i]) for i in range(k)
    ], "cross-validation"


def validate(
    space: PruningSpace,
    design: Sequence[EngineMeasurement],
    holdout: Sequence[EngineMeasurement],
    fitter: Fitter,
    noise_pct: float,
) -> FitReport:
    """Fit on each training split with ``fitter`` and measure abs % errors on the held-out engines."""
    folds, how = _folds(design, holdout)
    model_err, flops_err = [], []
    for train, test in folds:
        model, flops = fitter(space, train), fit_flops(space, train)
        for e in test:
            y = e.latency.median_ms
            model_err.append(abs(model.predict_ms(e.widths, e.int8_groups) - y) / y * 100)
            flops_err.append(abs(flops.predict_ms(space, e.widths) - y) / y * 100)
    return FitReport(
        mape_pct=float(np.mean(model_err)),
        max_pct=float(np.max(model_err)),
        flops_mape_pct=float(np.mean(flops_err)),
        flops_max_pct=float(np.max(flops_err)),
        noise_pct=float(noise_pct),
        threshold_pct=threshold_pct(noise_pct),
        bar_pct=bar_pct(noise_pct),
        n_design=len(design),
        n_validation=len(model_err),
        validation=how,
    )
