"""Compensation after pruning, without training: refit layers by least squares to the dense network's outputs.

Channel pruning (He et al. 2017) and ThiNet: after channels are removed, the layers that read them see less
input, so their outputs drift from the dense network's, and the drift compounds layer after layer. Here each
Conv2d (``groups == 1``) and Linear of the pruned model that reads a pruned group, or that comes after one, is
refit in forward order so that, on the pruned network's own inputs, its output matches the dense layer's output
on the channels it kept::

    W = argmin ||X_pruned W^T - Y_dense[:, kept]||^2 + lam ||W - W_0||^2

a ridge regression towards the pruned weights ``W_0``, solved exactly from the Gram matrix accumulated over a
few calibration batches (``lam`` = ``ridge`` x the mean diagonal of the Gram matrix). Layers are refit one at a
time, each seeing the already refit layers before it, with BatchNorm in eval mode, so the dense statistics the
pruned BatchNorms inherit stay valid for refit outputs. Re-estimate BatchNorm afterwards as usual. Fixed layers
(``requires_grad=False``, e.g. an option-A shortcut) and grouped convs are left alone. Costs two forward passes
per refit layer and calibration batch, each stopped at the layer; no gradient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from itcp_deploy.pruning.apply import conv_multiple, keep_indices
from itcp_deploy.pruning.importance import Batch
from itcp_deploy.space import PruningSpace


def kept_channels(model: nn.Module, space: PruningSpace, widths: Mapping[str, int],
                  importance: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The channel indices :func:`~itcp_deploy.pruning.apply.apply_widths` keeps per group (all for full
    groups), given the same precomputed importance vectors."""
    plan = space.complete(widths)
    kept = {}
    for g in space.groups:
        if plan[g.name] < g.full_width:
            kept[g.name] = keep_indices(importance[g.name], plan[g.name], conv_multiple(model, g))
        else:
            kept[g.name] = np.arange(g.full_width)
    return kept


@dataclass(frozen=True)
class CompensationSettings:
    """``num_batches`` calibration batches per layer; ``ridge``: pull towards the pruned weights."""

    num_batches: int = 4
    ridge: float = 1e-3


def _refittable(layer: nn.Module) -> bool:
    """A plain linear map of its weight: a subclass with its own forward (timm's weight-standardised
    ScaledStdConv2d) computes something else from the weight, so a least-squares refit would be wrong."""
    if isinstance(layer, nn.Linear):
        return type(layer).forward is nn.Linear.forward and layer.weight.requires_grad
    return (isinstance(layer, nn.Conv2d) and type(layer).forward is nn.Conv2d.forward and layer.groups == 1
            and layer.weight.requires_grad)


