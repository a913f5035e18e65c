"""MACs and parameter counts of a (pruned) model, by Torch-Pruning's op counter."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn


def count_macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass at ``input_shape`` and the number of parameters.

    Counts every layer TP knows (conv, linear, BN, pooling, ...), so it is slightly above
    :meth:`itcp_deploy.space.PruningSpace.macs`, which counts Conv/Linear only. The model is not changed.
    """
    training = model.training
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, torch.zeros(*input_shape))
    finally:
        model.train(training)
    return int(macs), int(params)
