"""Rewrites that keep a model's function exactly but let the TorchScript ONNX exporter take it.

``nn.AdaptiveAvgPool2d`` whose output size does not divide its input size (VGG and AlexNet pool to 7x7; at a
64x64 input their last feature map is 2x2) has no ONNX export ("output size that are not factor of input
size"). At a fixed input size the pooling is a fixed linear map, separable over rows and columns, so it is
replaced by two matrix products with PyTorch's own bins (``floor(i * in / out)`` to ``ceil((i + 1) * in /
out)``), which ONNX Runtime runs as two MatMuls. The ONNX parity check compares against the original model.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _bins(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) averaging matrix of adaptive average pooling along one axis."""
    m = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, math.ceil((i + 1) * size_in / size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class FixedAdaptiveAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d`` at one input size, as ``rows @ x @ cols^T``."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", _bins(in_hw[0], out_hw[0]))
        self.register_buffer("cols", _bins(in_hw[1], out_hw[1]).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols)


def _pool_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    if not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules()):
        return sizes
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.AdaptiveAvgPool2d):
            def hook(_m, inputs, output, name=name):
                sizes[name] = (tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:]))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape)))
    except Exception:  # a shape the model cannot take: no rewrite, the exporter says what is wrong in one line
        return {}
    finally:
        for h in hooks:
            h.remove()
    return sizes


def exportable_pooling(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """Replace (in place) every adaptive average pooling the exporter cannot take at ``input_shape``."""
    for name, (hw_in, hw_out) in _pool_sizes(model, input_shape).items():
        if all(i % o == 0 for i, o in zip(hw_in, hw_out, strict=True)):
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, FixedAdaptiveAvgPool2d(hw_in, hw_out))
    return model
