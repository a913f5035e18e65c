"""Datasets and loaders: CIFAR-10/100 (python layout), ImageFolder, digits (offline demo), synthetic.

Names load lazily so that ``import itcp_deploy.data`` does not import torch.
"""

from __future__ import annotations

from itcp_deploy.lazy import lazy_exports

_EXPORTS = {
    "DatasetInfo": "info",
    "DataSpec": "specs",
    "parse_data_spec": "specs",
    "load_dataset": "datasets",
    "make_loader": "loaders",
    "seeded_subset": "loaders",
    "seeded_indices": "loaders",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
