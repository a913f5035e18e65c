"""What every group score takes (settings, inputs) and the monotone clean-up, apart from the scores
themselves: ``scores.py`` (the registry) and ``sensitivity.py`` (the measured score) both build on it, so
neither has to import the other's module at load time."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from itcp_deploy.pruning.apply import DEFAULT_GRADIENT_BATCHES
from itcp_deploy.pruning.importance import Batch, LossFn


@dataclass(frozen=True)
class ScoreSettings:
    """Knobs of the data-driven scores.

    ``gradient_batches``: batches of ``loader`` the taylor gradients average over. ``bn_images``: training
    images used to re-estimate BN statistics per sensitivity evaluation. ``calib_images``: held-out images
    whose loss is measured. ``importance``: which channels a sensitivity evaluation keeps.
    ``max_widths_per_group``: evaluate at most this many widths per group (evenly spread, the rest linearly
    interpolated) to bound sensitivity's cost; ``None`` evaluates all.
    """

    gradient_batches: int = DEFAULT_GRADIENT_BATCHES  # as channel_importance's: the run keeps one for both
    bn_images: int = 256
    calib_images: int = 512
    importance: str = "l1"
    max_widths_per_group: int | None = None


@dataclass(frozen=True)
class ScoreInputs:
    """What a score may use besides the model and its space."""

    loader: Iterable[Batch] | None = None
    calib_loader: Iterable[Batch] | None = None
    cache_path: str | os.PathLike[str] | None = None
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    loss_fn: LossFn | None = None  # the taylor gradients' loss; cross-entropy when None
    importance: dict[str, np.ndarray] | None = None  # taylor's channel importance, when already computed



def monotone(values: Iterable[float]) -> np.ndarray:
    """Running max from the smallest to the largest width."""
    return np.maximum.accumulate(np.asarray(list(values), dtype=np.float64))
