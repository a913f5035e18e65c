"""Torchvision classification and segmentation models by name (``torchvision:resnet18``,
``torchvision:lraspp_mobilenet_v3_large``), always randomly initialised.

Pretrained weights are never downloaded (``weights=None``, and ``weights_backbone=None`` for segmentation
models, whose builders would otherwise fetch an ImageNet backbone): the product runs offline, and the user's
own checkpoint comes in through ``--weights``.
"""

from __future__ import annotations

from torch import nn

from itcp_deploy.registry import unknown_name

PREFIX = "torchvision:"


def torchvision_names() -> list[str]:
    """Names of torchvision's classification and segmentation models (no detection or video models)."""
    return sorted(_classifiers() | _segmenters())


def _classifiers() -> set[str]:
    import torchvision

    return set(torchvision.models.list_models(module=torchvision.models))


def _segmenters() -> set[str]:
    import torchvision.models.segmentation

    return set(torchvision.models.list_models(module=torchvision.models.segmentation))


def torchvision_model(name: str, *, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build ``torchvision.models.NAME(weights=None, num_classes=...)`` (segmentation: no backbone weights).

    Raises:
        UnknownNameError: ``name`` is not a torchvision classification model.
    """
    import torchvision

    names = torchvision_names()
    if name not in names:
        raise unknown_name("torchvision model", name, names, "run `itcp-deploy models --torchvision` to list them",
                           PREFIX)
    if name in _segmenters():
        kwargs = {"weights_backbone": None, **kwargs}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
