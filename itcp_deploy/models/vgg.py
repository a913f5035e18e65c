"""VGG-16 with BatchNorm for 32x32 CIFAR inputs (13 convs, 5 max-pools, a Linear head).

Module names: ``features.{k}`` (Conv2d / BatchNorm2d / ReLU / MaxPool2d in torchvision's VGG order) and
``classifier`` (one Linear on the 512 pooled features), so the channel groups are the 13 conv widths.
"""

from __future__ import annotations

import torch
from torch import nn

VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG feature stack from a layout of widths and ``"M"`` (max-pool), then global pool and a Linear."""

    def __init__(self, layout: tuple[int | str, ...] = VGG16_LAYOUT, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers += [nn.Conv2d(in_channels, int(item), 3, padding=1, bias=False),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            in_channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def cifar_vgg16_bn(*, num_classes: int = 10) -> CifarVGG:
    """CIFAR VGG-16-BN; at 32x32 input the last max-pool leaves 512x1x1 features."""
    return CifarVGG(VGG16_LAYOUT, num_classes=num_classes)
