"""Per-layer latency tables over (input width, output width), fitted from per-layer engine timings.

Layers that cost the same (same op, kernel, stride, padding, groups, input size: a *layer class*) pool their
samples: each measured engine gives one ``(w_in, w_out, ms)`` sample per layer. A class's table on a layer's
candidate grid is a smooth staircase model, least squares on ``1, t_in * t_out, t_in, t_out`` with ``t = ceil(w /
T)`` rounded to a tile ``T`` chosen per side (input and output) by leave-one-out error, plus the mean residual of
the samples that fall in the same tile (shrunk towards 0 when there are few). A side may also be *linear below its
tile* (``t = w / T`` for ``w < T``): ONNX Runtime's blocked (NCHWc) convolutions read a narrow input (fewer channels
than the block) directly, so their cost grows with every channel up to the block and by whole blocks above it (a 3x3
conv at 32x32 on AVX-512: 12, 19, 26, 31 us at 4, 8, 12, 16 input channels, then 59 us flat from 20 to 32). One tile
for both sides and no sub-tile term (before issue 24) mispredicted such layers by up to 3x at cells the design
missed. Steps at tile boundaries (e.g. 60 vs 64 channels) survive, which a FLOPs proxy cannot represent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from itcp_deploy.profiling.records import ATTACHED_SUFFIX, EngineMeasurement
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


Rounding = tuple[int, bool]  # (tile, linear below the tile) of one side
ROUNDINGS: tuple[Rounding, ...] = tuple((t, lin) for t in TILES for lin in (False, True) if t > 1 or not lin)


def _rounded(w: np.ndarray, rounding: Rounding) -> np.ndarray:
    tile, linear_below = rounding
    t = np.ceil(w / tile)
    return np.where(w >= tile, t, w / tile) if linear_below else t


def _features(w_in: np.ndarray, w_out: np.ndarray, rounding: tuple[Rounding, Rounding], depthwise: bool) -> np.ndarray:
    ti, to = _rounded(w_in, rounding[0]), _rounded(w_out, rounding[1])
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
        self.rounding: tuple[Rounding, Rounding] = ((1, False), (1, False))
        self.coef = np.zeros(n_feat)
        if len(y) >= n_feat + 2:
            ins = ROUNDINGS if not depthwise else ((1, False),)  # depthwise: one group, the output side
            errs = {(a, b): _loo_error(_features(keys[:, 0], keys[:, 1], (a, b), depthwise), y)
                    for a in ins for b in ROUNDINGS}
            self.rounding = min(errs, key=errs.get)
            self.coef, *_ = np.linalg.lstsq(_features(keys[:, 0], keys[:, 1], self.rounding, depthwise), y,
                                            rcond=None)
        elif len(y):  # too few cells for a regression: proportional to the work
            work = _features(keys[:, 0], keys[:, 1], self.rounding, depthwise)[:, 1]
            self.coef[1] = float(np.sum(y * work) / max(np.sum(work**2), 1e-30))
        self.residuals: dict[tuple[float, float], list[float]] = defaultdict(list)
        for (a, b), values in samples.items():
            key = self._tile_keys(np.array([[a]], dtype=float), np.array([[b]], dtype=float))[0][0]
            self.residuals[key] += [v - float(self.smooth(np.array(a), np.array(b))) for v in values]

    def smooth(self, w_in: np.ndarray, w_out: np.ndarray) -> np.ndarray:
        return _features(np.asarray(w_in, float), np.asarray(w_out, float), self.rounding, self.depthwise) @ self.coef

    def table(self, cin: tuple[int, ...], cout: tuple[int, ...], floor: bool = True) -> np.ndarray:
        """Latency (ms) on the grid ``cin x cout``: the smooth model plus the mean residual of the samples in
        the cell's *tile* (the cells the rounding says cost the same), shrunk by ``n / (n + 1)`` for ``n``
        samples.

        Tiles pool samples: a single measured cell's mean repeats its in-context noise (a few microseconds
        per layer), and residuals interpolated between measured cells (before issue 24) carried a step's
        residual across the step (a cell at 16 input channels took the one at 4's: 17 us predicted for 55)."""
        wi, wo = np.meshgrid(np.array(cin, dtype=float), np.array(cout, dtype=float), indexing="ij")
        out = self.smooth(wi, wo)
        tiles = self._tile_keys(wi, wo)
        for i, j in np.ndindex(out.shape):
            resid = self.residuals.get(tiles[i][j])
            if resid:
                out[i, j] += float(np.mean(resid)) * len(resid) / (len(resid) + 1)
        if not floor:
            return out
        return np.maximum(out, 0.05 * min(self.cells.values()) if self.cells else 0.0)

    def _tile_keys(self, w_in: np.ndarray, w_out: np.ndarray) -> list[list[tuple[float, float]]]:
        ti, to = _rounded(w_in, self.rounding[0]), _rounded(w_out, self.rounding[1])
        return [list(zip(a.tolist(), b.tolist(), strict=True)) for a, b in zip(ti, to, strict=True)]


def layer_tables(space: PruningSpace, engines: Iterable[EngineMeasurement]) -> dict[str, np.ndarray]:
    """Uncalibrated per-layer tables (ms), shape (len C_in, len C_out), for every layer of ``space``: its class's
    table, corrected by :func:`_layer_correction`."""
    engines = [e for e in engines if e.layer_ms]
    samples = collect_samples(space, engines)
    models: dict[str, ClassModel] = {}
    tables = {}
    for layer in space.layers:
        key = layer_class(layer)
        if key not in models:
            models[key] = ClassModel(samples.get(key, {}), layer.depthwise)
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        base = models[key].table(cin, cout)
        tables[layer.name] = np.maximum(base + _layer_correction(space, layer, engines, base), 0.05 * base.min())
    return tables


def _layer_correction(space: PruningSpace, layer: LayerSpec, engines: list[EngineMeasurement],
                      base: np.ndarray) -> np.ndarray:
    """What this layer costs beyond its class's table, as a function of its output width: the ops ONNX Runtime
    fused into it (a residual add, an activation), and those timed as attached to its output (pools,
    concatenations, shuffles: ``layer_ms["<layer>+"]``). Layers of one class share a kernel, not what runs
    around it: a ResNet block's second conv carries the block's add, its first does not. Before issue 24 both
    were "other" or pooled into the class, 1.4% of in-sample error on issue 24's small residual net (1.0% with
    this correction) and 3.1% on a MobileNet-V2 at 224 (1.5%)."""
    cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
    residuals: Samples = defaultdict(list)
    for e in (e for e in engines if layer.name in e.layer_ms):
        w = space.complete(e.widths)
        a, b = w[layer.in_group], w[layer.out_group]
        own = e.layer_ms.get(layer.name, 0.0) + e.layer_ms.get(layer.name + ATTACHED_SUFFIX, 0.0)
        residuals[(a, b)].append(own - float(base[cin.index(a), cout.index(b)]))
    return ClassModel(residuals, depthwise=True).table(cin, cout, floor=False)
