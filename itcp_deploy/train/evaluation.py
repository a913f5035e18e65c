"""Accuracy and loss of a classifier over a loader (summed over ranks under DDP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from itcp_deploy.train.distributed import sum_across_ranks


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameterless model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, *, device: torch.device | None = None) -> dict:
    """Top-1 accuracy (percent), mean cross-entropy and sample count, in eval mode (``None`` for a model
    whose output is not ``(N, classes)`` logits, e.g. a segmentation model or a detector).

    The model's train/eval mode is restored afterwards. Under ``torch.distributed`` with a sharded loader
    (:func:`~itcp_deploy.data.make_loader` shards automatically) the numbers cover all ranks.

    Returns:
        ``{"accuracy": float percent | None, "loss": float | None, "n": int}``
    """
    device = device or model_device(model)
    was_training = model.training
    model.eval()
    correct = loss_sum = count = 0.0
    try:
        for images, labels in loader:
            logits = model(images.to(device, non_blocking=True))
            if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and isinstance(labels, torch.Tensor)):
                return {"accuracy": None, "loss": None, "n": 0}  # dense maps, detections, boxes: no top-1
            labels = labels.to(device, non_blocking=True)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += float((logits.argmax(dim=1) == labels).sum())
            count += labels.numel()
    finally:
        model.train(was_training)
    correct, loss_sum, count = sum_across_ranks([correct, loss_sum, count], device)
    n = int(count)
    return {"accuracy": 100.0 * correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}
