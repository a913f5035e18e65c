"""The CIFAR "python version" file format, torch-free: file names, the layout help text, and an allow-list
reader of one batch file. ``specs.py`` (layout detection) and ``cifar.py`` (tensors) both build on it.

A batch is a pickled dict with ``data`` (N x 3072 uint8, R, G then B planes of 32x32) and ``labels``
(CIFAR-10) or ``fine_labels`` (CIFAR-100). Pickles are read with an allow-list unpickler: the files only
need numpy arrays, so nothing else in a downloaded file can run code on load.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from itcp_deploy.errors import InputFileError

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")
LAYOUT_HELP = ("a CIFAR-10 python-version directory (data_batch_1..5, test_batch), a CIFAR-100 one "
               "(train, test), a single CIFAR batch file, or an ImageFolder directory (one sub-directory "
               "of images per class)")
_ALLOWED_NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar"}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy" and name in _ALLOWED_NUMPY:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_batch(path: Path) -> dict:
    """Load one CIFAR batch file; every way it can fail becomes one-line :class:`InputFileError`."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError as err:
        raise InputFileError(f"CIFAR batch file {path} does not exist",
                             f"--data expects {LAYOUT_HELP}") from err
    except Exception as err:  # corrupt, truncated or foreign pickles fail in many ways
        raise InputFileError(f"{path} is not a readable CIFAR batch file ({err.__class__.__name__}: {err})",
                             "re-extract the dataset archive") from err
    if not isinstance(batch, dict) or "data" not in batch or not ({"labels", "fine_labels"} & set(batch)):
        raise InputFileError(f"{path} is not a CIFAR batch (expected a dict with 'data' and 'labels')",
                             f"--data expects {LAYOUT_HELP}")
    return batch
