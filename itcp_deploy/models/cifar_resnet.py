"""CIFAR ResNets of He et al. 2016 (ResNet-20/32/44/56/110), with the published checkpoints' module names.

The paper's "option A" shortcut subsamples and zero-pads channels. It has no weights, so Torch-Pruning's
dependency graph cannot couple the channels it carries. :func:`convert_option_a` swaps it for an exactly
equivalent fixed 1x1 stride-2 convolution, which the graph treats as an ordinary, prunable conv.

Module names: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}``, ``layer{1,2,3}.{i}.bn{1,2}``,
``layer{2,3}.0.shortcut`` (after conversion), ``linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)
_WIDTHS = (16, 32, 64)


class OptionAShortcut(nn.Module):
    """Paper shortcut: ``x[:, :, ::2, ::2]`` zero-padded with ``planes // 4`` channels on each side."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        if in_planes + 2 * (planes // 4) != planes:
            raise ValueError(f"option-A shortcut cannot map {in_planes} to {planes} channels")
        self.in_planes = in_planes
        self.planes = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.planes // 4
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))


class FixedShortcutConv(nn.Conv2d):
    """A 1x1 stride-2 conv equal to :class:`OptionAShortcut`; its weight is a fixed channel selection.

    The weight is used detached in ``forward``, so it never trains even if pruning re-creates it as a
    trainable ``nn.Parameter``; pruning may still slice its rows and columns like any conv.
    """

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__(in_planes, planes, kernel_size=1, stride=2, bias=False)
        pad = planes // 4
        with torch.no_grad():
            self.weight.zero_()
            for i in range(in_planes):
                self.weight[i + pad, i, 0, 0] = 1.0
        self.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight.detach(), None)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; identity shortcut, or option A when the block downsamples."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        downsample = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = OptionAShortcut(in_planes, planes) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: a 16-wide stem, three stages of n blocks (16/32/64), global pool."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, _WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_WIDTHS[0])
        in_planes = _WIDTHS[0]
        stages = []
        for index, planes in enumerate(_WIDTHS):
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                      for i in range(blocks)]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(_WIDTHS[-1], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def convert_option_a(model: nn.Module) -> nn.Module:
    """Replace every :class:`OptionAShortcut` in ``model`` (in place) by an equal :class:`FixedShortcutConv`.

    Returns:
        The same ``model``, for chaining. Outputs are unchanged (exact up to float rounding).
    """
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, OptionAShortcut)]
    for name, shortcut in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        conv = FixedShortcutConv(shortcut.in_planes, shortcut.planes)
        reference = next(parent.parameters(), None)
        if reference is not None:
            conv = conv.to(device=reference.device, dtype=reference.dtype)
        setattr(parent, attr, conv)
    return model


def cifar_resnet(depth: int, *, num_classes: int = 10, convert: bool = True) -> CifarResNet:
    """A CIFAR ResNet of the given depth; ``convert=False`` keeps the paper's option-A shortcuts."""
    model = CifarResNet(depth, num_classes=num_classes)
    return convert_option_a(model) if convert else model
