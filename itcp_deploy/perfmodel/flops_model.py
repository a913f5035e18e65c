"""The baseline the perf model must beat: latency = a * MACs + b, least squares on the design engines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from itcp_deploy.profiling.records import EngineMeasurement
from itcp_deploy.space import PruningSpace


@dataclass(frozen=True)
class FlopsModel:
    ms_per_mac: float
    constant_ms: float

    def predict_ms(self, space: PruningSpace, widths: Mapping[str, int]) -> float:
        return self.ms_per_mac * space.macs(widths) + self.constant_ms


def macs_tables(space: PruningSpace) -> dict[str, np.ndarray]:
    """Per-layer MACs over the candidate grid, shape (len C_in, len C_out)."""
    out = {}
    for layer in space.layers:
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        out[layer.name] = np.array([[layer.macs(a, b) for b in cout] for a in cin], dtype=float)
    return out


def fit_flops(space: PruningSpace, engines: Sequence[EngineMeasurement]) -> FlopsModel:
    macs = np.array([space.macs(e.widths) for e in engines], dtype=float)
    y = np.array([e.latency.median_ms for e in engines])
    if len(engines) < 2 or np.ptp(macs) == 0:
        return FlopsModel(float(np.mean(y) / max(np.mean(macs), 1.0)), 0.0)
    (a, b), *_ = np.linalg.lstsq(np.stack([macs, np.ones_like(macs)], axis=1), y, rcond=None)
    return FlopsModel(float(a), float(b))