def _rows(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as one row per output position (im2col for convs), float64."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]).double()
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,  # type: ignore[arg-type]
                    stride=layer.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()


def _targets(layer: nn.Conv2d | nn.Linear, y: torch.Tensor, kept: np.ndarray) -> torch.Tensor:
    """Dense outputs on the kept channels, one row per output position. A linear layer's channels are its last
    dimension, whatever comes before (tokens: a Swin or ConvNeXt MLP reads N x H x W x C)."""
    if isinstance(layer, nn.Linear):
        return y.reshape(-1, y.shape[-1])[:, torch.as_tensor(kept)].double()
    y = y[:, torch.as_tensor(kept)]
    dims = (0, *range(2, y.dim()), 1)
    return y.permute(*dims).reshape(-1, y.shape[1]).double()


class _Captured(Exception):
    """Raised by the capture hook: the rest of the forward is not needed."""


def _capture(model: nn.Module, name: str, output: bool, batches: list[Batch]) -> list[torch.Tensor]:
    """The input (or output) of layer ``name`` for every batch, in eval mode, without gradients. Each forward
    stops at the layer, so the capture is what the layer computed (timm's squeeze-excite applied SiLU in place to
    a captured output), and a refit in forward order costs fewer passes (timm EfficientNet-B0 1.4x faster at 224,
    2.3x at 96; ResNet-18 1.16x at 224, where the least squares dominate: bench/compensation_capture.py)."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, i: tuple, o: torch.Tensor) -> None:
        seen.append((o if output else i[0]).detach())
        raise _Captured

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x, _ in batches:
                try:
                    model(x)
                except _Captured:
                    pass
    finally:
        handle.remove()
    return seen


def _refit(pruned: nn.Module, dense: nn.Module, name: str, kept_out: np.ndarray, batches: list[Batch],
           ridge: float) -> None:
    layer = pruned.get_submodule(name)
    assert isinstance(layer, (nn.Conv2d, nn.Linear))  # _refittable checked it
    bias = layer.bias
    w0 = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    if bias is not None:
        w0 = torch.cat([w0, bias.detach().double()[:, None]], dim=1)
    gram = torch.zeros(w0.shape[1], w0.shape[1], dtype=torch.float64)
    cross = torch.zeros(w0.shape[1], w0.shape[0], dtype=torch.float64)
    inputs = _capture(pruned, name, False, batches)
    outputs = _capture(dense, name, True, batches)
    for x, y in zip(inputs, outputs, strict=True):
        rows = _rows(layer, x)
        if bias is not None:
            rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], dim=1)
        gram += rows.T @ rows
        cross += rows.T @ _targets(layer, y, kept_out)
    lam = ridge * float(torch.diagonal(gram).mean()) + 1e-12
    solved = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), cross + lam * w0.T).T
    with torch.no_grad():
        if bias is not None:
            bias.copy_(solved[:, -1].to(bias.dtype))
            solved = solved[:, :-1]
        layer.weight.copy_(solved.reshape(layer.weight.shape).to(layer.weight.dtype))


def compensate(pruned: nn.Module, dense: nn.Module, space: PruningSpace, kept: Mapping[str, np.ndarray],
               batches: Iterable[Batch], settings: CompensationSettings | None = None) -> list[str]:
    """Refit ``pruned`` in place (see the module doc); returns the names of the refit layers, in order.

    Args:
        pruned: The pruned model (e.g. ``apply_widths(dense, space, widths, importance=...)``).
        dense: The model it was pruned from (left untouched).
        space: Their pruning space.
        kept: Per group, the sorted dense channel indices the pruned model kept (:func:`kept_channels`).
        batches: Calibration ``(images, labels)`` batches; the first ``settings.num_batches`` are used.
    """
    s = settings or CompensationSettings()
    calib = [b for _, b in zip(range(s.num_batches), batches, strict=False)]
    pruned_groups = {g for g, idx in kept.items() if len(idx) < space.group(g).full_width}
    was_training = pruned.training, dense.training
    pruned.eval()
    dense.eval()
    refit: list[str] = []
    drifting = False
    for layer in space.layers:  # forward order
        drifting = drifting or any(g in pruned_groups for g in layer.in_group.split("+"))
        if drifting and _refittable(pruned.get_submodule(layer.name)):
            _refit(pruned, dense, layer.name, kept[layer.out_group], calib, s.ridge)
            refit.append(layer.name)
    pruned.train(was_training[0])
    dense.train(was_training[1])
    return refit


@dataclass(frozen=True)
class OneShot:
    """How a plan becomes a model without training: ``calib`` batches for compensation (``compensate``) and
    ``bn_batches`` batches that re-estimate BatchNorm statistics (the first ``bn_count`` of them)."""

    calib: Iterable[Batch]
    bn_batches: Iterable[Batch]
    bn_count: int = 20
    compensate: bool = True


def prune_one_shot(dense: nn.Module, space: PruningSpace, widths: Mapping[str, int],
                   importance: Mapping[str, np.ndarray], recipe: OneShot) -> tuple[nn.Module, list[str]]:
    """The one-shot recipe, said once (``run``'s finetuning stage and the benchmarks): a pruned copy of
    ``dense`` keeping the channels of largest ``importance``, refit by least squares (``recipe.compensate``),
    BatchNorm re-estimated. Returns it and the refit layers."""
    from itcp_deploy.pruning.apply import apply_widths
    from itcp_deploy.train import recalibrate_bn

    pruned = apply_widths(dense, space, widths, importance=dict(importance))
    refit = (compensate(pruned, dense, space, kept_channels(dense, space, widths, importance), recipe.calib)
             if recipe.compensate else [])
    recalibrate_bn(pruned, recipe.bn_batches, num_batches=recipe.bn_count)
    return pruned, refit


__all__ = ["CompensationSettings", "OneShot", "compensate", "kept_channels", "prune_one_shot"]
