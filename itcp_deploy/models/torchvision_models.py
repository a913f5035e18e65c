"""Torchvision classification models by name (``torchvision:resnet18``), always randomly initialised.

Pretrained weights are never downloaded (``weights=None``): the product runs offline, and the user's own
checkpoint comes in through ``--weights``.
"""

from __future__ import annotations

import difflib

from torch import nn

from itcp_deploy.errors import UnknownNameError

PREFIX = "torchvision:"


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models (no detection, segmentation or video models)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(name: str, *, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build ``torchvision.models.NAME(weights=None, num_classes=...)``.

    Raises:
        UnknownNameError: ``name`` is not a torchvision classification model.
    """
    import torchvision

    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{PREFIX}{close[0]}'?)" if close else ""
        raise UnknownNameError(f"unknown torchvision model {name!r}{hint}",
                               "run `itcp-deploy models --torchvision` to list them")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
