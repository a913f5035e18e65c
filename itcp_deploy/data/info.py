"""What a loaded dataset is: the torch dataset plus what a model and a loader need to know about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itcp_deploy.errors import UsageError

# Published CIFAR weights in ../shared were trained with these (ImageNet) statistics, so CIFAR uses them too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of ``(CHW float tensor, int label)`` pairs, already normalised with ``mean``/``std``; or, with
    ``task="detection"``, of ``(CHW image in [0, 1], {"boxes", "labels"})`` pairs (a torchvision detector
    normalises its images itself; loaders batch them as ``(images, [target, ...])``).

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
    task: str = "classification"  # or "detection": boxes and their labels per image

    def __len__(self) -> int:
        return len(self.dataset)

    def require_labels(self, purpose: str) -> None:
        """Refuse boxes where ``purpose`` (training, top-1 agreement) needs one class label per image."""
        if self.task != "classification":
            raise UsageError(f"{purpose} needs one class label per image, but {self.name} holds {self.task} boxes",
                             "use classification data (e.g. --data synthetic) for it; a detector runs with --epochs 0 "
                             "(scored with its own loss) or is finetuned by your loop: prune(..., finetune=...)")
