"""CIFAR-10/100 in the "python version" layout, read from disk without checksums.

The file format itself (names, the allow-list batch reader) is in :mod:`itcp_deploy.data.cifar_format`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from itcp_deploy.data.cifar_format import CIFAR10_FILES, read_batch
from itcp_deploy.errors import InputFileError, UsageError


def batch_arrays(batch: dict, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 N x 3 x 32 x 32, labels int64 N)`` from a loaded batch."""
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch.get("fine_labels", batch.get("labels")), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise InputFileError(f"{path} has data of shape {data.shape} and {len(labels)} labels",
                             "a CIFAR batch holds N x 3072 uint8 rows and N labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def split_files(kind: str, root: Path, split: str) -> list[Path]:
    """The batch files of ``split`` (``train`` or ``test``) in a CIFAR directory, checked to exist."""
    if split not in ("train", "test"):
        raise UsageError(f"CIFAR has splits 'train' and 'test', not {split!r}", "use --split train or test")
    if kind == "cifar10":
        names = list(CIFAR10_FILES[:-1]) if split == "train" else ["test_batch"]
        expected = "data_batch_1..5 and test_batch"
    else:
        names, expected = [split], "train and test"
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise InputFileError(f"{root} is not a {kind} python-version directory: missing {', '.join(missing)}",
                             f"point --data at the directory that holds {expected}")
    return [root / n for n in names]


def load_cifar(kind: str, path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images, labels and class count of one split; a single batch file is the whole split."""
    files = [path] if path.is_file() else split_files(kind, path, split)
    parts = [batch_arrays(read_batch(f), f) for f in files]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    num_classes = 100 if kind == "cifar100" else 10
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputFileError(f"{path} has labels outside 0..{num_classes - 1}",
                             f"check that it is a {kind} dataset (use cifar100:DIR for 100 classes)")
    return images, labels, num_classes


def download_cifar(kind: str, root: Path) -> Path:
    """Download with torchvision into ``root`` (only on ``--download``) and return the batch directory."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:
        raise InputFileError(f"could not download {kind} into {root}: {err}",
                             "check the network, or download it yourself and pass --data DIR") from err
    return root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
