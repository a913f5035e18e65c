"""timm models by name (``timm:resnet18``), always randomly initialised, never downloaded.

timm is an optional extra (``pip install 'itcp-deploy[timm]'``), imported only when a ``timm:`` spec is used.
Models are built with ``pretrained=False``, so timm never reaches the Hugging Face Hub or any URL; the user's
own checkpoint comes in through ``--weights`` (read with ``weights_only=True``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from torch import nn

from itcp_deploy.errors import MissingDependencyError
from itcp_deploy.registry import unknown_name

PREFIX = "timm:"


def _timm() -> ModuleType:
    """``import timm``, or one line naming the extra that installs it."""
    try:
        return importlib.import_module("timm")
    except ImportError as err:
        raise MissingDependencyError(f"timm:NAME needs `timm`, which is not importable ({err})",
                                     "needs `pip install 'itcp-deploy[timm]'`") from err


def timm_names() -> list[str]:
    """Every architecture timm can build (``timm.list_models()``, without pretrained tags)."""
    return sorted(_timm().list_models())


def timm_model(name: str, *, num_classes: int = 1000, **kwargs) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False, num_classes=...)``.

    Raises:
        MissingDependencyError: timm is not installed (the fix names the ``[timm]`` extra).
        UnknownNameError: ``name`` is not a timm architecture.
    """
    timm = _timm()
    names = timm_names()
    if name not in names:
        raise unknown_name("timm model", name, names, "run `itcp-deploy models --timm` to list them", PREFIX)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
