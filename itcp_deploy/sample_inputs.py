"""The inputs engines are timed and checked on, said once: seeded uniform values in [0, 1), an image's range.

A static graph's latency does not depend on its input's values, but a detector's does: how many proposals and
boxes survive its thresholds and reach NMS. torchvision's detectors take images in [0, 1]; on standard-normal
inputs (4.4x an image's spread after the detector's own normalisation, by arithmetic) a random Faster R-CNN
whose BatchNorm was re-estimated on images saturated every score and its boxes to slivers, so its
engine's time and its parity with PyTorch were a random model's (docs/benchmarks.md, section 22)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_inputs(shape: Sequence[int], rng: np.random.Generator, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """One input of ``shape``, uniform in [0, 1), drawn from ``rng``."""
    return rng.random(tuple(shape)).astype(dtype)


__all__ = ["sample_inputs"]
