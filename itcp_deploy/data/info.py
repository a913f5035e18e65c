"""What a loaded dataset is: the torch dataset plus what a model and a loader need to know about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Published CIFAR weights in ../shared were trained with these (ImageNet) statistics, so CIFAR uses them too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of ``(CHW float tensor, int label)`` pairs, already normalised with ``mean``/``std``.

    Example:
        ``DatasetInfo(dataset=..., num_classes=10, input_size=(3, 32, 32), mean=IMAGENET_MEAN,
        std=IMAGENET_STD, name="cifar10:/data/cifar10[test]", split="test")``
    """

    dataset: Any
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    split: str | None = None  # "train"/"test" as read; None when the source has no splits (one file/folder)

    def __len__(self) -> int:
        return len(self.dataset)
