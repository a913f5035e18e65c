"""Datasets and loaders: CIFAR-10/100 (python layout), ImageFolder, digits (offline demo), synthetic.

Names load lazily so that ``import itcp_deploy.data`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetInfo": "itcp_deploy.data.info",
    "DataSpec": "itcp_deploy.data.specs",
    "parse_data_spec": "itcp_deploy.data.specs",
    "load_dataset": "itcp_deploy.data.datasets",
    "make_loader": "itcp_deploy.data.loaders",
    "seeded_subset": "itcp_deploy.data.loaders",
    "seeded_indices": "itcp_deploy.data.loaders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
