"""What INT8 costs each group: the held-out loss increase when that group alone is quantized (issue 27).

For a set of groups, the model's Q/DQ graph with those groups at INT8 and every other node at FP32
(:mod:`itcp_deploy.engines.mixed`, calibrated on ``calib``, the INT8 settings of this CPU's ISA) runs on
ONNX Runtime CPU over held-out images; its mean cross-entropy less the FP32 graph's is the increase. A group's
INT8 cost is the increase with it alone at INT8, clipped at 0 (noise). These are loss units, as the ``taylor``
and ``sensitivity`` width scores are (:mod:`itcp_deploy.pruning.scores`), so the search takes
``score(width, int8) = score(width) - int8_cost`` (:mod:`itcp_deploy.search.precision`), which assumes the
increases add up over groups; :meth:`Int8Loss.increase` of a pair against the sum of its two costs measures
that assumption.

Cost: one calibrated quantization and one pass over the held-out images per group (ResNet-20: 9 groups).

The same graphs give each group's *disagreement*: the share of held-out images whose top-1 moves when that group
alone is INT8. The final stage's precision control (:func:`itcp_deploy.search.precision.keep_fp32`) ranks a
mixed plan's INT8 groups by it, on the pruned model, when the engine agrees too little with its FP32 model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from itcp_deploy.engines.int8 import Int8Settings
from itcp_deploy.errors import UsageError
from itcp_deploy.pruning.importance import Batch
from itcp_deploy.space import PruningSpace


class Int8Loss:
    """Held-out loss of ``model``'s ONNX Runtime graph with any set of groups at INT8.

    ``batches``: held-out ``(images, labels)``; ``calib``: (N, C, H, W) float32 calibration images;
    ``widths``: a pruned ``model``'s plan (its removed branches have no layer to quantize).
    Use as a context manager (it writes its graphs to a temporary folder).
    """

    def __init__(self, model: nn.Module, space: PruningSpace, calib: np.ndarray, batches: Sequence[Batch],
                 settings: Int8Settings | None = None, widths: Mapping[str, int] | None = None) -> None:
        if not batches:
            raise UsageError("the INT8 cost needs held-out images", "pass a non-empty held-out loader")
        self.model, self.space, self.calib, self.settings, self.widths = model, space, calib, settings, widths
        self.images = np.concatenate([np.asarray(x, dtype=np.float32) for x, _ in batches])
        self.labels = np.concatenate([np.asarray(y) for _, y in batches]).astype(np.int64)
        self._tmp = tempfile.TemporaryDirectory(prefix="itcp-int8-cost-")
        self.dir = Path(self._tmp.name)
        self.base = float("nan")
        self.base_top1 = np.zeros(0, dtype=np.int64)

    def __enter__(self) -> Int8Loss:
        from itcp_deploy.engines.export import export_onnx

        self.fp32 = export_onnx(self.model, (1, *self.space.input_shape[1:]), self.dir / "fp32.onnx")
        logits = self._logits(self.fp32)
        self.base, self.base_top1 = self._loss(logits), logits.argmax(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def increase(self, groups: Sequence[str]) -> float:
        """Mean cross-entropy with ``groups`` at INT8, less the FP32 graph's."""
        return self._loss(self._mixed_logits(groups)) - self.base if groups else 0.0

    def disagreement(self, groups: Sequence[str]) -> float:
        """The share of images (0..1) whose top-1 with ``groups`` at INT8 differs from the FP32 graph's."""
        return float(np.mean(self._mixed_logits(groups).argmax(1) != self.base_top1)) if groups else 0.0

    def _mixed_logits(self, groups: Sequence[str]) -> np.ndarray:
        from itcp_deploy.engines.mixed import group_layers
        from itcp_deploy.engines.precision import convert_precision

        path = convert_precision(self.fp32, self.dir / "mixed.onnx", "mixed", self.calib, self.settings,
                                 int8_layers=group_layers(self.space, groups, self.widths))
        return self._logits(path)

    def _logits(self, path: os.PathLike[str]) -> np.ndarray:
        from itcp_deploy.engines import EngineOptions
        from itcp_deploy.engines.onnxruntime.build import open_session, session_options

        session = open_session(Path(path), session_options(EngineOptions()), EngineOptions())
        name = session.get_inputs()[0].name
        logits = np.concatenate([session.run(None, {name: self.images[i:i + 1]})[0]
                                 for i in range(len(self.images))])
        if logits.ndim != 2 or logits.shape[1] <= int(self.labels.max()):
            raise UsageError(f"the INT8 cost needs class logits, the model outputs shape {logits.shape}",
                             "use --precision fp32 or int8 for models without a classification output")
        return logits

    def _loss(self, logits: np.ndarray) -> float:
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(self.labels)), self.labels].mean())


def int8_costs(loss: Int8Loss) -> dict[str, float]:
    """Every prunable group's INT8 cost: the loss increase with it alone at INT8, at least 0."""
    return {g.name: max(0.0, loss.increase((g.name,))) for g in loss.space.prunable}


def int8_disagreements(loss: Int8Loss, groups: Sequence[str]) -> dict[str, float]:
    """Each of ``groups``'s disagreement with the FP32 graph when it alone is INT8."""
    return {g: loss.disagreement((g,)) for g in groups}
