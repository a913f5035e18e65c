"""Per-layer latency tables over (input width, output width), fitted from per-layer engine timings.

Layers that cost the same (same op, kernel, stride, padding, groups, input size: a *layer class*) pool their
samples: each measured engine gives one ``(w_in, w_out, ms)`` sample per layer. A class's table on a layer's
candidate grid is the sample mean where a cell was measured; elsewhere it is a smooth staircase model (least
squares on tile-rounded widths ``ceil(w / T)``, with the tile ``T`` chosen by leave-one-out error) plus the
measured residuals interpolated linearly along the cell's row and column. So steps at tile boundaries
(e.g. 60 vs 64 channels) survive, which a FLOPs proxy cannot represent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from itcp_deploy.profiling.records import EngineMeasurement
from itcp_deploy.space import LayerSpec, PruningSpace

TILES = (1, 4, 8, 16, 32)

Samples = dict[tuple[int, int], list[float]]


def layer_class(layer: LayerSpec) -> str:
    """What makes two layers cost the same at equal widths (the signature without the widths)."""
    return layer.signature(0, 0).rsplit("|", 1)[0]


def collect_samples(space: PruningSpace, engines: Iterable[EngineMeasurement]) -> dict[str, Samples]:
    """Per layer class, the per-layer times measured at each (w_in, w_out)."""
    out: dict[str, Samples] = defaultdict(lambda: defaultdict(list))
    for e in engines:
        if not e.layer_ms:
            continue
        widths = space.complete(e.widths)
        for layer in space.layers:
            ms = e.layer_ms.get(layer.name)
            if ms is not None and np.isfinite(ms):
                out[layer_class(layer)][(widths[layer.in_group], widths[layer.out_group])].append(float(ms))
    return out


def _features(w_in: np.ndarray, w_out: np.ndarray, tile: int, depthwise: bool) -> np.ndarray:
    ti, to = np.ceil(w_in / tile), np.ceil(w_out / tile)
    if depthwise:
        return np.stack([np.ones_like(to), to], axis=-1)
    return np.stack([np.ones_like(ti), ti * to, ti, to], axis=-1)


def _loo_error(x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared leave-one-out residual of least squares (closed form via the hat matrix)."""
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    hat = np.einsum("ij,jk,ik->i", x, np.linalg.pinv(x.T @ x), x)
    resid = (y - x @ coef) / np.clip(1.0 - hat, 1e-6, None)
    return float(np.mean(resid**2))


class ClassModel:
    """The fitted latency of one layer class at any (w_in, w_out)."""

    def __init__(self, samples: Samples, depthwise: bool) -> None:
        self.depthwise = depthwise
        self.cells = {k: float(np.mean(v)) for k, v in samples.items()}
        keys = np.array(list(self.cells), dtype=float).reshape(-1, 2)
        y = np.array(list(self.cells.values()))
        n_feat = 2 if depthwise else 4
        self.tile, self.coef = 1, np.zeros(n_feat)
        if len(y) >= n_feat + 2:
            errs = {t: _loo_error(_features(keys[:, 0], keys[:, 1], t, depthwise), y) for t in TILES}
            self.tile = min(errs, key=errs.get)
            self.coef, *_ = np.linalg.lstsq(
                _features(keys[:, 0], keys[:, 1], self.tile, depthwise), y, rcond=None
            )
        elif len(y):  # too few cells for a regression: proportional to the tile-rounded work
            work = _features(keys[:, 0], keys[:, 1], 1, depthwise)[:, 1]
            self.coef[1] = float(np.sum(y * work) / max(np.sum(work**2), 1e-30))

    def smooth(self, w_in: np.ndarray, w_out: np.ndarray) -> np.ndarray:
        return _features(w_in.astype(float), w_out.astype(float), self.tile, self.depthwise) @ self.coef

    def table(self, cin: tuple[int, ...], cout: tuple[int, ...]) -> np.ndarray:
        """Latency (ms) on the grid ``cin x cout``: measured means, else smooth + interpolated residuals."""
        wi, wo = np.meshgrid(np.array(cin), np.array(cout), indexing="ij")
        smooth = self.smooth(wi, wo)
        rows: dict[int, dict[int, float]] = defaultdict(dict)
        cols: dict[int, dict[int, float]] = defaultdict(dict)
        for (a, b), v in self.cells.items():
            rows[a][b] = cols[b][a] = v - float(self.smooth(np.array(a), np.array(b)))
        out = smooth.copy()
        for i, a in enumerate(cin):
            for j, b in enumerate(cout):
                if (a, b) in self.cells:
                    out[i, j] = self.cells[(a, b)]
                    continue
                along = [_interp(b, rows.get(a, {})), _interp(a, cols.get(b, {}))]
                along = [r for r in along if r is not None]
                if along:
                    out[i, j] += float(np.mean(along))
        floor = 0.05 * min(self.cells.values()) if self.cells else 0.0
        return np.maximum(out, floor)


def _interp(x: int, points: dict[int, float]) -> float | None:
    """Linear interpolation between the nearest measured neighbours on both sides (None without both)."""
    lo = [p for p in points if p < x]
    hi = [p for p in points if p > x]
    if not lo or not hi:
        return None
    a, b = max(lo), min(hi)
    return points[a] + (points[b] - points[a]) * (x - a) / (b - a)


def layer_tables(space: PruningSpace, engines: Iterable[EngineMeasurement]) -> dict[str, np.ndarray]:
    """Uncalibrated per-layer tables (ms), shape (len C_in, len C_out), for every layer of ``space``."""
    samples = collect_samples(space, engines)
    models: dict[str, ClassModel] = {}
    tables = {}
    for layer in space.layers:
        key = layer_class(layer)
        if key not in models:
            models[key] = ClassModel(samples.get(key, {}), layer.depthwise)
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        tables[layer.name] = models[key].table(cin, cout)
    return tables
