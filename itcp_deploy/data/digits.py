"""scikit-learn's bundled 8x8 digits as 32x32 RGB images: the offline demo dataset (no download).

1,797 images are split 80/20 into train/test by a fixed permutation, so every run sees the same split.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from itcp_deploy.errors import MissingDependencyError

SIZE_PX = 32
SPLIT_SEED = 0
TRAIN_FRACTION = 0.8


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N x 3 x 32 x 32) and int64 labels of the ``train`` or ``test`` split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise MissingDependencyError("--data digits needs scikit-learn", "pip install scikit-learn") from err
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(SIZE_PX, SIZE_PX), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(labels)))
    n_train = int(round(TRAIN_FRACTION * len(labels)))
    chosen = order[:n_train] if split == "train" else order[n_train:]
    return images[chosen], labels[chosen]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.to(torch.float32).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
