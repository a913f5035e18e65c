"""BatchNorm recalibration: re-estimate running statistics after pruning changed the activations."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from itcp_deploy.train.evaluation import model_device


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, loader: DataLoader, num_batches: int = 50) -> torch.nn.Module:
    """Recompute every BatchNorm's running mean/var as a cumulative average over ``num_batches`` batches.

    Pruning removes channels that fed the next layers, so the stored statistics no longer describe the
    activations; a few hundred images restore most of the accuracy without any gradient step. Statistics
    are reset, momentum is set to ``None`` (exact average) for the pass and restored after; the model is
    left in eval mode. Returns the same model.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    device = model_device(model)
    model.train()
    try:
        for step, (images, _) in enumerate(loader):
            if step >= num_batches:
                break
            model(images.to(device, non_blocking=True))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return model
