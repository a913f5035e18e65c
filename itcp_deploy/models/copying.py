"""Copies of a model that share its weight tensors until they are changed.

Exporting and pruning replace tensors (BN folding, Torch-Pruning's pruners build new parameters); they never
write into them. A deep copy paid a model's full size once more for every export and every profiled engine,
which large models (ViT-L, 1.2 GB) could not afford; a sharing copy pays only for what changes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def model_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``model``."""
    return [*model.parameters(), *model.buffers()]


def sharing_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree whose parameters and buffers are ``model``'s own tensor objects.

    Only for code that replaces tensors: an in-place write (an optimiser step, ``.data`` assignment,
    ``requires_grad_`` or ``.grad``) reaches ``model``. :func:`own_tensors` ends the sharing."""
    return copy.deepcopy(model, {id(t): t for t in model_tensors(model)})


def own_tensors(model: nn.Module, source: nn.Module) -> None:
    """Give ``model`` (a :func:`sharing_copy` of ``source``) clones of the tensors it still shares with it."""
    theirs = {id(t) for t in model_tensors(source)}
    clones: dict[int, torch.Tensor] = {}  # a tensor shared by two modules (tied weights) stays shared
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is None or id(t) not in theirs:
                    continue
                if id(t) not in clones:
                    clones[id(t)] = (nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
                                     if isinstance(t, nn.Parameter) else t.clone())
                store[name] = clones[id(t)]
