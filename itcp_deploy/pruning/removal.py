"""Block removal: a residual branch's inner group at width 0, so the solver trades depth against width.

A group is *removable* when it is the inner width of a two-conv residual branch: every layer writing it is an
ordinary conv, every layer reading it is an ordinary conv whose output (through BatchNorm or an activation
only) is one input of an add, that is, the branch of a residual block (CIFAR and torchvision BasicBlocks, the
``conv1`` group of each block). At width 0 the block's add keeps its other path (the identity, or the
shortcut conv of a downsampling block) and the branch contributes a constant: its readers are replaced by
:class:`RemovedConv`, which outputs zeros of the conv's output shape, so the BatchNorm after it outputs its
shift (after BatchNorm re-estimation, the branch's mean output on the calibration data). Its writers are
replaced the same way at one channel (Torch-Pruning cannot prune a group to zero channels: it is cut to one
first). Nothing of the branch depends on the data any more, so the exported graph holds no conv of it: the
exporter folds the shape-only computation into a constant (``tests/test_block_removal.py`` checks the ONNX
graph). The perf model gives the removed layers zero latency, less what the branch leaves (its add and
activation, no longer fused into a conv), which the probes measure (:func:`itcp_deploy.perfmodel.model.on_space`).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from itcp_deploy.space import PruningSpace

_PASS_THROUGH = (ops.OPTYPE.BN,)  # nodes a branch may pass between its last conv and the add
_MAX_STEPS = 4


class RemovedConv(nn.Module):
    """A conv of a removed branch: zeros of the conv's output shape (no parameters, no data dependence)."""

    def __init__(self, conv: nn.Conv2d, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding, self.dilation = tuple(conv.padding), tuple(conv.dilation)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(x.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride,
                                        strict=True)
        )
        return x.new_zeros((x.shape[0], self.out_channels, h, w))


def _plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == 1 and isinstance(module.padding, tuple)


def _feeds_add(graph: tp.DependencyGraph, module: nn.Module) -> bool:
    """Whether ``module``'s output reaches an add, through BatchNorm or unary activations only, with no other
    reader on the way."""
    node = graph.module2node.get(module)
    for _ in range(_MAX_STEPS):
        if node is None or len(node.outputs) != 1:
            return False
        node = node.outputs[0]
        name = type(node.grad_fn).__name__ if node.grad_fn is not None else ""
        if node.type == ops.OPTYPE.ELEMENTWISE and name.startswith("Add"):
            return True
        unary = node.type == ops.OPTYPE.ELEMENTWISE and not name.startswith(("Mul", "Sub", "Div", "Cat"))
        if node.type not in _PASS_THROUGH and not unary:
            return False
    return False


def removable_groups(graph: tp.DependencyGraph, model: nn.Module, space: PruningSpace) -> set[str]:
    """Names of the groups of ``space`` whose width 0 removes a residual branch (see the module doc)."""
    found = set()
    for g in space.prunable:
        readers = [layer for layer in space.layers if g.name in layer.in_group.split("+")]
        writers = [layer for layer in space.layers if layer.out_group == g.name]
        if not readers or not writers or {r.name for r in readers} != set(g.layers_in):
            continue  # a reader through a concatenation would lose channels it indexes
        modules = [model.get_submodule(layer.name) for layer in (*readers, *writers)]
        if not all(_plain_conv(m) for m in modules):
            continue
        if all(r.in_group == g.name and r.out_group != g.name and _feeds_add(graph, model.get_submodule(r.name))
               for r in readers) and all(w.in_group != g.name for w in writers):
            found.add(g.name)
    return found


def remove_branches(model: nn.Module, space: PruningSpace, names: set[str]) -> None:
    """Replace the readers and writers of each group in ``names`` (already cut to one channel) by
    :class:`RemovedConv`, in place."""
    for layer in space.layers:
        if layer.in_group in names or layer.out_group in names:
            parent, _, attr = layer.name.rpartition(".")
            conv = model.get_submodule(layer.name)
            assert isinstance(conv, nn.Conv2d)  # removable_groups checked it
            setattr(model.get_submodule(parent) if parent else model, attr, RemovedConv(conv, conv.out_channels))


def is_removed(module: nn.Module) -> bool:
    return isinstance(module, RemovedConv)


__all__ = ["RemovedConv", "is_removed", "removable_groups", "remove_branches"]
