"""A dataset of uint8 images held in memory (CIFAR, digits, synthetic)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from itcp_deploy.data.transforms import TensorTransform


class TensorImageDataset(Dataset):
    """``(transform(images[i]), labels[i])`` for uint8 ``images`` of shape N x C x H x W."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: TensorTransform) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need uint8 N x C x H x W images and N labels, got {tuple(images.shape)}, "
                             f"{images.dtype} and {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])
