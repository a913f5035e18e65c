"""Seeded random images with a learnable signal, of any size: fast, offline data for tests.

Each class has a smooth random prototype; an image is its class prototype plus pixel noise, so a small CNN
separates the classes within one epoch while nothing is trivially constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from itcp_deploy.data.specs import check_option_names
from itcp_deploy.errors import UsageError


@dataclass(frozen=True)
class SyntheticOptions:
    """``synthetic:classes=10,size=32,channels=3,train=1024,test=256,seed=0``."""

    classes: int = 10
    size: int = 32
    channels: int = 3
    train: int = 1024
    test: int = 256
    seed: int = 0

    @classmethod
    def from_dict(cls, options: dict[str, int]) -> SyntheticOptions:
        check_option_names("synthetic", options, cls.__dataclass_fields__)
        made = cls(**options)
        if min(made.classes - 1, made.size - 3, made.channels, made.train, made.test) < 1:
            raise UsageError(f"synthetic dataset options out of range: {options}",
                             "need classes >= 2, size >= 4, channels/train/test >= 1")
        return made


def make_synthetic(options: SyntheticOptions, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N x C x size x size) and labels; the same options and split give the same data."""
    gen = torch.Generator().manual_seed(options.seed)
    coarse = torch.randn(options.classes, options.channels, 4, 4, generator=gen)
    size = (options.size, options.size)
    prototypes = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    prototypes = prototypes / prototypes.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    count = options.train if split == "train" else options.test
    gen.manual_seed(options.seed * 1_000_003 + (1 if split == "train" else 2))
    labels = torch.randint(0, options.classes, (count,), generator=gen)
    noise = torch.randn(count, options.channels, options.size, options.size, generator=gen)
    pixels = 128 + 40 * prototypes[labels] + 40 * noise
    return pixels.clamp(0, 255).round().to(torch.uint8), labels
