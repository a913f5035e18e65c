"""Torchvision classification, segmentation and detection models by name (``torchvision:resnet18``,
``torchvision:lraspp_mobilenet_v3_large``, ``torchvision:ssdlite320_mobilenet_v3_large``), always randomly
initialised.

Pretrained weights are never downloaded (``weights=None``, and ``weights_backbone=None`` for segmentation and
detection models, whose builders would otherwise fetch an ImageNet backbone): the product runs offline, and the
user's own checkpoint comes in through ``--weights``. Detectors come wrapped to take one image tensor and
return their detections as tensors, at a stated deploy size (:mod:`itcp_deploy.models.detection`).
"""

from __future__ import annotations

from torch import nn

from itcp_deploy.models.detection import COCO_CLASSES, detector_names, torchvision_detector
from itcp_deploy.registry import unknown_name

PREFIX = "torchvision:"


def torchvision_names() -> list[str]:
    """Names of torchvision's classification and segmentation models and its box detectors (no video models,
    no Mask or Keypoint R-CNN)."""
    return sorted(_classifiers() | _segmenters() | set(detector_names()))


def _classifiers() -> set[str]:
    import torchvision

    return set(torchvision.models.list_models(module=torchvision.models))


def _segmenters() -> set[str]:
    import torchvision.models.segmentation

    return set(torchvision.models.list_models(module=torchvision.models.segmentation))


def torchvision_model(name: str, *, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build ``torchvision.models.NAME(weights=None, num_classes=...)`` (segmentation and detection: no backbone
    weights either). ``num_classes`` defaults to torchvision's: 1000 (ImageNet), 91 for detectors (COCO).

    Raises:
        UnknownNameError: ``name`` is not a torchvision classification, segmentation or detection model.
    """
    import torchvision

    names = torchvision_names()
    if name not in names:
        raise unknown_name("torchvision model", name, names, "run `itcp-deploy models --torchvision` to list them",
                           PREFIX)
    if name in detector_names():
        return torchvision_detector(name, num_classes=num_classes or COCO_CLASSES, **kwargs)
    if name in _segmenters():
        kwargs = {"weights_backbone": None, **kwargs}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000, **kwargs)
