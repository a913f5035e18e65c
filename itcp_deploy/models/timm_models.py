"""timm models by name (``timm:resnet18``), always randomly initialised, never downloaded.

timm is an optional extra (``pip install 'itcp-deploy[timm]'``), imported only when a ``timm:`` spec is used.
Models are built with ``pretrained=False``, so timm never reaches the Hugging Face Hub or any URL; the user's
own checkpoint comes in through ``--weights`` (read with ``weights_only=True``).
"""

from __future__ import annotations

import difflib

from torch import nn

from itcp_deploy.engines.lazy_import import require
from itcp_deploy.errors import UnknownNameError

PREFIX = "timm:"


def timm_names() -> list[str]:
    """Every architecture timm can build (``timm.list_models()``, without pretrained tags)."""
    return sorted(require("timm", extra="timm").list_models())


def timm_model(name: str, *, num_classes: int = 1000, **kwargs) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False, num_classes=...)``.

    Raises:
        MissingDependencyError: timm is not installed (the fix names the ``[timm]`` extra).
        UnknownNameError: ``name`` is not a timm architecture.
    """
    timm = require("timm", extra="timm")
    names = timm_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{PREFIX}{close[0]}'?)" if close else ""
        raise UnknownNameError(f"unknown timm model {name!r}{hint}",
                               "run `itcp-deploy models --timm` to list them")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
