"""Per-sample transforms: standard augmentation and normalisation.

In-memory datasets (CIFAR, digits, synthetic) hold uint8 CHW tensors and use :class:`TensorTransform`;
ImageFolder images are PIL images and use :func:`pil_transform`. Randomness comes from torch's global
generator (seeded per epoch by the training loop, per worker by the DataLoader), so runs replay exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Random crop after zero padding by ``pad_px`` (the CIFAR recipe) and an optional horizontal flip."""

    pad_px: int = 4
    flip: bool = True


class TensorTransform:
    """uint8 CHW tensor -> normalised float tensor, with optional :class:`Augmentation`."""

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], augmentation: Augmentation | None
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augmentation = augmentation

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32).div_(255.0)
        aug = self.augmentation
        if aug is not None:
            if aug.pad_px > 0:
                x = _random_crop(x, aug.pad_px)
            if aug.flip and bool(torch.rand(()) < 0.5):
                x = x.flip(-1)
        return (x - self.mean) / self.std


def _random_crop(x: torch.Tensor, pad_px: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad_px, pad_px, pad_px, pad_px))
    top, left = (int(v) for v in torch.randint(0, 2 * pad_px + 1, (2,)))
    return padded[:, top:top + height, left:left + width]


def pil_transform(size_px: int, mean: tuple[float, ...], std: tuple[float, ...], *, augment: bool):
    """torchvision transform for ImageFolder images resized to ``size_px`` squares.

    Small images (<= 64 px) get the CIFAR recipe (pad-4 random crop + flip); larger ones the ImageNet one
    (random resized crop + flip for training; resize to 8/7 of the size and centre crop otherwise).
    """
    from torchvision import transforms as T

    if size_px <= 64:
        steps = [T.Resize(size_px), T.CenterCrop(size_px)]
        if augment:
            steps += [T.RandomCrop(size_px, padding=4), T.RandomHorizontalFlip()]
    elif augment:
        steps = [T.RandomResizedCrop(size_px), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(size_px * 8 / 7)), T.CenterCrop(size_px)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
