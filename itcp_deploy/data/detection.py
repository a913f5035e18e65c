"""A synthetic detection set the project generates itself: filled shapes on textured backgrounds.

There is no COCO here. Each image holds one to three shapes (class 1: rectangle, 2: ellipse, 3: triangle) of
random size, position and colour on a background of random stripes and noise; its target is torchvision's
``{"boxes": (K, 4) xyxy float, "labels": (K,) int64}``. Images are a pure function of ``(seed, index)``.
Batches are ``(images (B, 3, S, S), [target, ...])``: what a torchvision detector's training forward takes,
and what :func:`itcp_deploy.prune` scores a detector with (its own training loss, no ``loss_fn`` needed).
``--data detection:size=320,train=64,test=32,seed=0`` feeds the CLI the same batches (:class:`DetectionSet`,
:func:`collate_detection`); the train split is images ``0 .. train - 1``, the test split the next ``test``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from itcp_deploy.data.specs import check_option_names
from itcp_deploy.errors import UsageError

SHAPES = ("rectangle", "ellipse", "triangle")  # label i + 1; 0 is the background
NUM_CLASSES = len(SHAPES) + 1  # torchvision counts the background as a class
MIN_SIZE = 16  # shapes are size/6 to size/2 wide: smaller images leave them a pixel or two


@dataclass(frozen=True)
class DetectionOptions:
    """``detection:size=320,train=64,test=32,seed=0``; ``size`` defaults to the engine's (``run``)."""

    size: int = 320
    train: int = 64
    test: int = 32
    seed: int = 0

    @classmethod
    def from_dict(cls, options: dict[str, int]) -> DetectionOptions:
        check_option_names("detection", options, cls.__dataclass_fields__)
        made = cls(**options)
        if made.size < MIN_SIZE or min(made.train, made.test) < 1:
            raise UsageError(f"detection dataset options out of range: {options}",
                             f"need size >= {MIN_SIZE}, train/test >= 1")
        return made


class DetectionSet(Dataset):
    """One split of the set: ``(image, {"boxes", "labels"})`` for images ``first .. first + count - 1``."""

    def __init__(self, options: DetectionOptions, split: str) -> None:
        self.options = options
        self.first = 0 if split == "train" else options.train
        self.count = options.train if split == "train" else options.test

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return detection_sample(self.first + index, self.options.size, self.options.seed)


def collate_detection(samples: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
                      ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images stacked, targets kept as a list (each image has its own number of boxes)."""
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


def _background(size: int, g: torch.Generator) -> torch.Tensor:
    """Stripes at a random angle and frequency in a random colour, plus pixel noise."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    angle, freq = float(torch.rand(1, generator=g)) * math.pi, 0.05 + 0.3 * float(torch.rand(1, generator=g))
    stripes = 0.5 + 0.5 * torch.sin(freq * (x * math.cos(angle) + y * math.sin(angle)))
    colour = torch.rand(3, 1, 1, generator=g)
    return (0.5 * colour * stripes + 0.2 * torch.rand(3, size, size, generator=g)).clamp(0, 1)


def _mask(kind: int, size: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    x0, y0, x1, y1 = box
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                          torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    if kind == 1:  # ellipse inscribed in the box
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    if kind == 2:  # triangle: apex at the top centre, base along the bottom
        half = (x1 - x0) / 2 * (y - y0) / (y1 - y0)
        return inside & ((x - (x0 + x1) / 2).abs() <= half)
    return inside


def detection_sample(index: int, size: int = 128, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Image ``index`` of the set: a (3, size, size) tensor in [0, 1] and its boxes and labels."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    image = _background(size, g)
    boxes, labels = [], []
    for _ in range(1 + int(torch.randint(3, (1,), generator=g))):
        kind = int(torch.randint(len(SHAPES), (1,), generator=g))
        w, h = (int(v) for v in torch.randint(size // 6, size // 2, (2,), generator=g))
        x0, y0 = int(torch.randint(0, size - w, (1,), generator=g)), int(torch.randint(0, size - h, (1,), generator=g))
        mask = _mask(kind, size, (x0, y0, x0 + w, y0 + h))
        image = torch.where(mask, torch.rand(3, 1, 1, generator=g), image)
        boxes.append([x0, y0, x0 + w, y0 + h])
        labels.append(kind + 1)
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def detection_batches(batches: int, batch_size: int = 4, size: int = 128, seed: int = 0
                      ) -> list[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
    """``batches`` batches of ``(images, targets)`` from :func:`detection_sample`, in index order."""
    return [collate_detection([detection_sample(b * batch_size + i, size, seed) for i in range(batch_size)])
            for b in range(batches)]
