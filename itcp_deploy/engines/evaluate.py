"""The shipped engine's own accuracy: run a built engine over labelled batches, through its runner.

After pruning, INT8 (or FP16) is where accuracy can quietly go (ORT#6004 on AVX2, TensorRT's Q/DQ placement), so
the report's accuracy must be the engine's, not the FP32 PyTorch model's. An engine has a fixed batch size: images
are fed in chunks of it, the last one padded and its padding dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from itcp_deploy.engines.base import Artifact, EngineOptions
from itcp_deploy.errors import UsageError


@dataclass(frozen=True)
class EngineOutputs:
    """The engine's first output (logits) per image, and the labels beside them."""

    logits: np.ndarray
    labels: np.ndarray

    @property
    def top1(self) -> float:
        """Top-1 accuracy in percent."""
        return float(100.0 * np.mean(self.logits.argmax(1) == self.labels))

    def agreement(self, other: EngineOutputs) -> float:
        """The share of images (0..1) on which both engines pick the same class: no labels needed."""
        if len(other.logits) != len(self.logits):
            raise UsageError(f"compared engines saw {len(self.logits)} and {len(other.logits)} images",
                             "evaluate both on the same batches")
        return float(np.mean(self.logits.argmax(1) == other.logits.argmax(1)))


def images_and_labels(batches: Iterable[Any], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of ``batches`` (``(inputs, labels)`` pairs) and their labels, as arrays: the
    images an engine's accuracy is measured on."""
    xs, ys, n = [], [], 0
    for batch in batches:
        x, y = batch[0], batch[1]
        xs.append(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32))
        ys.append(np.asarray(y.detach().cpu() if hasattr(y, "detach") else y).reshape(-1))
        n += len(xs[-1])
        if n >= limit:
            break
    if not xs:
        raise UsageError("no evaluation batches to measure the engine's accuracy on", "give evaluation data")
    return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]


def _logits(backend: str, artifact: Artifact, options: EngineOptions, images: np.ndarray) -> np.ndarray:
    from itcp_deploy.engines import get_backend

    with get_backend(backend).runner(artifact, options) as runner:
        (name, (shape, dtype)), = runner.input_specs().items()
        size = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else len(images)
        pad = (-len(images)) % size
        padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
        chunks = [next(iter(runner.infer({name: padded[i:i + size].astype(dtype)}).values()))
                  for i in range(0, len(padded), size)]
    return np.concatenate(chunks).reshape(len(padded), -1)[:len(images)].astype(np.float32)


def engine_outputs(backend: str, artifact: Artifact, options: EngineOptions, batches: Iterable[Any],
                   limit: int = 1000) -> EngineOutputs:
    """The engine's logits on the first ``limit`` images of ``batches`` (``(inputs, labels)`` pairs)."""
    images, labels = images_and_labels(batches, limit)
    return EngineOutputs(logits=_logits(backend, artifact, options, images), labels=labels)


def engine_quality(backend: str, artifact: Artifact, dense_artifact: Artifact, options: EngineOptions,
                   batches: Iterable[Any], limit: int = 1000, source: Any = None) -> dict[str, float | int]:
    """The shipped engine's top-1, the dense engine's on the same images, and how often the two agree (a drop
    in agreement is what quantization or pruning cost, measured on the engines themselves). The batches are
    read once, for both engines. ``source``: the FP32 PyTorch model the engine was built from; its agreement
    with the engine is what quantization alone cost (``agreement_with_source``)."""
    images, labels = images_and_labels(batches, limit)
    final = EngineOutputs(_logits(backend, artifact, options, images), labels)
    dense = EngineOutputs(_logits(backend, dense_artifact, options, images), labels)
    out = {"engine_top1": final.top1, "dense_engine_top1": dense.top1, "agreement_with_dense": final.agreement(dense),
           "images": len(labels)}
    return out if source is None else {**out, "agreement_with_source": final.agreement(
        EngineOutputs(_torch_logits(source, images), labels))}


def _torch_logits(model: Any, images: np.ndarray, chunk: int = 256) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i:i + chunk])).float().numpy().reshape(
            min(chunk, len(images) - i), -1) for i in range(0, len(images), chunk)])
