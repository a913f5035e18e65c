"""Which layers carry a perf model's held-out error: per layer, its table's prediction against its profiled time.

A whole-network error is the sum of per-layer errors (the model is additive, and in-context per-layer times add up
to the engine's latency), so on each validation engine the prediction splits exactly into one term per layer (its
table cell minus its profiled time, both on the calibrated scale: profiled times x the calibration's scale) plus the
rest (the constant minus the time mapped to no layer). Ranking layers by their share of the summed absolute error
says where the model is wrong: a layer class the tables cannot represent, a width the design never covered, or time
outside every layer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from itcp_deploy.perfmodel.mixed import layer_combos
from itcp_deploy.perfmodel.model import PerfModel
from itcp_deploy.perfmodel.tables import layer_class
from itcp_deploy.profiling.records import ATTACHED_SUFFIX, EngineMeasurement

OTHER = "(not in any layer)"


@dataclass(frozen=True)
class LayerError:
    """One layer's error over the validation engines (ms; signed error = predicted - profiled).

    ``share_pct``: its part of the summed absolute error of all rows; ``worst``: the (input, output) width
    of the engine where it erred most."""

    layer: str
    layer_class: str
    predicted_ms: float
    profiled_ms: float
    mean_error_ms: float
    mean_abs_error_ms: float
    share_pct: float
    worst: tuple[int, int]


def layer_errors(model: PerfModel, engines: Sequence[EngineMeasurement]) -> list[LayerError]:
    """Per-layer error of ``model`` on ``engines`` (with per-layer times), largest share first."""
    space, scale = model.space, model.calibration[0]
    errors: dict[str, list[float]] = defaultdict(list)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    worst: dict[str, tuple[float, tuple[int, int]]] = {}
    for e in engines:
        if not e.layer_ms:
            continue
        w, combos = space.complete(e.widths), layer_combos(space, e.int8_groups)
        summed = 0.0
        for layer in space.layers:
            i = space.group(layer.in_group).index(w[layer.in_group])
            j = space.group(layer.out_group).index(w[layer.out_group])
            own = e.layer_ms.get(layer.name, 0.0) + e.layer_ms.get(layer.name + ATTACHED_SUFFIX, 0.0)
            pred, got = float(model.layer_table(layer.name, combos[layer.name])[i, j]), scale * float(own)
            summed += pred
            _add(layer.name, pred, got, (w[layer.in_group], w[layer.out_group]), errors, sums, worst)
        rest = model.predict_ms(e.widths, e.int8_groups) - summed
        _add(OTHER, rest, e.latency.median_ms - scale * sum(e.layer_ms.values()), (0, 0), errors, sums, worst)
    total = sum(float(np.sum(np.abs(v))) for v in errors.values()) or 1.0
    classes = {la.name: layer_class(la) for la in space.layers}
    rows = [LayerError(name, classes.get(name, ""), sums[name][0] / len(v), sums[name][1] / len(v),
                       float(np.mean(v)), float(np.mean(np.abs(v))), float(np.sum(np.abs(v))) / total * 100,
                       worst[name][1]) for name, v in errors.items()]
    return sorted(rows, key=lambda r: -r.share_pct)


def _add(name: str, pred: float, got: float, widths: tuple[int, int], errors, sums, worst) -> None:
    errors[name].append(pred - got)
    sums[name][0] += pred
    sums[name][1] += got
    if abs(pred - got) >= worst.get(name, (-1.0, (0, 0)))[0]:
        worst[name] = (abs(pred - got), widths)


def explain_lines(rows: Sequence[LayerError], top: int = 10) -> list[str]:
    """The ``top`` rows as text lines, for ``fit --explain`` and a rejected fit's message."""
    out = [f"{'layer':32s} {'pred ms':>9s} {'prof ms':>9s} {'err ms':>9s} {'share':>6s}  worst (in, out)"]
    for r in rows[:top]:
        out.append(f"{r.layer[:32]:32s} {r.predicted_ms:9.4f} {r.profiled_ms:9.4f} {r.mean_error_ms:+9.4f} "
                   f"{r.share_pct:5.1f}%  {r.worst}")
    return out
